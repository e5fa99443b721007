// diff.cc: `safeshard diff` — two checkpoints of any layouts, tensor by tensor.
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
#include "core/diff/diff.h"
#include "core/format/dtype.h"
#include "core/format/internal/json_util.h"
#include "core/io/atomic_file.h"
#include "core/io/filesystem.h"
#include "core/io/url.h"
#include "core/layout/layout.h"
#include "nlohmann/json.hpp"
#include "re2/re2.h"

namespace safeshard::cli {
namespace {

struct DiffArgs {
  std::string a, b, token, filter;
  bool headers_only = false, json = false;
  int threads = 4;
  int max_lines = 100;
  int expect_ranks = 0;
  double atol = 0, rtol = 0;
  bool by_value = false;  // --atol or --rtol given (even 0)
};

int RunDiff(const DiffArgs& args, std::ostream& out, std::ostream& err) {
  auto fail = [&](const absl::Status& s, int code) {
    err << "safeshard diff: " << s.message() << "\n";
    return code;
  };
  std::unique_ptr<RE2> filter;
  if (!args.filter.empty()) {
    filter = std::make_unique<RE2>(args.filter, RE2::Quiet);
    if (!filter->ok()) {
      err << "safeshard diff: --filter: invalid regular expression \"" << args.filter
          << "\": " << filter->error() << "\n";
      return kExitUsage;
    }
  }
  absl::StatusOr<ResolvedPath> wa = Resolve(args.a, args.token);
  if (!wa.ok()) return fail(wa.status(), kExitUsage);
  absl::StatusOr<ResolvedPath> wb = Resolve(args.b, args.token);
  if (!wb.ok()) return fail(wb.status(), kExitUsage);
  absl::StatusOr<CheckpointLayout> a = CheckpointLayout::Scan(*wa->fs, wa->path);
  if (!a.ok())
    return fail(a.status(),
                a.status().code() == absl::StatusCode::kNotFound ? kExitUsage : kExitProblems);
  absl::StatusOr<CheckpointLayout> b = CheckpointLayout::Scan(*wb->fs, wb->path);
  if (!b.ok())
    return fail(b.status(),
                b.status().code() == absl::StatusCode::kNotFound ? kExitUsage : kExitProblems);
  // --expect-ranks applies to a side made of per-rank shards.
  if (args.expect_ranks > 0) {
    ScanOptions so;
    so.expect_ranks = args.expect_ranks;
    if (a->rank_count() > 0) a = CheckpointLayout::Scan(*wa->fs, wa->path, so);
    if (b->rank_count() > 0) b = CheckpointLayout::Scan(*wb->fs, wb->path, so);
    if (!a.ok()) return fail(a.status(), kExitProblems);
    if (!b.ok()) return fail(b.status(), kExitProblems);
  }
  for (const auto* ck : {&*a, &*b}) {
    if (ck->files().empty())
      return fail(absl::NotFoundError(absl::StrCat(ck->root(), ": no .safetensors files")),
                  kExitUsage);
  }
  // A side with a blocking problem (a lost file, a gap, a broken index or manifest) cannot be
  // "identical" to anything: its missing bytes would be compared as absent, not as lost.
  for (const auto* ck : {&*a, &*b}) {
    if (!ck->HasBlockingProblem()) continue;
    err << "safeshard diff: " << ck->root() << " is incomplete or inconsistent; not compared:\n";
    int shown = 0;
    for (const Problem& p : ck->problems()) {
      if (!IsBlocking(p.kind)) continue;
      if (shown++ == 10) {
        err << "  ...\n";
        break;
      }
      err << "  " << p.ToString() << "\n";
    }
    return kExitProblems;
  }
  DiffOptions o;
  o.headers_only = args.headers_only;
  o.threads = args.threads;
  o.atol = args.atol;
  o.rtol = args.rtol;
  o.by_value = args.by_value;
  if (filter) o.filter = [&](const std::string& n) { return RE2::PartialMatch(n, *filter); };
  ProgressBar bar(err, StderrIsTerminal(err) && !args.json);
  o.progress = [&](uint64_t done, uint64_t total) { bar.Update(done, total); };
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<DiffReport> r = DiffCheckpoints(*wa->fs, *a, *wb->fs, *b, o);
  bar.Finish();
  if (!r.ok()) return fail(r.status(), kExitProblems);
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::map<DiffKind, uint64_t> by_kind;
  for (const TensorDiff& d : r->diffs) by_kind[d.kind]++;
  auto side = [](const CheckpointLayout& ck) {
    return absl::StrCat(ck.root(), " (", CheckpointKindName(ck.kind()), ", ", ck.files().size(),
                        " file", ck.files().size() == 1 ? "" : "s", ", ", ck.tensors().size(),
                        " tensors)");
  };
  if (args.json) {
    ordered_json j;
    j["schema"] = "safeshard.diff/1";
    j["a"] = a->root();
    j["b"] = b->root();
    j["identical"] = r->identical_all();
    j["headers_only"] = args.headers_only;
    j["in_both"] = r->in_both;
    j["identical_tensors"] = r->identical;
    j["bytes_compared"] = r->bytes_compared;
    j["atol"] = args.atol;
    j["rtol"] = args.rtol;
    j["across_dtypes"] = r->across_dtypes;
    ordered_json list = ordered_json::array();
    for (const TensorDiff& d : r->diffs) {
      ordered_json e;
      e["kind"] = DiffKindName(d.kind);
      e["tensor"] = d.name;
      e["detail"] = d.detail;
      if (d.kind == DiffKind::kValues) {
        e["differing_elements"] = d.differing_elements;
        e["first_index"] = d.first_index;
        e["first_a"] = d.first_a;
        e["first_b"] = d.first_b;
        if (o.numeric()) e["max_abs_diff"] = d.max_abs_diff;
      }
      list.push_back(std::move(e));
    }
    j["differences"] = std::move(list);
    out << internal::DumpJson(j, 2) << "\n";
  } else {
    int shown = 0;
    for (const TensorDiff& d : r->diffs) {
      if (args.max_lines > 0 && shown == args.max_lines) {
        out << "... " << (r->diffs.size() - shown) << " more (--max-lines 0 shows all)\n";
        break;
      }
      out << DiffKindName(d.kind) << ": " << d.name << ": " << d.detail << "\n";
      ++shown;
    }
    out << "A: " << side(*a) << "\nB: " << side(*b) << "\n";
    out << r->in_both << " tensors in both: " << r->identical << " identical";
    if (by_kind[DiffKind::kValues])
      out << ", " << by_kind[DiffKind::kValues] << " with other values";
    if (by_kind[DiffKind::kDType])
      out << ", " << by_kind[DiffKind::kDType] << " with another dtype";
    if (by_kind[DiffKind::kShape])
      out << ", " << by_kind[DiffKind::kShape] << " with another shape";
    if (by_kind[DiffKind::kNotCompared])
      out << ", " << by_kind[DiffKind::kNotCompared] << " not compared";
    out << "; " << by_kind[DiffKind::kOnlyInA] << " only in A, " << by_kind[DiffKind::kOnlyInB]
        << " only in B";
    if (r->across_dtypes)
      out << "; " << r->across_dtypes << " compared by value across float dtypes";
    if (args.headers_only) {
      out << " (headers only: values not read)\n";
    } else {
      out << absl::StrFormat("; %s compared in %.2f s\n", HumanBytes(r->bytes_compared), secs);
    }
  }
  return r->identical_all() ? kExitOk : kExitProblems;
}

}  // namespace

std::vector<Subcommand> AddDiff(CLI::App& app) {
  auto a = std::make_shared<DiffArgs>();
  CLI::App* diff = app.add_subcommand(
      "diff",
      "Compare two checkpoints of any layouts (per-rank shards, HF-sharded, single file) tensor by "
      "tensor: names, dtypes, global shapes and every byte (read straight from the mapped files). "
      "Prints each difference (for values: how many elements differ, the first one and both of its "
      "values); exit 0 identical, 1 different.");
  diff->add_option("A", a->a, std::string("First checkpoint: ") + kUrlHelp)->required();
  diff->add_option("B", a->b, "Second checkpoint (same forms)")->required();
  diff->add_option("--token", a->token, kTokenHelp);
  diff->add_flag("--headers-only", a->headers_only,
                 "Compare names, dtypes and shapes only; read no tensor data");
  diff->add_option("--filter", a->filter, "Only tensors whose name matches this RE2 regex");
  diff->add_option("--threads", a->threads, "Tensors compared at once")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  diff->add_option("--max-lines", a->max_lines, "Differences printed at most (0: all)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  diff->add_option(
          "--atol", a->atol,
          "Absolute tolerance for float tensors (as numpy.isclose: |a-b| <= atol + rtol*|b|; NaN "
          "equals NaN). "
          "With --atol or --rtol, float tensors are compared by value, also across float dtypes")
      ->check(CLI::NonNegativeNumber);
  diff->add_option("--rtol", a->rtol, "Relative tolerance for float tensors (see --atol)")
      ->check(CLI::NonNegativeNumber);
  diff->add_option("--expect-ranks", a->expect_ranks,
                   "A side made of per-rank shards must hold exactly ranks 0..N-1")
      ->check(CLI::Range(1, 1 << 20));
  diff->add_flag("--json", a->json,
                 "Machine-readable report (schema safeshard.diff/1; every difference)");

  return {{diff, [a, diff](std::ostream& out, std::ostream& err) {
             a->by_value = diff->count("--atol") > 0 || diff->count("--rtol") > 0;
             return RunDiff(*a, out, err);
           }}};
}

}  // namespace safeshard::cli
