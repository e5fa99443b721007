#include "cli/cli.h"

#include "core/format/internal/json_util.h"
#include "core/io/atomic_file.h"

#include <unistd.h>

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
#include "absl/strings/str_split.h"
#include "cli/format_util.h"
#include "core/consolidate/consolidate.h"
#include "core/example/example.h"
#include "core/remap/remap.h"
#include "core/format/dtype.h"
#include "core/io/filesystem.h"
#include "core/io/url.h"
#include "core/layout/layout.h"
#include "nlohmann/json.hpp"
#include "httplib.h"
#include "re2/re2.h"
#include "core/diff/diff.h"

namespace safeshard {
namespace {

using ordered_json = nlohmann::ordered_json;

constexpr char kDescription[] =
    "safeshard: inspect, verify, consolidate, remap and diff HuggingFace-format (distributed)\n"
    "safetensors checkpoints. Exit codes: 0 ok, 1 problems found or failure, 2 usage error.";

// ---- inspect ---------------------------------------------------------------------------------

// A path or URL (file://, http(s)://, hf://, mem://) resolved to its file system.
absl::StatusOr<ResolvedPath> Resolve(const std::string& path, const std::string& token) {
  UrlOptions o;
  o.token = token;
  return ResolveUrl(path, o);
}

const char kUrlHelp[] =
    "a directory, a .safetensors file, or a URL: http(s)://host/dir (ranged GETs; listing from a JSON "
    "directory index or the model index json), hf://ORG/REPO[@REVISION]/PATH ($HF_ENDPOINT), file://";
const char kTokenHelp[] =
    "Bearer token for http(s):// and hf:// (default: $HF_TOKEN, then ~/.cache/huggingface/token); never printed";

struct InspectArgs {
  std::string token;
  std::string path;
  bool json = false;
  bool by_file = false;
  std::string filter;
};

ordered_json ProblemJson(const Problem& p) {
  ordered_json j;
  j["kind"] = std::string(ProblemKindName(p.kind));
  j["file"] = p.file;
  j["tensor"] = p.tensor;
  j["message"] = p.message;
  return j;
}

ordered_json CompletenessJson(const Completeness& c) {
  ordered_json j;
  j["proven"] = c.proven;
  j["by"] = c.by;
  j["unproven"] = c.proven ? ordered_json() : ordered_json(c.unproven);
  return j;
}

// One line on what proves the checkpoint complete, or why nothing does.
std::string CompletenessLine(const Completeness& c) {
  if (c.proven) return absl::StrCat("complete: proven by ", absl::StrJoin(c.by, ", "));
  return absl::StrCat("note: ", c.unproven);
}

ordered_json LayoutJson(const CheckpointLayout& ck, const RE2* filter) {
  ordered_json root;
  root["schema"] = "safeshard.inspect/1";
  root["path"] = ck.root();
  root["kind"] = std::string(CheckpointKindName(ck.kind()));
  root["ranks"] = ck.rank_count();
  root["index_file"] = ck.index_file().empty() ? ordered_json() : ordered_json(ck.index_file());
  ordered_json files = ordered_json::array();
  for (const FileInfo& f : ck.files()) {
    ordered_json j;
    j["name"] = f.name;
    j["size"] = f.size;
    j["header_size"] = f.header ? ordered_json(f.header->header_size) : ordered_json();
    j["tensors"] = f.header ? f.header->tensors.size() : 0;
    j["shard"] = f.shard ? ordered_json(*f.shard) : ordered_json();
    j["dcp"] = f.dcp;
    j["metadata"] = f.header ? ordered_json(f.header->metadata) : ordered_json();
    j["error"] = f.error ? ordered_json(*f.error) : ordered_json();
    files.push_back(std::move(j));
  }
  root["files"] = std::move(files);
  ordered_json tensors = ordered_json::array();
  std::map<std::string, std::array<uint64_t, 3>> totals;  // dtype -> tensors, params, bytes
  for (const TensorLayout& t : ck.tensors()) {
    if (filter && !RE2::PartialMatch(t.name, *filter)) continue;
    ordered_json j;
    j["name"] = t.name;
    j["dtype"] = std::string(DTypeName(t.dtype));
    j["shape"] = t.shape;
    j["parameters"] = t.numel();
    j["bytes"] = t.bytes();
    ordered_json chunks = ordered_json::array();
    for (const Chunk& c : t.chunks) {
      ordered_json cj;
      cj["file"] = ck.files()[c.file].name;
      if (!c.key.empty()) cj["key"] = c.key;  // physical key (PyTorch's __dcp_shard_k)
      cj["offsets"] = c.offsets;
      cj["sizes"] = c.sizes;
      cj["byte_range"] = {c.begin, c.end};
      chunks.push_back(std::move(cj));
    }
    j["chunks"] = std::move(chunks);
    j["problem"] = t.has_problem;
    tensors.push_back(std::move(j));
    auto& tot = totals[std::string(DTypeName(t.dtype))];
    tot[0] += 1;
    tot[1] += t.numel();
    tot[2] += t.bytes();
  }
  root["tensors"] = std::move(tensors);
  ordered_json tj = ordered_json::object();
  for (const auto& [d, v] : totals) {
    tj[d] = {{"tensors", v[0]}, {"parameters", v[1]}, {"bytes", v[2]}};
  }
  root["totals"] = std::move(tj);
  ordered_json problems = ordered_json::array();
  for (const Problem& p : ck.problems()) problems.push_back(ProblemJson(p));
  root["problems"] = std::move(problems);
  root["completeness"] = CompletenessJson(ck.completeness());
  return root;
}

void PrintTable(const std::vector<std::vector<std::string>>& rows, std::ostream& out,
                const std::set<size_t>& right_aligned) {
  std::vector<size_t> w;
  for (const auto& r : rows) {
    if (w.size() < r.size()) w.resize(r.size(), 0);
    for (size_t i = 0; i < r.size(); ++i) w[i] = std::max(w[i], r[i].size());
  }
  for (const auto& r : rows) {
    std::string line;
    for (size_t i = 0; i < r.size(); ++i) {
      std::string cell = r[i];
      std::string pad(w[i] - cell.size(), ' ');
      line += right_aligned.count(i) ? pad + cell : cell + (i + 1 < r.size() ? pad : "");
      if (i + 1 < r.size()) line += "  ";
    }
    out << line << "\n";
  }
}

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
    out << internal::DumpJson(LayoutJson(*ck, filter.get()), 2) << "\n";
    return code;
  }
  uint64_t file_bytes = 0;
  for (const FileInfo& f : ck->files()) file_bytes += f.size;
  out << "checkpoint " << ck->root() << ": " << CheckpointKindName(ck->kind());
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
    for (const TensorLayout& t : ck->tensors()) {
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
    out << "\n" << ck->problems().size() << " problem"
        << (ck->problems().size() == 1 ? "" : "s") << " found; run `safeshard verify "
        << a.path << "` for the list\n";
  }
  return code;
}

