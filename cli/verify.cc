// verify.cc: `safeshard verify` — the verdict: problems, and what proves completeness.
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
#include "core/consolidate/consolidate.h"
#include "core/format/internal/json_util.h"
#include "core/io/atomic_file.h"
#include "core/io/filesystem.h"
#include "core/io/url.h"
#include "core/layout/layout.h"
#include "nlohmann/json.hpp"

namespace safeshard::cli {
namespace {

struct VerifyArgs {
  std::string token;
  std::string path;
  std::string reference;
  int expect_ranks = 0;
  bool json = false;
  bool strict = false;
  bool checksums = false;
};

int RunVerify(const VerifyArgs& a, std::ostream& out, std::ostream& err) {
  absl::StatusOr<ResolvedPath> where = Resolve(a.path, a.token);
  if (!where.ok()) {
    err << "safeshard verify: " << where.status().message() << "\n";
    return kExitUsage;
  }
  ScanOptions so;
  so.expect_ranks = a.expect_ranks;
  so.strict = a.strict;
  absl::StatusOr<CheckpointLayout> ck = CheckpointLayout::Scan(*where->fs, where->path, so);
  if (!ck.ok()) {
    err << "safeshard verify: " << ck.status().message() << "\n";
    return ck.status().code() == absl::StatusCode::kNotFound ? kExitUsage : kExitProblems;
  }
  if (!a.reference.empty()) {
    if (SameDirectory(*where->fs, a.reference, ck->root()) || a.reference == a.path) {
      err << "safeshard verify: --reference " << a.reference
          << " is the checkpoint itself; it proves nothing about it\n";
      return kExitUsage;
    }
    absl::StatusOr<ResolvedPath> rw = Resolve(a.reference, a.token);
    absl::StatusOr<CheckpointLayout> ref = rw.ok() ? CheckpointLayout::Scan(*rw->fs, rw->path)
                                                   : absl::StatusOr<CheckpointLayout>(rw.status());
    if (!ref.ok() || ref->tensors().empty()) {
      err << "safeshard verify: --reference " << a.reference << ": "
          << (ref.ok() ? "holds no tensors" : std::string(ref.status().message())) << "\n";
      return kExitUsage;
    }
    ck->CheckAgainstReference(*ref);
  }
  std::vector<Problem> problems = ck->problems();
  std::optional<ChecksumReport> sums;
  std::string checksum_error;
  if (a.checksums) {
    absl::StatusOr<ChecksumReport> r = VerifyChecksums(*where->fs, *ck);
    if (r.ok()) {
      sums = std::move(*r);
      problems.insert(problems.end(), sums->problems.begin(), sums->problems.end());
    } else {
      checksum_error = std::string(r.status().message());
    }
  }
  const bool ok = problems.empty() && checksum_error.empty();
  if (a.json) {
    ordered_json j;
    j["schema"] = "safeshard.verify/1";
    j["path"] = ck->root();
    j["kind"] = std::string(CheckpointKindName(ck->kind()));
    j["files"] = ck->files().size();
    j["tensors"] = ck->tensors().size();
    j["ok"] = ok;
    ordered_json p = ordered_json::array();
    for (const Problem& pr : problems) p.push_back(ProblemJson(pr));
    j["problems"] = std::move(p);
    j["completeness"] = CompletenessJson(ck->completeness());
    if (a.checksums) {
      ordered_json c;
      c["checked"] = sums.has_value();
      c["error"] = checksum_error.empty() ? ordered_json() : ordered_json(checksum_error);
      c["bytes"] = sums ? sums->bytes : 0;
      c["unchecked_files"] = sums ? sums->unchecked : std::vector<std::string>();
      j["checksums"] = std::move(c);
    }
    out << internal::DumpJson(j, 2) << "\n";
    return ok ? kExitOk : kExitProblems;
  }
  for (const Problem& p : problems) out << p.ToString() << "\n";
  if (!checksum_error.empty()) out << "checksums: " << checksum_error << "\n";
  if (ok) {
    out << "ok: " << ck->tensors().size() << " tensors in " << ck->files().size()
        << (ck->files().size() == 1 ? " file (" : " files (") << CheckpointKindName(ck->kind())
        << "), every tensor fully covered\n";
    if (sums) {
      out << "checksums: " << HumanBytes(sums->bytes) << " re-read, every recorded XXH3-64 matches";
      if (!sums->unchecked.empty()) {
        out << " (" << sums->unchecked.size()
            << " file(s) have no recorded checksum: " << absl::StrJoin(sums->unchecked, ", ")
            << ")";
      }
      out << "\n";
    }
    out << CompletenessLine(ck->completeness()) << "\n";
  } else {
    const size_t n = problems.size() + (checksum_error.empty() ? 0 : 1);
    // The verdict goes where "ok" goes: stdout (stderr is for failures to run at all).
    out << n << " problem" << (n == 1 ? "" : "s") << " in " << a.path << "\n";
  }
  return ok ? kExitOk : kExitProblems;
}

}  // namespace

std::vector<Subcommand> AddVerify(CLI::App& app) {
  auto a = std::make_shared<VerifyArgs>();
  CLI::App* verify = app.add_subcommand(
      "verify",
      "Check a checkpoint from its headers: every file valid, every tensor exactly "
      "covered by its chunks (no gap, no overlap), dtypes agree, shard ranks dense, "
      "index json and completion manifest consistent. Prints one problem per line and "
      "what proves the checkpoint complete (or that nothing does: a lost highest rank "
      "is invisible in the other ranks' headers); exit 0 clean, 1 problems.");
  verify->add_option("PATH", a->path, std::string("Checkpoint: ") + kUrlHelp)->required();
  verify->add_option("--token", a->token, kTokenHelp);
  verify->add_flag("--json", a->json, "Machine-readable report (schema safeshard.verify/1)");
  verify
      ->add_option("--expect-ranks", a->expect_ranks,
                   "The checkpoint must hold shard files of exactly ranks 0..N-1 (the job's "
                   "world size): proves no trailing rank was lost")
      ->check(CLI::Range(1, 1 << 20));
  verify->add_option("--reference", a->reference,
                     "Model directory (e.g. the HF model the run started from) whose tensor "
                     "names and shapes this checkpoint must match: a proof of completeness");
  verify->add_flag("--strict", a->strict,
                   "Completeness that cannot be proven is a problem (exit 1), not a note");
  verify->add_flag("--checksums", a->checksums,
                   "Re-read every file and compare its XXH3-64 (and each tensor's) with "
                   "safeshard.complete.json");

  return {{verify, [a](std::ostream& out, std::ostream& err) { return RunVerify(*a, out, err); }}};
}

}  // namespace safeshard::cli
