// safeshard: the command line. See `safeshard --help` and README.md.
#include <unistd.h>

#include <iostream>
#include <string>
#include <vector>

#include "cli/cli.h"
#include "core/util/rlimit.h"

int main(int argc, char** argv) {
  safeshard::RaiseOpenFileLimit();  // 1,000+ rank files
  std::vector<std::string> args(argv, argv + argc);
  int code = safeshard::RunSafeshard(args, std::cout, std::cerr);
  // Everything is written and closed; skip tearing down the (possibly 100k-tensor) structures.
  std::cout.flush();
  std::cerr.flush();
  _exit(code);
}