// ---- verify ----------------------------------------------------------------------------------

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
  if (ck->files().empty()) {
    err << "safeshard verify: " << a.path << ": no .safetensors files\n";
    return kExitProblems;
  }
  if (!a.reference.empty()) {
    if (SameDirectory(*where->fs, a.reference, ck->root()) || a.reference == a.path) {
      err << "safeshard verify: --reference " << a.reference
          << " is the checkpoint itself; it proves nothing about it\n";
      return kExitUsage;
    }
    absl::StatusOr<ResolvedPath> rw = Resolve(a.reference, a.token);
    absl::StatusOr<CheckpointLayout> ref =
        rw.ok() ? CheckpointLayout::Scan(*rw->fs, rw->path) : absl::StatusOr<CheckpointLayout>(rw.status());
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
        out << " (" << sums->unchecked.size() << " file(s) have no recorded checksum: "
            << absl::StrJoin(sums->unchecked, ", ") << ")";
      }
      out << "\n";
    }
    out << CompletenessLine(ck->completeness()) << "\n";
  } else {
    const size_t n = problems.size() + (checksum_error.empty() ? 0 : 1);
    err << n << " problem" << (n == 1 ? "" : "s") << " in " << ck->root() << "\n";
  }
  return ok ? kExitOk : kExitProblems;
}

// ---- make-example ----------------------------------------------------------------------------

struct ExampleArgs {
  std::string out;
  int ranks = 4;
  int layers = 4;
  uint64_t hidden = 256;
  uint64_t vocab = 4096;
  int mesh_rows = 2;
  std::string gap;
  int many = 0;
  bool force = false;
  bool newest = false, strided = false, manifest = false;
};

int RunMakeExample(const ExampleArgs& a, std::ostream& out, std::ostream& err) {
  FileSystem& fs = LocalFileSystem();
  if (absl::StatusOr<std::vector<DirEntry>> l = fs.List(a.out); l.ok() && !a.force) {
    for (const DirEntry& e : *l) {
      if (absl::EndsWith(e.name, ".safetensors")) {
        err << "safeshard make-example: " << a.out
            << " already holds safetensors files; pass --force to overwrite\n";
        return kExitUsage;
      }
    }
  }
  WriteOptions o;
  o.ranks = a.ranks;
  o.mesh_rows = a.mesh_rows;
  if (!a.gap.empty()) {
    std::vector<std::string> parts = absl::StrSplit(a.gap, absl::MaxSplits(':', 1));
    int rank;
    if (parts.size() != 2 || !absl::SimpleAtoi(parts[1], &rank) || rank < 0 || rank >= a.ranks) {
      err << "safeshard make-example: --gap expects TENSOR:RANK with 0 <= RANK < " << a.ranks
          << "\n";
      return kExitUsage;
    }
    o.drop_chunk = std::make_pair(parts[0], rank);
  }
  std::vector<ExampleTensor> model =
      a.many > 0 ? ManySmallTensors(a.many)
                 : TransformerLikeModel({.layers = a.layers, .hidden = a.hidden, .vocab = a.vocab});
  o.logical_fqn = a.newest || a.strided;
  o.global_shape = a.newest;
  o.manifest = a.manifest;
  if (a.strided) {
    // FSDP2 + TP: MLP and attention projections strided (two row blocks per rank).
    for (ExampleTensor& t : model) {
      if (t.sharding == Sharding::kMesh) t.sharding = Sharding::kStridedMesh;
      if (t.sharding == Sharding::kRow && absl::StrContains(t.name, "layers.")) {
        t.sharding = Sharding::kStrided;
      }
    }
  }
  absl::Status s = WriteDcpCheckpoint(fs, a.out, model, o);
  if (!s.ok()) {
    err << "safeshard make-example: " << s.message() << "\n";
    return kExitProblems;
  }
  uint64_t bytes = 0;
  for (const ExampleTensor& t : model) bytes += ByteSizeOf(t.dtype, t.shape).value_or(0);
  out << "wrote " << model.size() << " tensors (" << HumanBytes(bytes) << ") as " << a.ranks
      << " per-rank DCP shard files in " << a.out << "\n";
  return kExitOk;
}


