// cli.cc: `safeshard`'s entry point — builds the command line from the commands' own files,
// parses it, runs the one chosen; torch commands go to the companion binary.
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <set>

#include "CLI/CLI.hpp"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "cli/cli.h"
#include "cli/command.h"
#include "cli/format_util.h"
#include "core/format/internal/json_util.h"
#include "core/io/atomic_file.h"
#include "core/io/filesystem.h"
#include "core/io/url.h"
#include "core/layout/layout.h"
#include "core/util/version.h"
#include "nlohmann/json.hpp"

namespace safeshard {

using cli::Subcommand;
using namespace cli;  // NOLINT(build/namespaces): the Add* registrations

namespace {

constexpr char kDescription[] =
    "safeshard: inspect, verify, consolidate, remap and diff HuggingFace-format (distributed)\n"
    "safetensors checkpoints. Exit codes: 0 ok, 1 problems found or failure, 2 usage error.";

}  // namespace

// Torch subcommands live in the companion binary safeshard-torch (libtorch stays out of this
// one), run the way git runs git-<cmd>: next to this binary, in Bazel's output tree, or on PATH.
int RunCompanion(const std::vector<std::string>& args, std::ostream& err) {
  std::vector<std::string> candidates;
  char self[4096];
  ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n > 0) {
    std::string dir = DirName(std::string(self, n));
    candidates.push_back(JoinPath(dir, "safeshard-torch"));
    candidates.push_back(JoinPath(dir, "../core/dcp/safeshard-torch"));
  }
  candidates.push_back("safeshard-torch");
  std::vector<std::string> argv = args;
  std::vector<char*> av;
  for (const std::string& c : candidates) {
    argv[0] = c;
    av.clear();
    for (std::string& a : argv) av.push_back(a.data());
    av.push_back(nullptr);
    if (c.find('/') != std::string::npos) {
      if (access(c.c_str(), X_OK) == 0) execv(c.c_str(), av.data());
    } else {
      execvp(c.c_str(), av.data());
    }
  }
  err << "safeshard: \"" << args[1] << "\" needs the libtorch companion safeshard-torch, which was "
      << "not found next to this binary or on PATH (bazel build //core/dcp:safeshard-torch)\n";
  return kExitUsage;
}

int RunSafeshard(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  if (args.size() > 1 &&
      (args[1] == "dist-consolidate" || args[1] == "save-example" || args[1] == "load-check")) {
    return RunCompanion(args, err);
  }
  CLI::App app{kDescription, "safeshard"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "Help for every command");
  app.set_version_flag("--version", std::string("safeshard ") + kVersion);

  std::vector<Subcommand> subs;
  for (auto add : {AddInspect, AddVerify, AddMakeExample, AddConsolidate, AddRemap, AddDiff,
                   AddDaemonClient}) {
    for (Subcommand& s : add(app)) subs.push_back(std::move(s));
  }
  app.footer(
      "Torch commands (run through the companion binary safeshard-torch):\n"
      "  dist-consolidate IN OUT --ranks R   consolidate with R processes over c10d (Gloo)\n"
      "  save-example OUT --ranks R          R processes save a generated model over Gloo with\n"
      "                                      the HF storage writer (shards + completion manifest)\n"
      "  load-check DIR --ranks R --layout col|row|mesh [--dequantize bf16]   load into another "
      "sharding, verify");
  bool known = args.size() < 2 || args[1].empty() || args[1][0] == '-';
  for (const CLI::App* sub : app.get_subcommands({}))
    known |= args.size() > 1 && sub->check_name(args[1]);
  if (!known) {
    err << "safeshard: unknown command \"" << args[1] << "\"\n";
    err << "Run `safeshard --help` for the list of commands.\n";
    return kExitUsage;
  }
  std::vector<std::string> rev(args.rbegin(), args.rend() - (args.empty() ? 0 : 1));
  try {
    app.parse(rev);
  } catch (const CLI::CallForHelp&) {
    out << app.help();
    return kExitOk;
  } catch (const CLI::CallForVersion&) {
    out << "safeshard " << kVersion << "\n";
    return kExitOk;
  } catch (const CLI::CallForAllHelp&) {
    out << app.help("", CLI::AppFormatMode::All);
    return kExitOk;
  } catch (const CLI::ParseError& e) {
    // Subcommand help comes through here too.
    if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) {
      for (CLI::App* sub : app.get_subcommands()) {
        out << sub->help();
        return kExitOk;
      }
      out << app.help();
      return kExitOk;
    }
    err << "safeshard: " << e.what() << "\n";
    err << "Run `safeshard --help` for usage.\n";
    return kExitUsage;
  }
  for (const Subcommand& s : subs) {
    if (s.app->parsed()) return s.run(out, err);
  }
  err << app.help();
  return kExitUsage;
}

}  // namespace safeshard
