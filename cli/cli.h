// cli.h: the `safeshard` command line, as a library so tests drive it in-process.
//
//   std::ostringstream out, err;
//   int code = RunSafeshard({"safeshard", "verify", "/ckpt"}, out, err);
//
// Exit codes: 0 success / clean, 1 problems found or the operation failed, 2 usage error.
#ifndef SAFESHARD_CLI_CLI_H_
#define SAFESHARD_CLI_CLI_H_

#include <ostream>
#include <string>
#include <vector>

namespace safeshard {

inline constexpr int kExitOk = 0;
inline constexpr int kExitProblems = 1;
inline constexpr int kExitUsage = 2;

int RunSafeshard(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

}  // namespace safeshard

#endif  // SAFESHARD_CLI_CLI_H_