// ---- progress ---------------------------------------------------------------------------------

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
    std::string eta = rate > 0 && done < total
                          ? absl::StrFormat("ETA %.0fs", (total - done) / rate)
                          : "";
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

bool StderrIsTerminal(std::ostream& err) { return &err == &std::cerr && isatty(2); }

// ---- consolidate ------------------------------------------------------------------------------

struct ConsolidateArgs {
  std::string in, out, token;
  std::string mapping, reference, max_shard_size, unmapped = "error", cast_dtype, key_map;
  std::vector<std::string> metadata;
  bool restore_dtypes = false, diffusers = false, verify = false, overwrite = false, json = false;
  bool strict = false, no_checksums = false;
  int threads = 0;
  int expect_ranks = 0;
};

int RunConsolidate(const ConsolidateArgs& a, std::ostream& out, std::ostream& err) {
  FileSystem& fs = LocalFileSystem();
  auto usage = [&](absl::string_view msg) {
    err << "safeshard consolidate: " << msg << "\n";
    return kExitUsage;
  };
  auto fail = [&](const absl::Status& s) {
    err << "safeshard consolidate: " << s.message() << "\n";
    return s.code() == absl::StatusCode::kInvalidArgument || s.code() == absl::StatusCode::kNotFound
               ? kExitUsage
               : kExitProblems;
  };
  int choices = !a.mapping.empty() + !a.reference.empty() + !a.max_shard_size.empty();
  if (choices > 1) return usage("choose one of --mapping, --reference and --max-shard-size");
  if (a.restore_dtypes && a.reference.empty()) return usage("--restore-dtypes needs --reference");
  ConsolidateOptions o;
  std::vector<std::string> warnings;
  if (!a.mapping.empty()) {
    absl::StatusOr<std::string> text = ReadOptionFile(a.mapping);
    if (!text.ok()) return fail(text.status());
    absl::StatusOr<std::map<std::string, int>> m = ParseMappingJson(*text, a.mapping);
    if (!m.ok()) return fail(m.status());
    o.fqn_to_index = *m;
  }
  if (!a.reference.empty()) {
    absl::StatusOr<std::map<std::string, int>> m = MappingFromReference(fs, a.reference, &warnings);
    if (!m.ok()) return fail(m.status());
    o.fqn_to_index = *m;
    if (a.restore_dtypes) {
      absl::StatusOr<std::map<std::string, DType>> d = DTypesFromReference(fs, a.reference);
      if (!d.ok()) return fail(d.status());
      o.fqn_to_dtype = *d;
    }
  }
  if (!a.max_shard_size.empty()) {
    absl::StatusOr<uint64_t> s = ParseByteSize(a.max_shard_size);
    if (!s.ok()) return fail(s.status());
    o.max_shard_size = *s;
  }
  if (a.unmapped == "first") {
    o.unmapped = UnmappedPolicy::kFirst;
  } else if (a.unmapped == "own-file") {
    o.unmapped = UnmappedPolicy::kOwnFile;
  } else if (a.unmapped != "error") {
    return usage("--unmapped must be error, first or own-file");
  }
  if (!a.cast_dtype.empty()) {
    absl::StatusOr<DType> d = ParseDType(absl::AsciiStrToUpper(a.cast_dtype));
    if (!d.ok()) return usage(absl::StrCat("--cast-dtype: ", d.status().message()));
    o.cast_dtype = *d;
  }
  KeyMap km;
  if (!a.key_map.empty()) {
    absl::StatusOr<std::string> text = ReadOptionFile(a.key_map);
    if (!text.ok()) return fail(text.status());
    absl::StatusOr<KeyMap> k = KeyMap::FromJson(*text);
    if (!k.ok()) return fail(k.status());
    km = std::move(*k);
    o.key_map = &km;
  }
  for (const std::string& kv : a.metadata) {
    size_t eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) return usage("--metadata expects KEY=VALUE");
    o.metadata[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  o.threads = a.threads;
  o.verify = a.verify;
  o.overwrite = a.overwrite;
  o.diffusers_index = a.diffusers;
  o.expect_ranks = a.expect_ranks;
  o.strict = a.strict;
  o.checksums = !a.no_checksums;
  ProgressBar bar(err, StderrIsTerminal(err) && !a.json);
  o.progress = [&](uint64_t done, uint64_t total) { bar.Update(done, total); };
  absl::StatusOr<ResolvedPath> in = Resolve(a.in, a.token);
  if (!in.ok()) return usage(in.status().message());
  if (!UrlScheme(a.out).empty() && UrlScheme(a.out) != "file") {
    return usage("OUT must be a local directory (remote inputs are read with ranged GETs; outputs are written locally)");
  }
  absl::StatusOr<ResolvedPath> outp = Resolve(a.out, a.token);
  if (!outp.ok()) return usage(outp.status().message());
  o.output_fs = outp->fs.get();
  absl::StatusOr<ConsolidateResult> r = Consolidate(*in->fs, in->path, outp->path, o);
  bar.Finish();
  if (!r.ok()) return fail(r.status());
  warnings.insert(warnings.end(), r->warnings.begin(), r->warnings.end());
  double rate = r->seconds > 0 ? r->bytes / r->seconds : 0;
  if (a.json) {
    ordered_json j;
    j["schema"] = "safeshard.consolidate/1";
    j["output"] = r->output_dir;
    j["files"] = r->files;
    j["bytes"] = r->bytes;
    j["seconds"] = r->seconds;
    j["bytes_per_second"] = rate;
    if (r->verify) {
      j["verify"] = {{"bytes", r->verify->bytes_checked}, {"seconds", r->verify->seconds}};
    }
    j["warnings"] = warnings;
    out << internal::DumpJson(j, 2) << "\n";
    return kExitOk;
  }
  for (const std::string& w : warnings) err << "warning: " << w << "\n";
  size_t tensor_files = 0;
  for (const std::string& f : r->files) tensor_files += absl::EndsWith(f, ".safetensors");
  out << "consolidated " << HumanBytes(r->bytes) << " into " << tensor_files << " file"
      << (tensor_files == 1 ? "" : "s") << " in " << a.out
      << absl::StrFormat(" (%.2fs, %s/s)", r->seconds, HumanBytes(static_cast<uint64_t>(rate)));
  if (r->verify) {
    double vr = r->verify->seconds > 0 ? r->verify->bytes_checked / r->verify->seconds : 0;
    out << absl::StrFormat("; verified %s (%s/s)", HumanBytes(r->verify->bytes_checked),
                           HumanBytes(static_cast<uint64_t>(vr)));
  }
  out << "\n";
  return kExitOk;
}

// ---- remap ------------------------------------------------------------------------------------

struct RemapArgs {
  std::string in, out, rules_file, token;
  std::vector<std::string> rules;
  bool dry_run = false, in_place = false, overwrite = false;
};

int RunRemap(const RemapArgs& a, std::ostream& out, std::ostream& err) {
  FileSystem& fs = LocalFileSystem();
  auto fail = [&](const absl::Status& s) {
    err << "safeshard remap: " << s.message() << "\n";
    return s.code() == absl::StatusCode::kInvalidArgument || s.code() == absl::StatusCode::kNotFound
               ? kExitUsage
               : kExitProblems;
  };
  if (a.rules.empty() == a.rules_file.empty()) {
    err << "safeshard remap: give either --rule (repeatable) or --rules FILE\n";
    return kExitUsage;
  }
  absl::StatusOr<KeyMap> km;
  if (!a.rules_file.empty()) {
    absl::StatusOr<std::string> text = ReadOptionFile(a.rules_file);
    if (!text.ok()) return fail(text.status());
    km = KeyMap::FromJson(*text);
  } else {
    std::vector<KeyMap::Rule> rules;
    for (const std::string& r : a.rules) {
      absl::StatusOr<KeyMap::Rule> rule = KeyMap::ParseRule(r);
      if (!rule.ok()) return fail(rule.status());
      rules.push_back(*rule);
    }
    km = KeyMap::Create(std::move(rules));
  }
  if (!km.ok()) return fail(km.status());
  absl::StatusOr<ResolvedPath> in = Resolve(a.in, a.token);
  if (!in.ok()) return fail(in.status());
  if (a.dry_run) {
    absl::StatusOr<CheckpointLayout> ck = CheckpointLayout::Scan(*in->fs, in->path);
    if (!ck.ok()) return fail(ck.status());
    absl::StatusOr<RemapPlan> plan = PlanRemap(*ck, *km);
    if (!plan.ok()) return fail(plan.status());
    std::vector<std::vector<std::string>> rows = {{"OLD", "", "NEW"}};
    for (const auto& [o, n] : plan->renames) {
      rows.push_back({o, o == n ? "  " : "->", o == n ? "(unchanged)" : n});
    }
    PrintTable(rows, out, {});
    out << plan->changed << " of " << plan->renames.size() << " keys change (dry run: nothing written)\n";
    return kExitOk;
  }
  std::string target = a.out.empty() ? a.in : a.out;
  if (a.out.empty() && !a.in_place) {
    err << "safeshard remap: give an output directory, or --in-place to rewrite the input\n";
    return kExitUsage;
  }
  RemapOptions o;
  o.in_place = a.in_place;
  o.overwrite = a.overwrite;
  if (in->remote && a.in_place) {
    err << "safeshard remap: --in-place needs a local checkpoint; give a local output directory\n";
    return kExitUsage;
  }
  if (!UrlScheme(target).empty() && UrlScheme(target) != "file") {
    err << "safeshard remap: OUT must be a local directory\n";
    return kExitUsage;
  }
  absl::StatusOr<ResolvedPath> outp = Resolve(target, a.token);
  if (!outp.ok()) return fail(outp.status());
  if (in->remote) o.output_fs = outp->fs.get();
  absl::StatusOr<RemapResult> r = Remap(*in->fs, in->path, in->remote ? outp->path : target, *km, o);
  if (!r.ok()) return fail(r.status());
  out << "renamed " << r->plan.changed << " of " << r->plan.renames.size() << " tensors; wrote "
      << r->files.size() << " files (" << HumanBytes(r->bytes_copied) << " of tensor bytes copied, "
      << "not re-encoded) to " << target << "\n";
  return kExitOk;
}


// ---- diff -------------------------------------------------------------------------------------

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
      err << "safeshard diff: --filter: invalid regular expression \"" << args.filter << "\": " << filter->error()
          << "\n";
      return kExitUsage;
    }
  }
  absl::StatusOr<ResolvedPath> wa = Resolve(args.a, args.token);
  if (!wa.ok()) return fail(wa.status(), kExitUsage);
  absl::StatusOr<ResolvedPath> wb = Resolve(args.b, args.token);
  if (!wb.ok()) return fail(wb.status(), kExitUsage);
  absl::StatusOr<CheckpointLayout> a = CheckpointLayout::Scan(*wa->fs, wa->path);
  if (!a.ok()) return fail(a.status(), a.status().code() == absl::StatusCode::kNotFound ? kExitUsage : kExitProblems);
  absl::StatusOr<CheckpointLayout> b = CheckpointLayout::Scan(*wb->fs, wb->path);
  if (!b.ok()) return fail(b.status(), b.status().code() == absl::StatusCode::kNotFound ? kExitUsage : kExitProblems);
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
    if (ck->files().empty()) return fail(absl::NotFoundError(absl::StrCat(ck->root(), ": no .safetensors files")), kExitUsage);
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
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::map<DiffKind, uint64_t> by_kind;
  for (const TensorDiff& d : r->diffs) by_kind[d.kind]++;
  auto side = [](const CheckpointLayout& ck) {
    return absl::StrCat(ck.root(), " (", CheckpointKindName(ck.kind()), ", ", ck.files().size(), " file",
                        ck.files().size() == 1 ? "" : "s", ", ", ck.tensors().size(), " tensors)");
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
    if (by_kind[DiffKind::kValues]) out << ", " << by_kind[DiffKind::kValues] << " with other values";
    if (by_kind[DiffKind::kDType]) out << ", " << by_kind[DiffKind::kDType] << " with another dtype";
    if (by_kind[DiffKind::kShape]) out << ", " << by_kind[DiffKind::kShape] << " with another shape";
    if (by_kind[DiffKind::kNotCompared]) out << ", " << by_kind[DiffKind::kNotCompared] << " not compared";
    out << "; " << by_kind[DiffKind::kOnlyInA] << " only in A, " << by_kind[DiffKind::kOnlyInB] << " only in B";
    if (r->across_dtypes) out << "; " << r->across_dtypes << " compared by value across float dtypes";
    if (args.headers_only) {
      out << " (headers only: values not read)\n";
    } else {
      out << absl::StrFormat("; %s compared in %.2f s\n", HumanBytes(r->bytes_compared), secs);
    }
  }
  return r->identical_all() ? kExitOk : kExitProblems;
}

