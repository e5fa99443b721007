// safeshard: the command line. See `safeshard --help` and README.md.
#include <iostream>
#include <string>
#include <vector>

#include "cli/cli.h"

int main(int argc, char** argv) {
  std::vector<std::string> args(argv, argv + argc);
  return safeshard::RunSafeshard(args, std::cout, std::cerr);
}
