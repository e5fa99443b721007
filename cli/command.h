// command.h: what the commands of `safeshard` share — one registration shape, the exit-code
// policy (cli.h), URL resolution, tables, JSON pieces, the progress bar. Each command lives in
// a file of its own (inspect.cc, verify.cc, ...) and adds itself with Add<Command>(app).
#ifndef SAFESHARD_CLI_COMMAND_H_
#define SAFESHARD_CLI_COMMAND_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <ostream>
#include <set>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "cli/format_util.h"
#include "core/io/url.h"
#include "core/layout/layout.h"
#include "core/layout/layout_json.h"
#include "nlohmann/json.hpp"

namespace safeshard::cli {

using ordered_json = nlohmann::ordered_json;

// One subcommand: its CLI11 app (options bound to its own arguments) and what runs when it was
// the one parsed. Every Run returns an exit code of the one policy in cli.h.
struct Subcommand {
  CLI::App* app;
  std::function<int(std::ostream& out, std::ostream& err)> run;
};

std::vector<Subcommand> AddInspect(CLI::App& app);
std::vector<Subcommand> AddVerify(CLI::App& app);
std::vector<Subcommand> AddMakeExample(CLI::App& app);
std::vector<Subcommand> AddConsolidate(CLI::App& app);
std::vector<Subcommand> AddRemap(CLI::App& app);
std::vector<Subcommand> AddDiff(CLI::App& app);
std::vector<Subcommand> AddDaemonClient(CLI::App& app);  // runs, jobs, daemon-consolidate

// Option help shared by the commands that read checkpoints.
extern const char kUrlHelp[];
extern const char kTokenHelp[];

// A path or URL (file://, http(s)://, hf://, mem://) resolved to its file system.
absl::StatusOr<ResolvedPath> Resolve(const std::string& path, const std::string& token);

// One line on what proves the checkpoint complete, or why nothing does.
std::string CompletenessLine(const Completeness& c);
// "layers.2" < "layers.10": runs of digits compare as numbers, everything else bytewise.
bool NaturalLess(const std::string& a, const std::string& b);
// Columns padded to their widest cell; `right_aligned` column indices.
void PrintTable(const std::vector<std::vector<std::string>>& rows, std::ostream& out,
                const std::set<size_t>& right_aligned);

// A progress bar on a terminal (bytes, rate, ETA), nothing otherwise.
class ProgressBar {
 public:
  ProgressBar(std::ostream& err, bool enabled) : err_(err), enabled_(enabled) {}
  void Update(uint64_t done, uint64_t total) {
    if (!enabled_ || total == 0) return;
    auto now = std::chrono::steady_clock::now();
    if (done < total && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    double secs = std::chrono::duration<double>(now - start_).count();
    double rate = secs > 0 ? done / secs : 0;
    int width = 30;
    int fill = static_cast<int>(static_cast<double>(done) / total * width);
    std::string bar = std::string(fill, '#') + std::string(width - fill, '.');
    std::string eta =
        rate > 0 && done < total ? absl::StrFormat("ETA %.0fs", (total - done) / rate) : "";
    err_ << absl::StrFormat("\r[%s] %3d%% %s / %s  %s/s  %s   ", bar,
                            static_cast<int>(100.0 * done / total), HumanBytes(done),
                            HumanBytes(total), HumanBytes(static_cast<uint64_t>(rate)), eta)
         << std::flush;
    drawn_ = true;
  }
  void Finish() {
    if (drawn_) err_ << "\n";
    drawn_ = false;
  }

 private:
  std::ostream& err_;
  bool enabled_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point last_{};
};

bool StderrIsTerminal(std::ostream& err);

}  // namespace safeshard::cli

#endif  // SAFESHARD_CLI_COMMAND_H_