// ---- daemon client ---------------------------------------------------------------------------

struct DaemonArgs {
  std::string address;
  std::string token_file;
  bool json = false;
  std::string run;
};

std::string DefaultDaemonAddress() {
  const char* e = std::getenv("SAFESHARD_DAEMON");
  return e && *e ? e : "127.0.0.1:8470";
}

std::string DefaultTokenFile() {
  const char* home = std::getenv("HOME");
  return absl::StrCat(home ? home : "/root", "/.config/safeshard/token");
}

std::unique_ptr<httplib::Client> Connect(const std::string& address) {
  std::string host = address;
  int port = 8470;
  size_t colon = address.rfind(':');
  if (colon != std::string::npos) {
    host = address.substr(0, colon);
    (void)absl::SimpleAtoi(address.substr(colon + 1), &port);
  }
  auto c = std::make_unique<httplib::Client>(host, port);
  c->set_connection_timeout(3);
  c->set_read_timeout(30);
  return c;
}

int DaemonGet(const DaemonArgs& a, const std::string& path, std::ostream& err,
              nlohmann::json* out) {
  auto c = Connect(a.address);
  auto r = c->Get(path.c_str());
  if (!r) {
    err << "safeshard: cannot reach safeshardd at " << a.address
        << " (is it running? set --daemon or SAFESHARD_DAEMON)\n";
    return kExitProblems;
  }
  *out = nlohmann::json::parse(r->body, nullptr, false);
  if (r->status != 200 || out->is_discarded()) {
    err << "safeshard: safeshardd answered " << r->status << ": " << r->body << "\n";
    return kExitProblems;
  }
  return kExitOk;
}

