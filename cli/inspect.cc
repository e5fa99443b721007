// inspect.cc: `safeshard inspect` — a checkpoint's tensors, chunks and files, from headers only.
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
#include "core/format/dtype.h"
#include "core/format/internal/json_util.h"
#include "core/format/sharding.h"
#include "core/io/atomic_file.h"
#include "core/io/filesystem.h"
#include "core/io/url.h"
#include "core/layout/layout.h"
#include "core/layout/layout_json.h"
#include "nlohmann/json.hpp"
#include "re2/re2.h"

namespace safeshard::cli {
namespace {

struct InspectArgs {
  std::string token;
  std::string path;
  bool json = false;
  bool by_file = false;
  std::string filter;
};

int RunInspect(const InspectArgs& a, std::ostream& out, std::ostream& err) {
  std::unique_ptr<RE2> filter;
  if (!a.filter.empty()) {
    filter = std::make_unique<RE2>(a.filter, RE2::Quiet);
    if (!filter->ok()) {
      err << "safeshard inspect: --filter: invalid regular expression \"" << a.filter
          << "\": " << filter->error() << "\n";
      return kExitUsage;
    }
  }
  absl::StatusOr<ResolvedPath> where = Resolve(a.path, a.token);
  if (!where.ok()) {
    err << "safeshard inspect: " << where.status().message() << "\n";
    return kExitUsage;
  }
  absl::StatusOr<CheckpointLayout> ck = CheckpointLayout::Scan(*where->fs, where->path);
  if (!ck.ok()) {
    err << "safeshard inspect: " << ck.status().message() << "\n";
    return ck.status().code() == absl::StatusCode::kNotFound ? kExitUsage : kExitProblems;
  }
  // The listing is printed whatever the state; the exit code says whether it is sound.
  const int code = ck->HasBlockingProblem() || ck->files().empty() ? kExitProblems : kExitOk;
  if (a.json) {
    NameFilter keep;
    if (filter) keep = [&](const std::string& n) { return RE2::PartialMatch(n, *filter); };
    WriteLayoutJson(out, *ck, keep, 2);
    out << "\n";
    return code;
  }
  uint64_t file_bytes = 0;
  for (const FileInfo& f : ck->files()) file_bytes += f.size;
  out << "checkpoint " << a.path << ": " << CheckpointKindName(ck->kind());
  if (ck->rank_count() > 0) out << ", " << ck->rank_count() << " ranks";
  out << ", " << ck->files().size() << " file" << (ck->files().size() == 1 ? "" : "s") << ", "
      << HumanBytes(file_bytes);
  if (!ck->index_file().empty()) out << ", index " << ck->index_file();
  out << "\n" << CompletenessLine(ck->completeness()) << "\n\n";

  if (a.by_file) {
    for (const FileInfo& f : ck->files()) {
      out << f.name << "  (" << Grouped(f.size) << " bytes";
      if (f.shard) out << ", rank " << *f.shard - 1;
      if (f.dcp) out << ", DCP shard";
      if (f.header) out << ", header " << Grouped(f.header->data_start()) << " bytes";
      out << ")\n";
      if (!f.header) {
        out << "  error: " << *f.error << "\n\n";
        continue;
      }
      // __metadata__ (the DCP sharding info is the chunks, shown as such elsewhere).
      std::vector<std::string> meta;
      for (const auto& [k, v] : f.header->metadata) {
        if (k == kShardingInfoKey) continue;
        std::string shown = v.size() > 60 ? v.substr(0, 57) + "..." : v;
        meta.push_back(internal::Quote(k) + "=" + internal::Quote(shown));
      }
      if (!meta.empty()) out << "  metadata: " << absl::StrJoin(meta, ", ") << "\n";
      std::vector<const TensorEntry*> order;
      for (const TensorEntry& t : f.header->tensors) {
        if (!filter || RE2::PartialMatch(t.name, *filter)) order.push_back(&t);
      }
      std::sort(order.begin(), order.end(),
                [](const TensorEntry* x, const TensorEntry* y) { return x->begin < y->begin; });
      std::vector<std::vector<std::string>> rows = {{"  BYTES", "NAME", "DTYPE", "SHAPE", "SIZE"}};
      for (const TensorEntry* t : order) {
        uint64_t base = f.header->data_start();
        rows.push_back({absl::StrCat("  [", base + t->begin, ", ", base + t->end, ")"), t->name,
                        std::string(DTypeName(t->dtype)), ShapeString(t->shape),
                        HumanBytes(t->size())});
      }
      PrintTable(rows, out, {4});
      out << "\n";
    }
  } else {
    std::vector<std::vector<std::string>> rows = {
        {"NAME", "DTYPE", "SHAPE", "PARAMS", "BYTES", "CHUNKS", "FILES"}};
    // Natural order, as the inspector: layers.2 before layers.10.
    std::vector<const TensorLayout*> sorted;
    for (const TensorLayout& t : ck->tensors()) sorted.push_back(&t);
    std::stable_sort(
        sorted.begin(), sorted.end(),
        [](const TensorLayout* x, const TensorLayout* y) { return NaturalLess(x->name, y->name); });
    for (const TensorLayout* tp : sorted) {
      const TensorLayout& t = *tp;
      if (filter && !RE2::PartialMatch(t.name, *filter)) continue;
      std::set<int> files;
      for (const Chunk& c : t.chunks) files.insert(c.file);
      rows.push_back({t.name + (t.has_problem ? "  (!)" : ""), std::string(DTypeName(t.dtype)),
                      ShapeString(t.shape), Grouped(t.numel()), HumanBytes(t.bytes()),
                      absl::StrCat(t.chunks.size()), absl::StrCat(files.size())});
    }
    PrintTable(rows, out, {3, 4, 5, 6});
  }
  std::map<std::string, std::array<uint64_t, 3>> totals;
  uint64_t all[3] = {0, 0, 0};
  for (const TensorLayout& t : ck->tensors()) {
    if (filter && !RE2::PartialMatch(t.name, *filter)) continue;
    auto& tot = totals[std::string(DTypeName(t.dtype))];
    tot[0] += 1;
    tot[1] += t.numel();
    tot[2] += t.bytes();
    all[0] += 1;
    all[1] += t.numel();
    all[2] += t.bytes();
  }
  // One logical weight per quantized pair: what `consolidate --dequantize` writes.
  std::vector<std::vector<std::string>> q_rows;
  for (const quant::QuantPair& q : ck->quantized()) {
    if (filter && !RE2::PartialMatch(q.output, *filter) && !RE2::PartialMatch(q.weight, *filter))
      continue;
    q_rows.push_back({"  " + q.output, ShapeString(q.output_shape), q.Describe(),
                      absl::StrCat(q.weight, " + ", q.scale)});
  }
  if (!q_rows.empty()) {
    out << "\nquantized weights (" << q_rows.size()
        << "; `safeshard consolidate --dequantize bf16` decodes them):\n";
    PrintTable(q_rows, out, {});
  }
  out << "\ntotals by dtype:\n";
  std::vector<std::vector<std::string>> rows;
  for (const auto& [d, v] : totals) {
    rows.push_back({"  " + d, absl::StrCat(Grouped(v[0]), v[0] == 1 ? " tensor" : " tensors"),
                    absl::StrCat(Grouped(v[1]), " params"), HumanBytes(v[2])});
  }
  rows.push_back({"  all", absl::StrCat(Grouped(all[0]), " tensors"),
                  absl::StrCat(Grouped(all[1]), " params"), HumanBytes(all[2])});
  PrintTable(rows, out, {1, 2, 3});
  if (!ck->problems().empty()) {
    // The first few here (what is wrong is the point of looking), the rest from verify.
    out << "\n";
    const size_t shown = std::min<size_t>(ck->problems().size(), 3);
    for (size_t i = 0; i < shown; ++i) out << ck->problems()[i].ToString() << "\n";
    out << ck->problems().size() << " problem" << (ck->problems().size() == 1 ? "" : "s")
        << " found";
    if (shown < ck->problems().size())
      out << "; run `safeshard verify " << a.path << "` for the list";
    out << "\n";
  }
  return code;
}

}  // namespace

std::vector<Subcommand> AddInspect(CLI::App& app) {
  auto a = std::make_shared<InspectArgs>();
  CLI::App* inspect = app.add_subcommand(
      "inspect",
      "List a checkpoint's tensors: dtype, global shape, parameters, bytes, chunks "
      "and files; totals by dtype. Reads headers only.");
  inspect->add_option("PATH", a->path, std::string("Checkpoint: ") + kUrlHelp)->required();
  inspect->add_option("--token", a->token, kTokenHelp);
  inspect->add_flag("--json", a->json,
                    "Machine-readable output (schema safeshard.inspect/1, see README)");
  inspect->add_option("--filter", a->filter, "Only tensors whose name matches this RE2 regex");
  inspect->add_flag("--by-file", a->by_file,
                    "List each file's tensors with their absolute byte ranges");

  return {
      {inspect, [a](std::ostream& out, std::ostream& err) { return RunInspect(*a, out, err); }}};
}

}  // namespace safeshard::cli