int RunRuns(const DaemonArgs& a, std::ostream& out, std::ostream& err) {
  nlohmann::json j;
  if (int rc = DaemonGet(a, "/v1/runs", err, &j); rc != kExitOk) return rc;
  if (a.json) {
    out << internal::DumpJson(j, 2) << "\n";
    return kExitOk;
  }
  std::vector<std::vector<std::string>> rows = {{"ID", "STATE", "DETECTION", "PATH", "DETAIL"}};
  for (const auto& r : j["runs"]) {
    std::string detail = r.value("detail", "");
    if (detail.size() > 70) detail = detail.substr(0, 67) + "...";
    if (absl::StartsWith(detail, "published:")) detail = "-> " + r.value("output", "");
    rows.push_back({r.value("id", ""), r.value("state", ""), r.value("detection", ""),
                    r.value("path", ""), detail});
  }
  PrintTable(rows, out, {});
  return kExitOk;
}

int RunJobs(const DaemonArgs& a, std::ostream& out, std::ostream& err) {
  nlohmann::json j;
  if (int rc = DaemonGet(a, "/v1/jobs", err, &j); rc != kExitOk) return rc;
  if (a.json) {
    out << internal::DumpJson(j, 2) << "\n";
    return kExitOk;
  }
  std::vector<std::vector<std::string>> rows = {{"JOB", "RUN", "KIND", "STATE", "PROGRESS", "ERROR"}};
  for (const auto& r : j["jobs"]) {
    uint64_t done = r.value("bytes_done", uint64_t{0}), total = r.value("bytes_total", uint64_t{0});
    std::string prog = total ? absl::StrFormat("%d%% of %s", static_cast<int>(100.0 * done / total),
                                               HumanBytes(total))
                             : "-";
    std::string e = r.value("error", "");
    if (e.size() > 60) e = e.substr(0, 57) + "...";
    rows.push_back({absl::StrCat(r.value("id", 0)), r.value("run", ""), r.value("kind", ""),
                    r.value("state", ""), prog, e});
  }
  PrintTable(rows, out, {});
  return kExitOk;
}

int RunDaemonConsolidate(const DaemonArgs& a, std::ostream& out, std::ostream& err) {
  absl::StatusOr<std::string> token = LocalFileSystem().ReadAll(a.token_file);
  if (!token.ok()) {
    err << "safeshard daemon-consolidate: cannot read the API token: " << token.status().message()
        << " (pass --token-file)\n";
    return kExitUsage;
  }
  std::string id = a.run;
  if (!id.empty() && id[0] == '/') {  // a path: look its id up
    nlohmann::json runs;
    if (int rc = DaemonGet(a, "/v1/runs", err, &runs); rc != kExitOk) return rc;
    std::string want = id;
    while (want.size() > 1 && want.back() == '/') want.pop_back();
    id.clear();
    for (const auto& r : runs["runs"]) {
      if (r.value("path", "") == want) id = r.value("id", "");
    }
    if (id.empty()) {
      err << "safeshard daemon-consolidate: the daemon knows no run at " << a.run << "\n";
      return kExitProblems;
    }
  }
  auto c = Connect(a.address);
  httplib::Headers h = {{"Authorization", "Bearer " + std::string(absl::StripAsciiWhitespace(*token))}};
  auto r = c->Post(("/v1/runs/" + id + "/consolidate").c_str(), h, "", "application/json");
  if (!r) {
    err << "safeshard: cannot reach safeshardd at " << a.address << "\n";
    return kExitProblems;
  }
  if (r->status != 202) {
    err << "safeshard daemon-consolidate: safeshardd answered " << r->status << ": " << r->body;
    return kExitProblems;
  }
  out << "queued: " << r->body;
  return kExitOk;
}

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
  if (args.size() > 1 && (args[1] == "dist-consolidate" || args[1] == "save-example" ||
                          args[1] == "load-check")) {
    return RunCompanion(args, err);
  }
  CLI::App app{kDescription, "safeshard"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "Help for every command");

  InspectArgs ia;
  CLI::App* inspect = app.add_subcommand(
      "inspect", "List a checkpoint's tensors: dtype, global shape, parameters, bytes, chunks "
                 "and files; totals by dtype. Reads headers only.");
  inspect->add_option("PATH", ia.path, std::string("Checkpoint: ") + kUrlHelp)->required();
  inspect->add_option("--token", ia.token, kTokenHelp);
  inspect->add_flag("--json", ia.json,
                    "Machine-readable output (schema safeshard.inspect/1, see README)");
  inspect->add_option("--filter", ia.filter, "Only tensors whose name matches this RE2 regex");
  inspect->add_flag("--by-file", ia.by_file,
                    "List each file's tensors with their absolute byte ranges");

  VerifyArgs va;
  CLI::App* verify = app.add_subcommand(
      "verify", "Check a checkpoint from its headers: every file valid, every tensor exactly "
                "covered by its chunks (no gap, no overlap), dtypes agree, shard ranks dense, "
                "index json and completion manifest consistent. Prints one problem per line and "
                "what proves the checkpoint complete (or that nothing does: a lost highest rank "
                "is invisible in the other ranks' headers); exit 0 clean, 1 problems.");
  verify->add_option("PATH", va.path, std::string("Checkpoint: ") + kUrlHelp)->required();
  verify->add_option("--token", va.token, kTokenHelp);
  verify->add_flag("--json", va.json, "Machine-readable report (schema safeshard.verify/1)");
  verify->add_option("--expect-ranks", va.expect_ranks,
                     "The checkpoint must hold shard files of exactly ranks 0..N-1 (the job's "
                     "world size): proves no trailing rank was lost")
      ->check(CLI::Range(1, 1 << 20));
  verify->add_option("--reference", va.reference,
                     "Model directory (e.g. the HF model the run started from) whose tensor "
                     "names and shapes this checkpoint must match: a proof of completeness");
  verify->add_flag("--strict", va.strict,
                   "Completeness that cannot be proven is a problem (exit 1), not a note");
  verify->add_flag("--checksums", va.checksums,
                   "Re-read every file and compare its XXH3-64 (and each tensor's) with "
                   "safeshard.complete.json");

  ExampleArgs ea;
  CLI::App* example = app.add_subcommand(
      "make-example", "Write a generated transformer-shaped checkpoint as per-rank DCP shards "
                      "(the layout PyTorch's HuggingFaceStorageWriter writes with "
                      "save_sharded=True): row, column and 2-D mesh sharded tensors, several "
                      "dtypes, a 0-d scalar.");
  example->add_option("OUT", ea.out, "Output directory (created)")->required();
  example->add_option("--ranks", ea.ranks, "Number of ranks (files)")
      ->capture_default_str()->check(CLI::Range(1, 4096));
  example->add_option("--layers", ea.layers, "Transformer layers")
      ->capture_default_str()->check(CLI::Range(0, 100000));
  example->add_option("--hidden", ea.hidden, "Hidden size")
      ->capture_default_str()->check(CLI::Range(uint64_t{1}, uint64_t{1} << 20));
  example->add_option("--vocab", ea.vocab, "Vocabulary size")
      ->capture_default_str()->check(CLI::Range(uint64_t{1}, uint64_t{1} << 24));
  example->add_option("--mesh-rows", ea.mesh_rows, "Rows of the 2-D device mesh (divides ranks)")
      ->capture_default_str();
  example->add_option("--gap", ea.gap,
                      "TENSOR:RANK: leave out that rank's chunk (a deliberate coverage gap)");
  example->add_flag("--force", ea.force, "Overwrite an existing checkpoint in OUT");
  example->add_flag("--pytorch-newest", ea.newest,
                    "PyTorch's newest layout: logical_fqn and global_shape in every "
                    "DCP_SHARDING_INFO entry");
  example->add_flag("--strided", ea.strided,
                    "Strided FSDP2+TP sharding: two row blocks of a layer tensor per rank file, "
                    "under physical keys {fqn}.__dcp_shard_{k} (implies logical_fqn)");
  example->add_flag("--manifest", ea.manifest,
                    "Also publish safeshard.complete.json with checksums (as safeshard's own "
                    "writer and save-example do)");
  example->add_option("--many", ea.many,
                      "Instead of the transformer, N small replicated F32 [4, 4] tensors spread "
                      "over the ranks (for scan benchmarks)")
      ->check(CLI::Range(1, 100000000));

  ConsolidateArgs ca;
  CLI::App* consolidate = app.add_subcommand(
      "consolidate",
      "Merge per-rank DCP shards (or any checkpoint) into the HF layout: "
      "model-IIIII-of-NNNNN.safetensors + model.safetensors.index.json. Refuses incomplete "
      "checkpoints before writing; streams runs from the mapped inputs; publishes atomically "
      "(the index is written last).");
  consolidate->add_option("IN", ca.in, std::string("Checkpoint (per-rank shards): ") + kUrlHelp)->required();
  consolidate->add_option("--token", ca.token, kTokenHelp);
  consolidate->add_option("OUT", ca.out, "Output directory (created)")->required();
  consolidate->add_option("--mapping", ca.mapping,
                          "JSON file {\"fqn\": file_index} choosing each tensor's output file");
  consolidate->add_option("--reference", ca.reference,
                          "HF model directory whose index json (or files) choose output files");
  consolidate->add_option("--max-shard-size", ca.max_shard_size,
                          "Split outputs at this size, e.g. 5GB or 500MiB (save_pretrained rules)");
  consolidate->add_option("--unmapped", ca.unmapped,
                          "Tensors missing from the mapping: error (default), first, own-file");
  consolidate->add_option("--threads", ca.threads, "Copy threads (default: all cores)")
      ->check(CLI::Range(0, 1024));
  consolidate->add_option("--cast-dtype", ca.cast_dtype,
                          "Convert floating-point tensors (never FP8) to bf16, f16, f32 or f64");
  consolidate->add_flag("--restore-dtypes", ca.restore_dtypes,
                        "Convert tensors back to the dtypes of the --reference model");
  consolidate->add_option("--key-map", ca.key_map,
                          "JSON rules [[\"regex\", \"replacement\"], ...] renaming output keys");
  consolidate->add_option("--metadata", ca.metadata, "KEY=VALUE added to __metadata__ (repeatable)");
  consolidate->add_flag("--diffusers", ca.diffusers,
                        "Name outputs diffusion_pytorch_model-*.safetensors (+ its index)");
  consolidate->add_flag("--verify", ca.verify,
                        "Re-read the output and compare it with the inputs (checksums)");
  consolidate->add_flag("--overwrite", ca.overwrite, "Replace an existing checkpoint in OUT");
  consolidate->add_option("--expect-ranks", ca.expect_ranks,
                          "Refuse unless IN holds shard files of exactly ranks 0..N-1 (the job's "
                          "world size): proves no trailing rank was lost")
      ->check(CLI::Range(1, 1 << 20));
  consolidate->add_flag("--strict", ca.strict,
                        "Refuse IN when its completeness cannot be proven (no manifest, no "
                        "global_shape, no --expect-ranks)");
  consolidate->add_flag("--no-checksums", ca.no_checksums,
                        "Do not publish safeshard.complete.json with the outputs' XXH3-64 "
                        "checksums (saves one read of the outputs)");
  consolidate->add_flag("--json", ca.json, "Print the result as JSON (no progress bar)");

  RemapArgs ra;
  CLI::App* remap = app.add_subcommand(
      "remap",
      "Rename tensors by ordered regex rules (first matching rule wins, Python re.subn "
      "semantics, \\1 back-references) into a new checkpoint; bytes are copied, never "
      "re-encoded. Two keys mapping to one name are refused.");
  remap->add_option("IN", ra.in, std::string("Checkpoint: ") + kUrlHelp)->required();
  remap->add_option("--token", ra.token, kTokenHelp);
  remap->add_option("OUT", ra.out, "Output directory (omit with --in-place)");
  remap->add_option("--rule", ra.rules, "'REGEX=>REPLACEMENT' (repeatable, in order)");
  remap->add_option("--rules", ra.rules_file, "JSON rules file: [[regex, replacement], ...]");
  remap->add_flag("--dry-run", ra.dry_run, "Print the old -> new table, write nothing");
  remap->add_flag("--in-place", ra.in_place,
                  "Rewrite IN itself (each file via a temporary file and a rename)");
  remap->add_flag("--overwrite", ra.overwrite, "Replace an existing checkpoint in OUT");

  DaemonArgs da;
  da.address = DefaultDaemonAddress();
  da.token_file = DefaultTokenFile();
  DiffArgs dfa;
  CLI::App* diff = app.add_subcommand(
      "diff", "Compare two checkpoints of any layouts (per-rank shards, HF-sharded, single file) tensor by "
              "tensor: names, dtypes, global shapes and every byte (read straight from the mapped files). "
              "Prints each difference (for values: how many elements differ, the first one and both of its "
              "values); exit 0 identical, 1 different.");
  diff->add_option("A", dfa.a, std::string("First checkpoint: ") + kUrlHelp)->required();
  diff->add_option("B", dfa.b, "Second checkpoint (same forms)")->required();
  diff->add_option("--token", dfa.token, kTokenHelp);
  diff->add_flag("--headers-only", dfa.headers_only, "Compare names, dtypes and shapes only; read no tensor data");
  diff->add_option("--filter", dfa.filter, "Only tensors whose name matches this RE2 regex");
  diff->add_option("--threads", dfa.threads, "Tensors compared at once")->capture_default_str()->check(CLI::Range(1, 256));
  diff->add_option("--max-lines", dfa.max_lines, "Differences printed at most (0: all)")->capture_default_str()->check(CLI::NonNegativeNumber);
  diff->add_option("--atol", dfa.atol,
                   "Absolute tolerance for float tensors (as numpy.isclose: |a-b| <= atol + rtol*|b|; NaN equals NaN). "
                   "With --atol or --rtol, float tensors are compared by value, also across float dtypes")
      ->check(CLI::NonNegativeNumber);
  diff->add_option("--rtol", dfa.rtol, "Relative tolerance for float tensors (see --atol)")->check(CLI::NonNegativeNumber);
  diff->add_option("--expect-ranks", dfa.expect_ranks,
                   "A side made of per-rank shards must hold exactly ranks 0..N-1")
      ->check(CLI::Range(1, 1 << 20));
  diff->add_flag("--json", dfa.json, "Machine-readable report (schema safeshard.diff/1; every difference)");

  CLI::App* runs = app.add_subcommand("runs", "List the runs safeshardd knows, with their state");
  CLI::App* jobs = app.add_subcommand("jobs", "List safeshardd's jobs with state and progress");
  CLI::App* dcons = app.add_subcommand(
      "daemon-consolidate", "Ask safeshardd to consolidate a run (by id or path) now");
  dcons->add_option("RUN", da.run, "Run id (from `safeshard runs`) or its path")->required();
  for (CLI::App* sub : {runs, jobs, dcons}) {
    sub->add_option("--daemon", da.address,
                    "safeshardd's address (default $SAFESHARD_DAEMON or 127.0.0.1:8470)");
    sub->add_flag("--json", da.json, "Print the daemon's JSON answer");
  }
  dcons->add_option("--token-file", da.token_file, "API token file (default ~/.config/safeshard/token)");

  app.footer(
      "Torch commands (run through the companion binary safeshard-torch):\n"
      "  dist-consolidate IN OUT --ranks R   consolidate with R processes over c10d (Gloo)\n"
      "  save-example OUT --ranks R          R processes save a generated model over Gloo with\n"
      "                                      the HF storage writer (shards + completion manifest)\n"
      "  load-check DIR --ranks R --layout col|row|mesh   load into another sharding, verify");
  bool known = args.size() < 2 || args[1].empty() || args[1][0] == '-';
  for (const CLI::App* sub : app.get_subcommands({})) known |= args.size() > 1 && sub->check_name(args[1]);
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
  if (inspect->parsed()) return RunInspect(ia, out, err);
  if (verify->parsed()) return RunVerify(va, out, err);
  if (example->parsed()) return RunMakeExample(ea, out, err);
  if (consolidate->parsed()) return RunConsolidate(ca, out, err);
  if (remap->parsed()) return RunRemap(ra, out, err);
  if (diff->parsed()) {
    dfa.by_value = diff->count("--atol") > 0 || diff->count("--rtol") > 0;
    return RunDiff(dfa, out, err);
  }
  if (runs->parsed()) return RunRuns(da, out, err);
  if (jobs->parsed()) return RunJobs(da, out, err);
  if (dcons->parsed()) return RunDaemonConsolidate(da, out, err);
  err << app.help();
  return kExitUsage;
}

}  // namespace safeshard
