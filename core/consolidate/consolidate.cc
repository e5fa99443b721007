// Consolidation engine. Crash-safe protocol (rank 0 owns the output directory):
//   1. every rank scans the input headers and builds the same plan; any rank's planning error
//      is shared with all ranks before a byte is written;
//   2. rank 0 checks the output directory (refuses an existing result unless overwriting,
//      removes temporary files of dead processes), creates every output file under a temporary
//      name at its final size and writes its header;
//   3. every rank copies its share of the runs (balanced by bytes) into the temporary files and
//      fsyncs them; statuses are all-gathered, so a failure anywhere reaches every rank;
//   4. with verify, every rank re-reads what it wrote and compares checksums;
//   5. rank 0 renames the files into place, fsyncs the directory, and publishes the index json
//      last: a directory with an index is complete; a crash before leaves no index.
#include "core/consolidate/consolidate.h"

#include "core/io/sigbus_guard.h"
#include "core/util/parallel.h"

#include "core/format/manifest.h"

#include <sys/resource.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <list>
#include <map>
#include <memory>
#include <numeric>
#include <set>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "core/consolidate/dtype_cast.h"
#include "core/format/filenames.h"
#include "core/format/index_json.h"
#include "core/format/internal/json_util.h"
#include "core/io/atomic_file.h"
#include "core/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace safeshard {
namespace {

using Clock = std::chrono::steady_clock;
constexpr uint64_t kPieceBytes = 16ull << 20;  // work item size
constexpr uint64_t kCastBuffer = 1ull << 20;   // conversion buffer per thread
constexpr uint64_t kSmallRun = 1ull << 20;     // runs below this are memcpy'd into a mapping

uint64_t Mix(uint64_t h, uint64_t w) {
  h ^= w + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
  h *= 0xBF58476D1CE4E5B9ull;
  return h ^ (h >> 31);
}

// Fast 64-bit checksum of a byte stream: the same value however the stream is cut into Update
// calls (a converted run is hashed piece by piece as it is written, and whole when Verify reads
// it back). Allocation-free: Update runs under GuardMappedAccess.
struct Checksum {
  uint64_t h = 0x84222325CBF29CE4ull;
  uint64_t pending = 0;  // the bytes of an unfinished 8-byte word, little-endian
  unsigned npending = 0;
  uint64_t length = 0;
  void Update(const char* p, size_t n) {
    length += n;
    size_t i = 0;
    while (npending != 0 && i < n) {
      pending |= static_cast<uint64_t>(static_cast<uint8_t>(p[i++])) << (8 * npending);
      if (++npending == 8) {
        h = Mix(h, pending);
        pending = 0;
        npending = 0;
      }
    }
    for (; i + 8 <= n; i += 8) {
      uint64_t w;
      std::memcpy(&w, p + i, 8);
      h = Mix(h, w);
    }
    for (; i < n; ++i, ++npending)
      pending |= static_cast<uint64_t>(static_cast<uint8_t>(p[i])) << (8 * npending);
  }
  uint64_t Digest() const { return Mix(Mix(h, pending), length); }
};

uint64_t BitsToBytes(uint64_t elems, DType t) {
  return elems * BitsOf(t) / 8;
}

struct WorkItem {
  uint32_t task;
  uint64_t run_begin, run_end;    // runs [run_begin, run_end)
  uint64_t elem_begin, elem_end;  // elements within each run
  uint64_t src_bytes;
};

std::vector<WorkItem> SplitIntoItems(const std::vector<CopyTask>& tasks) {
  std::vector<WorkItem> items;
  for (uint32_t t = 0; t < tasks.size(); ++t) {
    const CopyTask& c = tasks[t];
    const uint64_t run_bytes = BitsToBytes(c.run_elems, c.src_dtype);
    if (run_bytes >= kPieceBytes) {
      // Big runs: split each run by elements (sub-byte ones, e.g. MXFP4 codes, at multiples of
      // 64 elements: pieces start on a byte and on a 32-value block).
      const uint64_t bits = BitsOf(c.src_dtype);
      uint64_t per = std::max<uint64_t>(1, kPieceBytes * 8 / bits);
      if (IsSubByte(c.src_dtype)) per = std::max<uint64_t>(64, per - per % 64);
      for (uint64_t r = 0; r < c.runs; ++r) {
        for (uint64_t e = 0; e < c.run_elems; e += per) {
          uint64_t e2 = std::min(c.run_elems, e + per);
          items.push_back({t, r, r + 1, e, e2, (e2 - e) * bits / 8});
        }
      }
    } else {
      const uint64_t per_item =
          std::max<uint64_t>(1, kPieceBytes / std::max<uint64_t>(1, run_bytes));
      for (uint64_t r = 0; r < c.runs; r += per_item) {
        uint64_t r2 = std::min(c.runs, r + per_item);
        items.push_back({t, r, r2, 0, c.run_elems, (r2 - r) * run_bytes});
      }
    }
  }
  return items;
}

// Deterministic balanced assignment of items to ranks by bytes (largest first, to the least
// loaded rank). Returns, per rank, the item indices in plan order.
std::vector<std::vector<size_t>> AssignToRanks(const std::vector<WorkItem>& items, int world) {
  std::vector<size_t> order(items.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return items[a].src_bytes > items[b].src_bytes; });
  std::vector<uint64_t> load(world, 0);
  std::vector<std::vector<size_t>> out(world);
  for (size_t i : order) {
    int r = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
    load[r] += items[i].src_bytes + 1;
    out[r].push_back(i);
  }
  for (auto& v : out) std::sort(v.begin(), v.end());
  return out;
}

std::string OutputFileName(int index, int count, bool diffusers) {
  std::string n = ModelFileName(index, count);
  if (diffusers) n = "diffusion_pytorch_model" + n.substr(5);
  return n;
}

}  // namespace

uint64_t CopyTask::src_bytes() const {
  return BitsToBytes(run_elems * runs, src_dtype);
}
uint64_t CopyTask::dst_bytes() const {
  return BitsToBytes(run_elems * runs, dst_dtype);
}

uint64_t CopyTask::DstElemOfRun(uint64_t r) const {
  // Decompose r over dims [0, split_dim) with extents sizes[d], innermost last.
  if (shape.empty()) return 0;
  uint64_t elem = offsets[split_dim] * gstride[split_dim];
  for (size_t d = split_dim; d-- > 0;) {
    uint64_t i = r % sizes[d];
    r /= sizes[d];
    elem += (offsets[d] + i) * gstride[d];
  }
  return elem;
}

absl::StatusOr<uint64_t> ParseByteSize(absl::string_view text) {
  std::string s = absl::AsciiStrToUpper(absl::StripAsciiWhitespace(text));
  struct Unit {
    const char* suffix;
    double mult;
  };
  const Unit units[] = {{"TIB", 1099511627776.0},
                        {"GIB", 1073741824.0},
                        {"MIB", 1048576.0},
                        {"KIB", 1024.0},
                        {"TB", 1e12},
                        {"GB", 1e9},
                        {"MB", 1e6},
                        {"KB", 1e3},
                        {"B", 1}};
  double mult = 1;
  absl::string_view num = s;
  for (const Unit& u : units) {
    if (absl::EndsWith(s, u.suffix)) {
      mult = u.mult;
      num = absl::string_view(s).substr(0, s.size() - strlen(u.suffix));
      break;
    }
  }
  double v;
  if (!absl::SimpleAtod(absl::StripAsciiWhitespace(num), &v) || v <= 0 || v * mult > 1.8e19) {
    return absl::InvalidArgumentError(absl::StrCat(
        "size \"", text,
        "\" is not a positive size such as 5GB (5*10^9 bytes), 500MiB (500*2^20) or 123B"));
  }
  return static_cast<uint64_t>(v * mult);
}

absl::StatusOr<std::map<std::string, int>> ParseMappingJson(absl::string_view json,
                                                            absl::string_view file) {
  nlohmann::json root;
  internal::StrictParseResult pr = internal::ParseJsonStrict(json.begin(), json.end(), &root);
  if (!pr.ok) return absl::InvalidArgumentError(absl::StrCat(file, ": not valid JSON: ", pr.error));
  if (pr.duplicate) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": tensor ", internal::Quote(*pr.duplicate), " listed twice"));
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": expected an object {\"fqn\": file_index, ...}"));
  }
  std::map<std::string, int> out;
  for (auto it = root.begin(); it != root.end(); ++it) {
    uint64_t v;
    if (!internal::ReadU64(it.value(), &v) || v < 1 || v > 99999) {
      return absl::InvalidArgumentError(absl::StrCat(file, ": tensor ", internal::Quote(it.key()),
                                                     ": file index ", it.value().dump(),
                                                     " is not in 1..99999"));
    }
    out[it.key()] = static_cast<int>(v);
  }
  return out;
}

absl::StatusOr<std::map<std::string, int>> MappingFromReference(
    FileSystem& fs, const std::string& dir, std::vector<std::string>* warnings) {
  ASSIGN_OR_RETURN(CheckpointLayout ref, CheckpointLayout::Scan(fs, dir));
  std::map<std::string, int> out;
  if (ref.index()) {
    std::vector<std::string> names;
    for (const auto& [fqn, f] : ref.index()->weight_map) names.push_back(f);
    FileIndexAssignment a = AssignFileIndices(names);
    if (a.warning && warnings) warnings->push_back(absl::StrCat(dir, ": ", *a.warning));
    for (const auto& [fqn, f] : ref.index()->weight_map) out[fqn] = a.index_of.at(f);
    return out;
  }
  if (ref.files().empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(dir, ": reference model has no index json and no .safetensors files"));
  }
  std::vector<std::string> names;
  for (const FileInfo& f : ref.files()) names.push_back(f.name);
  FileIndexAssignment a = AssignFileIndices(names);
  if (a.warning && warnings) warnings->push_back(absl::StrCat(dir, ": ", *a.warning));
  for (const FileInfo& f : ref.files()) {
    if (!f.header) return absl::DataLossError(*f.error);
    for (const TensorEntry& t : f.header->tensors) out[t.name] = a.index_of.at(f.name);
  }
  return out;
}

absl::StatusOr<std::map<std::string, DType>> DTypesFromReference(FileSystem& fs,
                                                                 const std::string& dir) {
  ASSIGN_OR_RETURN(CheckpointLayout ref, CheckpointLayout::Scan(fs, dir));
  std::map<std::string, DType> out;
  for (const FileInfo& f : ref.files()) {
    if (!f.header) return absl::DataLossError(*f.error);
  }
  for (const TensorLayout& t : ref.tensors()) out[t.name] = t.dtype;
  if (out.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(dir, ": reference model holds no tensors"));
  }
  return out;
}

absl::StatusOr<std::optional<std::string>> ReadModelConfig(FileSystem& fs,
                                                           const std::string& root) {
  const std::string path = JoinPath(root, "config.json");
  absl::StatusOr<std::unique_ptr<ReadableFile>> f = fs.OpenRead(path);
  if (!f.ok()) {
    if (absl::IsNotFound(f.status())) return std::optional<std::string>();
    return f.status();
  }
  constexpr uint64_t kMax = 16 << 20;
  if ((*f)->size() > kMax) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", (*f)->size(), " bytes is too large for a model config"));
  }
  std::string text((*f)->size(), '\0');
  if (!text.empty()) RETURN_IF_ERROR((*f)->ReadAt(0, text.size(), text.data()));
  return std::optional<std::string>(std::move(text));
}

absl::StatusOr<std::string> DequantizedConfig(absl::string_view config_json, DType dtype) {
  nlohmann::ordered_json j = nlohmann::ordered_json::parse(config_json.begin(), config_json.end(),
                                                           nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(
        "config.json is not a JSON object, so its quantization_config cannot be removed");
  }
  const char* torch_name = dtype == DType::kBF16  ? "bfloat16"
                           : dtype == DType::kF16 ? "float16"
                                                  : "float32";
  j.erase("quantization_config");
  j["torch_dtype"] = torch_name;
  if (j.contains("dtype")) j["dtype"] = torch_name;  // transformers >= 4.56 spells it so
  return j.dump(2) + "\n";
}

absl::StatusOr<ConsolidationPlan> PlanConsolidation(const CheckpointLayout& layout,
                                                    const ConsolidateOptions& o,
                                                    const std::string* config_json) {
  ConsolidationPlan plan;
  plan.input_root = layout.root();
  if (layout.files().empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat(layout.root(), ": no .safetensors files to consolidate"));
  }
  std::vector<std::string> blocking;
  for (const Problem& p : layout.problems()) {
    if (IsBlocking(p.kind)) {
      blocking.push_back(p.ToString());
    } else {
      plan.warnings.push_back(p.ToString());
    }
  }
  if (blocking.empty() && layout.tensors().empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat(layout.root(), ": the checkpoint's ", layout.files().size(),
                     " file(s) hold no tensors; there is nothing to consolidate"));
  }
  if (!blocking.empty()) {
    size_t n = blocking.size();
    if (n > 10) blocking.resize(10);
    return absl::FailedPreconditionError(absl::StrCat(
        layout.root(), ": refusing to consolidate, the checkpoint is incomplete or inconsistent (",
        n, " problem", n == 1 ? "" : "s", "; nothing was written):\n  ",
        absl::StrJoin(blocking, "\n  "), n > 10 ? "\n  ..." : ""));
  }
  if (o.fqn_to_index && o.max_shard_size) {
    return absl::InvalidArgumentError("choose either a file mapping or a maximum shard size");
  }
  for (const FileInfo& f : layout.files()) {
    plan.inputs.push_back(JoinPath(layout.root(), f.name));
    plan.input_ids.push_back(f.header ? IdentityOf(f) : ScannedIdentity{});
  }

  // What is written: every tensor, except that when dequantizing a quantized pair becomes one
  // output tensor (its weight's chunks, decoded) and its scale is read, not written.
  struct OutTensor {
    const TensorLayout* src;
    std::string logical;          // the name before key mapping (X for X_blocks)
    std::vector<uint64_t> shape;  // the output's
    const quant::QuantPair* pair = nullptr;
  };
  std::vector<OutTensor> outs;
  quant::Pairing pairing;
  if (o.dequantize) {
    if (!quant::IsDequantizeTarget(*o.dequantize)) {
      return absl::InvalidArgumentError(absl::StrCat("--dequantize ", DTypeName(*o.dequantize),
                                                     ": only BF16, F16 and F32 are targets"));
    }
    quant::BlockSize block;
    if (o.block_size) {
      block = *o.block_size;
    } else if (config_json != nullptr) {
      absl::StatusOr<std::optional<quant::BlockSize>> b = quant::BlockSizeFromConfig(*config_json);
      if (!b.ok()) {
        return absl::FailedPreconditionError(
            absl::StrCat(JoinPath(layout.root(), "config.json"), ": ", b.status().message()));
      }
      if (b->has_value()) block = **b;
    }
    std::vector<quant::TensorDesc> descs;
    for (const TensorLayout& t : layout.tensors()) descs.push_back({t.name, t.dtype, t.shape});
    pairing = quant::FindPairs(descs, block);
    // Dequantizing needs every quantized weight decodable: a left-over scale or an FP8 weight
    // without one is refused here too (the scan only warns about them).
    std::vector<std::string> shown;
    for (const quant::PairProblem& q : pairing.problems) shown.push_back(q.message);
    for (const std::string& w : pairing.unscaled_fp8) {
      shown.push_back(absl::StrCat("FP8 weight ", internal::Quote(w), " has no scale ",
                                   internal::Quote(w + "_scale_inv")));
    }
    if (!shown.empty()) {
      const size_t n = shown.size();
      if (n > 10) shown.resize(10);
      return absl::FailedPreconditionError(absl::StrCat(
          layout.root(), ": cannot dequantize (", n, " problem", n == 1 ? "" : "s",
          "; nothing was written):\n  ", absl::StrJoin(shown, "\n  "), n > 10 ? "\n  ..." : ""));
    }
    if (pairing.pairs.empty()) {
      plan.warnings.push_back(
          "--dequantize: no quantized weights (X.weight + X.weight_scale_inv, X_blocks + "
          "X_scales) in the input; tensors are copied as they are");
    }
  }
  {
    std::map<std::string, const quant::QuantPair*> by_weight;
    std::set<std::string> scales;
    for (const quant::QuantPair& q : pairing.pairs) {
      by_weight[q.weight] = &q;
      scales.insert(q.scale);
    }
    for (const TensorLayout& t : layout.tensors()) {
      if (scales.count(t.name)) continue;
      auto q = by_weight.find(t.name);
      if (q == by_weight.end()) {
        outs.push_back({&t, t.name, t.shape, nullptr});
      } else {
        outs.push_back({&t, q->second->output, q->second->output_shape, q->second});
        plan.dequantized.push_back(q->second->output);
      }
    }
    if (o.dequantize && config_json != nullptr && !pairing.pairs.empty()) {
      absl::StatusOr<std::string> cfg = DequantizedConfig(*config_json, *o.dequantize);
      if (!cfg.ok()) {
        return absl::FailedPreconditionError(
            absl::StrCat(JoinPath(layout.root(), "config.json"), ": ", cfg.status().message()));
      }
      plan.config_json = std::move(*cfg);
    }
  }
  const size_t n_tensors = outs.size();

  // Output names.
  std::vector<std::string> src_names;
  for (const OutTensor& t : outs) src_names.push_back(t.logical);
  std::map<std::string, std::string> out_name;
  if (o.key_map != nullptr && !o.key_map->empty()) {
    ASSIGN_OR_RETURN(out_name, o.key_map->MapAll(src_names));
  } else {
    for (const std::string& n : src_names) out_name[n] = n;
  }

  // Output dtypes.
  std::vector<DType> dst_dtype(n_tensors);
  for (size_t i = 0; i < n_tensors; ++i) {
    const TensorLayout& t = *outs[i].src;
    if (outs[i].pair != nullptr) {
      dst_dtype[i] = *o.dequantize;
      continue;
    }
    DType d = t.dtype;
    auto m = o.fqn_to_dtype.find(out_name[t.name]);
    if (m == o.fqn_to_dtype.end()) m = o.fqn_to_dtype.find(t.name);
    if (m != o.fqn_to_dtype.end()) {
      d = m->second;
    } else if (o.cast_dtype && IsFloatingPoint(t.dtype) && CanCast(t.dtype, *o.cast_dtype)) {
      d = *o.cast_dtype;
    }
    bool relabel_fp8 = (t.dtype == DType::kU8 || t.dtype == DType::kI8) && IsFloat8(d);
    if (d != t.dtype && !relabel_fp8 && !CanCast(t.dtype, d)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor ", internal::Quote(t.name), ": cannot convert ", DTypeName(t.dtype), " to ",
          DTypeName(d), " (only F64/F32/F16/BF16 convert; FP8 and integers never)"));
    }
    dst_dtype[i] = d;
  }
  if (o.cast_dtype && !CanCast(DType::kF32, *o.cast_dtype)) {
    return absl::InvalidArgumentError(absl::StrCat("--cast-dtype ", DTypeName(*o.cast_dtype),
                                                   ": only F64, F32, F16 and BF16 are targets"));
  }

  // File assignment.
  std::vector<int> file_of(n_tensors, 1);
  if (o.fqn_to_index) {
    std::set<std::string> used;
    int max_index = 0;
    for (const auto& [k, v] : *o.fqn_to_index) max_index = std::max(max_index, v);
    std::vector<std::string> unmapped;
    for (size_t i = 0; i < n_tensors; ++i) {
      const std::string& src = outs[i].logical;
      auto it = o.fqn_to_index->find(out_name[src]);
      if (it == o.fqn_to_index->end()) it = o.fqn_to_index->find(src);
      // A mapping of the quantized model names X_blocks for MXFP4's X.
      if (it == o.fqn_to_index->end() && outs[i].pair != nullptr)
        it = o.fqn_to_index->find(outs[i].pair->weight);
      if (it == o.fqn_to_index->end()) {
        unmapped.push_back(src);
        file_of[i] = -1;
        continue;
      }
      used.insert(it->first);
      file_of[i] = it->second;
    }
    if (!unmapped.empty()) {
      if (o.unmapped == UnmappedPolicy::kError) {
        size_t n = unmapped.size();
        if (n > 5) unmapped.resize(5);
        return absl::InvalidArgumentError(
            absl::StrCat(n, " tensor", n == 1 ? " is" : "s are", " not in the file mapping (",
                         absl::StrJoin(unmapped, ", "), n > 5 ? ", ..." : "",
                         "); pass --unmapped=first or --unmapped=own-file to place them"));
      }
      int next = std::max(max_index, 1);
      for (size_t i = 0; i < n_tensors; ++i) {
        if (file_of[i] != -1) continue;
        file_of[i] = o.unmapped == UnmappedPolicy::kFirst ? 1 : ++next;
      }
      plan.warnings.push_back(absl::StrCat(
          unmapped.size(), " tensor(s) not in the mapping placed ",
          o.unmapped == UnmappedPolicy::kFirst ? "in file 1" : "in files of their own"));
    }
    size_t dropped = 0;
    std::string example;
    for (const quant::QuantPair& q : pairing.pairs) used.insert(q.scale);  // decoded, not written
    for (const auto& [k, v] : *o.fqn_to_index) {
      if (!used.count(k)) {
        if (dropped++ == 0) example = k;
      }
    }
    if (dropped > 0) {
      plan.warnings.push_back(absl::StrCat(
          dropped, " mapping entr", dropped == 1 ? "y has" : "ies have",
          " no data and were dropped (tied weights?), e.g. ", internal::Quote(example)));
    }
  } else if (o.max_shard_size) {
    // huggingface_hub's split_torch_state_dict_into_shards: a tensor over the limit becomes a
    // shard of its own at once; the others fill the current shard, which is closed when the
    // next tensor would tip it over the limit.
    int next = 1;
    int cur = 0;  // 0: no current shard yet
    uint64_t cur_size = 0;
    std::vector<size_t> cur_members;
    for (size_t i = 0; i < n_tensors; ++i) {
      uint64_t bytes = ByteSizeOf(dst_dtype[i], outs[i].shape).value_or(0);
      if (bytes > *o.max_shard_size) {
        file_of[i] = next++;
        continue;
      }
      if (cur != 0 && cur_size + bytes > *o.max_shard_size) {
        for (size_t m : cur_members) file_of[m] = next;
        ++next;
        cur = 0;
        cur_size = 0;
        cur_members.clear();
      }
      cur = 1;
      cur_size += bytes;
      cur_members.push_back(i);
    }
    for (size_t m : cur_members) file_of[m] = next;
  }
  int count = *std::max_element(file_of.begin(), file_of.end());
  std::map<int, std::vector<size_t>> by_file;
  for (size_t i = 0; i < n_tensors; ++i) by_file[file_of[i]].push_back(i);

  std::map<std::string, std::string> metadata = o.metadata;
  metadata["format"] = "pt";
  std::map<int, int> plan_index;  // file index -> outputs[] position
  for (const auto& [idx, members] : by_file) {
    std::vector<TensorSpec> specs;
    for (size_t i : members)
      specs.push_back({out_name[outs[i].logical], dst_dtype[i], outs[i].shape});
    OutputFilePlan f;
    f.name = OutputFileName(idx, count, o.diffusers_index);
    ASSIGN_OR_RETURN(f.header, LayoutHeader(std::move(specs), metadata));
    plan_index[idx] = static_cast<int>(plan.outputs.size());
    plan.outputs.push_back(std::move(f));
  }

  // Scale sources of the dequantized weights.
  std::map<std::string, int> scale_index;
  for (const quant::QuantPair& q : pairing.pairs) {
    const TensorLayout* st = layout.FindTensor(q.scale);
    if (st == nullptr) return absl::InternalError(absl::StrCat("scale ", q.scale, " vanished"));
    ScaleSource src;
    src.name = q.scale;
    src.scheme = q.scheme;
    src.dtype = q.scale_dtype;
    src.shape = q.scale_shape;
    src.chunks = st->chunks;
    src.block = q.block;
    scale_index[q.weight] = static_cast<int>(plan.scales.size());
    plan.scales.push_back(std::move(src));
  }

  // Copy tasks.
  for (size_t i = 0; i < n_tensors; ++i) {
    const TensorLayout& t = *outs[i].src;
    const quant::QuantPair* q = outs[i].pair;
    const int of = plan_index[file_of[i]];
    const OutputFilePlan& f = plan.outputs[of];
    const std::string& name = out_name[outs[i].logical];
    const TensorEntry* e = f.header.Find(name);
    plan.weight_map[name] = f.name;
    plan.total_size += e->size();
    plan.total_parameters += NumElements(e->shape).value_or(0);
    for (const Chunk& c : t.chunks) {
      uint64_t n = 1;
      for (uint64_t s : c.sizes) n *= s;
      if (n == 0) continue;  // empty local shard
      CopyTask task;
      task.input_file = c.file;
      task.src_begin = c.begin;
      task.output_file = of;
      task.dst_begin = f.header.data_start() + e->begin;
      task.src_dtype = q != nullptr ? q->code_dtype : t.dtype;
      task.dst_dtype = dst_dtype[i];
      task.offsets = c.offsets;
      task.sizes = c.sizes;
      task.shape = outs[i].shape;
      task.tensor = name;
      if (q != nullptr) {
        task.scale = scale_index.at(q->weight);
        if (q->scheme == quant::Scheme::kMxfp4) {
          // [..., G, 16] bytes are the [..., G * 32] codes; a chunk must hold whole blocks.
          if (c.offsets.back() != 0 || c.sizes.back() != 16) {
            return absl::FailedPreconditionError(absl::StrCat(
                layout.files()[c.file].name, ": tensor ", internal::Quote(t.name),
                ": a chunk at offsets [", absl::StrJoin(c.offsets, ", "),
                "] splits MXFP4 blocks (its last dimension is ", c.sizes.back(), " of 16 bytes)"));
          }
          task.offsets.pop_back();
          task.sizes.pop_back();
          task.offsets.back() *= 32;
          task.sizes.back() *= 32;
        }
      }
      const int rank = static_cast<int>(task.shape.size());
      int k = 0;
      for (int d = rank - 1; d >= 0; --d) {
        if (task.sizes[d] != task.shape[d]) {
          k = d;
          break;
        }
      }
      task.split_dim = k;
      task.gstride.assign(rank, 1);
      for (int d = rank - 1; d > 0; --d) task.gstride[d - 1] = task.gstride[d] * task.shape[d];
      task.run_elems = 1;
      task.runs = 1;
      for (int d = 0; d < rank; ++d) {
        if (d < k) {
          task.runs *= task.sizes[d];
        } else {
          task.run_elems *= task.sizes[d];
        }
      }
      if (IsSubByte(task.src_dtype) || IsSubByte(task.dst_dtype)) {
        const uint64_t bits = BitsOf(task.src_dtype);
        bool aligned = (task.run_elems * bits) % 8 == 0 && (task.DstElemOfRun(0) * bits) % 8 == 0;
        for (int d = 0; d < k; ++d) aligned &= (task.gstride[d] * bits) % 8 == 0;
        if (!aligned) {
          return absl::InvalidArgumentError(absl::StrCat(
              "tensor ", internal::Quote(t.name), ": a ", DTypeName(task.src_dtype),
              " chunk at offsets [", absl::StrJoin(c.offsets, ", "),
              "] does not start on a byte boundary in the output; sub-byte chunks must be "
              "byte-aligned"));
        }
      }
      plan.tasks.push_back(std::move(task));
    }
  }
  plan.index_name = std::string(o.diffusers_index ? kDiffusersIndexFileName : kIndexFileName);
  return plan;
}

namespace {

// `fs` is the output directory itself (FileSystem::OpenBeneath); `out` names it in messages.
absl::Status PrepareOutputDir(FileSystem& fs, const ConsolidationPlan& plan, const std::string& out,
                              const ConsolidateOptions& o, std::vector<AtomicFile>* atomics,
                              std::vector<std::string>* warnings) {
  // Only a provable earlier result may be replaced (never per-rank shards, never a file no
  // earlier result claims), and only with --overwrite.
  ASSIGN_OR_RETURN(std::vector<std::string> cleaned, ClearEarlierResult(fs, out, o.overwrite));
  if (!cleaned.empty()) {
    warnings->push_back(absl::StrCat("removed ", cleaned.size(),
                                     " temporary file(s) of an interrupted earlier run in ", out));
  }
  if (plan.config_json && !o.overwrite && fs.Stat("config.json").ok()) {
    // A config.json already in OUT is kept (never replaced without --overwrite); one that still
    // describes the weights as quantized would make transformers decode plain weights again.
    absl::StatusOr<std::unique_ptr<ReadableFile>> f = fs.OpenRead("config.json");
    std::string text;
    if (f.ok() && (*f)->size() <= (16u << 20)) {
      text.resize((*f)->size());
      if (!text.empty() && !(*f)->ReadAt(0, text.size(), text.data()).ok()) text.clear();
    }
    if (!f.ok() || absl::StrContains(text, "\"quantization_config\"")) {
      return absl::FailedPreconditionError(absl::StrCat(
          JoinPath(out, "config.json"),
          " is already there and still describes the model as quantized (quantization_config); "
          "the dequantized weights need the rewritten one: remove it or pass --overwrite"));
    }
  }
  uint64_t total = 0;
  for (const OutputFilePlan& f : plan.outputs) total += f.header.file_size();
  bool space_checked = false;
  for (const OutputFilePlan& f : plan.outputs) {
    ASSIGN_OR_RETURN(AtomicFile a, AtomicFile::Create(fs, f.name));
    // Every output together must fit where nothing is reserved per file (tmpfs).
    if (!space_checked) RETURN_IF_ERROR(a.file().CheckFreeSpace(total));
    space_checked = true;
    RETURN_IF_ERROR(a.file().Allocate(f.header.file_size()));
    RETURN_IF_ERROR(a.file().WriteAt(0, SerializeHeader(f.header)));
    RETURN_IF_ERROR(a.CloseFile());  // the copy opens it again; descriptors stay few
    atomics->push_back(std::move(a));
  }
  return absl::OkStatus();
}

// Inputs opened (and mapped) on demand and kept open up to a bound: a checkpoint of thousands
// of rank files never needs more descriptors than the bound (the soft RLIMIT_NOFILE may be
// 1,024), while a smaller one opens and maps each input exactly once. Every (re)open checks the
// file against what the scan saw.
class InputCache {
 public:
  struct Open {
    std::unique_ptr<ReadableFile> file;
    std::shared_ptr<const MappedRegion> map;
  };
  InputCache(FileSystem& fs, const ConsolidationPlan& plan, size_t capacity)
      : fs_(fs), plan_(plan), capacity_(std::max<size_t>(1, capacity)) {}

  absl::StatusOr<std::shared_ptr<Open>> Get(int f) {
    absl::MutexLock l(&mu_);
    if (auto bad = failed_.find(f); bad != failed_.end()) return bad->second;  // never retried
    if (auto it = open_.find(f); it != open_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second.second);
      return it->second.first;
    }
    while (open_.size() >= capacity_) {  // in-use handles live on in their users' hands
      open_.erase(lru_.back());
      lru_.pop_back();
    }
    absl::StatusOr<MappedInput> in = MapUnchanged(fs_, plan_.inputs[f], plan_.input_ids[f]);
    if (!in.ok()) {
      failed_.emplace(f, in.status());
      return in.status();
    }
    auto h = std::make_shared<Open>();
    h->file = std::move(in->file);
    h->map = std::move(in->map);
    lru_.push_front(f);
    open_[f] = {h, lru_.begin()};
    ++opens_;
    return h;
  }
  uint64_t opens() const { return opens_; }

 private:
  FileSystem& fs_;
  const ConsolidationPlan& plan_;
  const size_t capacity_;
  absl::Mutex mu_;
  std::list<int> lru_;
  std::map<int, std::pair<std::shared_ptr<Open>, std::list<int>::iterator>> open_;
  std::map<int, absl::Status> failed_;
  std::atomic<uint64_t> opens_{0};
};

// How many inputs may stay open at once: `o.max_open_inputs`, else half the soft open-file
// limit less what the outputs and the rest of the process need.
size_t InputBound(const ConsolidateOptions& o, size_t outputs) {
  if (o.max_open_inputs > 0) return static_cast<size_t>(o.max_open_inputs);
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return 4096;
  const int64_t room = static_cast<int64_t>(rl.rlim_cur) - 64 - static_cast<int64_t>(outputs);
  return static_cast<size_t>(std::max<int64_t>(8, room / 2));
}

class Executor {
 public:
  Executor(const ConsolidationPlan& plan, const std::vector<WorkItem>& items,
           const std::vector<size_t>& mine, const ConsolidateOptions& o)
      : plan_(plan), items_(items), mine_(mine), o_(o), hashes_(mine.size(), 0) {
    for (size_t i : mine_) total_ += items_[i].src_bytes;
  }

  absl::Status Run(FileSystem& fs, FileSystem& out_fs, const std::vector<std::string>& out_paths) {
    // Inputs through a bounded cache (each opened and mapped once when they all fit); each
    // output opened once.
    std::set<int> need_in, need_out;
    for (size_t i : mine_) {
      need_in.insert(plan_.tasks[items_[i].task].input_file);
      need_out.insert(plan_.tasks[items_[i].task].output_file);
    }
    const size_t bound = InputBound(o_, need_out.size());
    inputs_ = std::make_unique<InputCache>(fs, plan_, bound);
    if (need_in.size() <= bound) {
      // They all fit: open, check and map each now, before a byte is copied.
      for (int f : need_in) RETURN_IF_ERROR(inputs_->Get(f).status());
    }
    outputs_.resize(out_paths.size());
    out_maps_.assign(out_paths.size(), nullptr);
    for (int f : need_out) {
      ASSIGN_OR_RETURN(outputs_[f], out_fs.OpenForWrite(out_paths[f]));
      // Small runs go through a writable mapping (a memcpy instead of a syscall each).
      absl::StatusOr<char*> m = outputs_[f]->MapWritable(plan_.outputs[f].header.file_size());
      if (m.ok()) {
        out_maps_[f] = *m;
      } else if (m.status().code() != absl::StatusCode::kUnimplemented) {
        return m.status();
      }
    }

    int threads =
        o_.threads > 0 ? o_.threads : static_cast<int>(std::thread::hardware_concurrency());
    threads = std::max(1, std::min<int>(threads, static_cast<int>(mine_.size())));
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) pool.emplace_back([this] { Worker(); });
    for (auto& th : pool) th.join();
    RETURN_IF_ERROR(error_);
    for (int f : need_out) {
      RETURN_IF_ERROR(outputs_[f]->Sync());
      RETURN_IF_ERROR(outputs_[f]->Close());
    }
    return absl::OkStatus();
  }

  // Re-reads every range this rank wrote and compares checksums.
  absl::Status Verify(FileSystem& fs, const std::vector<std::string>& paths, VerifyReport* rep) {
    auto t0 = Clock::now();
    std::vector<std::unique_ptr<ReadableFile>> files(paths.size());
    std::string buf;
    for (size_t k = 0; k < mine_.size(); ++k) {
      const WorkItem& it = items_[mine_[k]];
      const CopyTask& c = plan_.tasks[it.task];
      if (!files[c.output_file]) {
        ASSIGN_OR_RETURN(files[c.output_file], fs.OpenRead(paths[c.output_file]));
      }
      Checksum sum;
      const uint64_t n = BitsToBytes(it.elem_end - it.elem_begin, c.dst_dtype);
      buf.resize(n);
      for (uint64_t r = it.run_begin; r < it.run_end; ++r) {
        uint64_t dst = c.dst_begin + BitsToBytes(c.DstElemOfRun(r) + it.elem_begin, c.dst_dtype);
        RETURN_IF_ERROR(files[c.output_file]->ReadAt(dst, n, buf.data()));
        sum.Update(buf.data(), n);
      }
      rep->bytes_checked +=
          BitsToBytes((it.elem_end - it.elem_begin) * (it.run_end - it.run_begin), c.dst_dtype);
      if (sum.Digest() != hashes_[k] && rep->mismatches.size() < 20) {
        rep->mismatches.push_back(absl::StrCat(
            BaseName(paths[c.output_file]), ": tensor ", internal::Quote(c.tensor),
            ": bytes at file offset ",
            c.dst_begin + BitsToBytes(c.DstElemOfRun(it.run_begin) + it.elem_begin, c.dst_dtype),
            " differ from the input chunk in ", BaseName(plan_.inputs[c.input_file]), " at offset ",
            c.src_begin));
      }
    }
    rep->seconds += std::chrono::duration<double>(Clock::now() - t0).count();
    return absl::OkStatus();
  }

  uint64_t total() const { return total_; }
  uint64_t input_opens() const { return inputs_ ? inputs_->opens() : 0; }

 private:
  void Worker() {
    std::string buf;
    while (true) {
      size_t k = next_.fetch_add(1);
      if (k >= mine_.size()) return;
      if (failed_.load() || (o_.cancel && o_.cancel->load())) {
        if (o_.cancel && o_.cancel->load())
          SetError(absl::CancelledError("consolidation cancelled"));
        return;
      }
      absl::Status s = DoItem(k, &buf);
      if (!s.ok()) {
        SetError(s);
        return;
      }
    }
  }

  absl::Status DoItem(size_t k, std::string* buf) {
    const WorkItem& it = items_[mine_[k]];
    const CopyTask& c = plan_.tasks[it.task];
    ASSIGN_OR_RETURN(std::shared_ptr<InputCache::Open> input, inputs_->Get(c.input_file));
    absl::string_view src_file = input->map->data();
    WritableFile& out = *outputs_[c.output_file];
    char* out_map = out_maps_[c.output_file];
    Checksum sum;
    const bool hash = o_.verify;
    const uint64_t elems = it.elem_end - it.elem_begin;
    const uint64_t sbits = BitsOf(c.src_dtype), dbits = BitsOf(c.dst_dtype);
    const uint64_t src_n = elems * sbits / 8;
    const bool same =
        c.src_dtype == c.dst_dtype || (sbits == dbits && !CanCast(c.src_dtype, c.dst_dtype));
    if (c.scale >= 0) {
      RETURN_IF_ERROR(Dequantize(it, c, src_file, out, hash ? &sum : nullptr, buf));
    }
    for (uint64_t r = it.run_begin; r < it.run_end && c.scale < 0; ++r) {
      uint64_t src = c.src_begin + (r * c.run_elems + it.elem_begin) * sbits / 8;
      uint64_t dst = c.dst_begin + (c.DstElemOfRun(r) + it.elem_begin) * dbits / 8;
      if (src + src_n > src_file.size()) {
        return absl::DataLossError(absl::StrCat(plan_.inputs[c.input_file], ": tensor ",
                                                internal::Quote(c.tensor), ": bytes at offset ",
                                                src, " lie beyond the end of the file (",
                                                src_file.size(), " bytes): it changed or shrank"));
      }
      const char* p = src_file.data() + src;
      const std::string& in_path = plan_.inputs[c.input_file];
      // Reads of the input mapping run under GuardMappedAccess: an input truncated by another
      // process while it is copied is an error naming it, not a SIGBUS that kills the process.
      if (same) {
        const bool small = out_map != nullptr && (src_n < kSmallRun || out.mapped_copies_only());
        if (hash || small) {
          // A tmpfs output mapping has no reserved pages: a full tmpfs is a SIGBUS in the
          // memcpy, reported as such (naming the output), not as a shrunk input.
          RETURN_IF_ERROR(GuardMappedCopy(
              in_path, src, out.path(), out_map,
              out_map != nullptr ? plan_.outputs[c.output_file].header.file_size() : 0, [&] {
                if (hash) sum.Update(p, src_n);
                if (small) std::memcpy(out_map + dst, p, src_n);
              }));
        }
        if (small) {
        } else if (!hash) {
          // Large runs: an in-kernel copy (copy_file_range), no user-space touch of the bytes.
          RETURN_IF_ERROR(out.CopyFrom(*input->file, src, dst, src_n));
        } else {
          // write() from the mapping: a truncated input is EFAULT there, never SIGBUS.
          RETURN_IF_ERROR(out.WriteAt(dst, absl::string_view(p, src_n)));
        }
      } else {
        const uint64_t ss = BitsOf(c.src_dtype) / 8, ds = BitsOf(c.dst_dtype) / 8;
        const uint64_t per = std::max<uint64_t>(1, kCastBuffer / ds);
        buf->resize(per * ds);
        char* const out_buf = buf->data();
        for (uint64_t e = 0; e < elems; e += per) {
          uint64_t m = std::min(per, elems - e);
          RETURN_IF_ERROR(GuardMappedAccess(in_path, src + e * ss, [&] {
            CastElements(c.src_dtype, p + e * ss, c.dst_dtype, out_buf, m);
            if (hash) sum.Update(out_buf, m * ds);
          }));
          RETURN_IF_ERROR(out.WriteAt(dst + e * ds, absl::string_view(out_buf, m * ds)));
        }
      }
      if (((r - it.run_begin) & 63) == 63 && o_.cancel && o_.cancel->load()) {
        return absl::CancelledError("consolidation cancelled");
      }
    }
    hashes_[k] = sum.Digest();
    uint64_t done = done_.fetch_add(it.src_bytes) + it.src_bytes;
    if (o_.progress) {
      absl::MutexLock l(&progress_mu_);
      if (done > reported_) {
        reported_ = done;
        o_.progress(done, total_);
      }
    }
    return absl::OkStatus();
  }

  // Dequantizes the runs of item `it` (codes from the mapped input) into the output, a piece
  // of at most kCastBuffer output bytes at a time, each piece a row segment at a time: memory
  // stays at one buffer per thread whatever the tensor size.
  absl::Status Dequantize(const WorkItem& it, const CopyTask& c, absl::string_view src_file,
                          WritableFile& out, Checksum* sum, std::string* buf) {
    const ScaleSource& sc = plan_.scales[c.scale];
    // Tables built now, not for the first time under GuardMappedAccess.
    (void)quant::Fp4Table();
    (void)quant::Fp8Table(DType::kF8_E8M0);
    if (IsFloat8(c.src_dtype)) (void)quant::Fp8Table(c.src_dtype);
    const std::string& in_path = plan_.inputs[c.input_file];
    const uint64_t sbits = BitsOf(c.src_dtype), ds = BitsOf(c.dst_dtype) / 8;
    const bool mx = sc.scheme == quant::Scheme::kMxfp4;
    uint64_t per = std::max<uint64_t>(2, kCastBuffer / ds);
    per -= per % 2;  // MXFP4 pieces start on a byte
    buf->resize(per * ds);
    char* const out_buf = buf->data();
    const uint64_t n_cols = c.shape.back();
    const uint64_t n_rows = c.shape.size() >= 2 ? c.shape[c.shape.size() - 2] : 1;
    const uint64_t scale_rows = sc.shape.size() >= 2 ? sc.shape[sc.shape.size() - 2] : 1;
    const uint64_t scale_cols = sc.shape.back();
    const uint64_t elems = it.elem_end - it.elem_begin;
    for (uint64_t r = it.run_begin; r < it.run_end; ++r) {
      const uint64_t src = c.src_begin + (r * c.run_elems + it.elem_begin) * sbits / 8;
      const uint64_t src_n = (elems * sbits + 7) / 8;
      if (src + src_n > src_file.size()) {
        return absl::DataLossError(absl::StrCat(
            in_path, ": tensor ", internal::Quote(c.tensor), ": bytes at offset ", src,
            " lie beyond the end of the file (", src_file.size(), " bytes): it changed or shrank"));
      }
      const uint64_t g0 = c.DstElemOfRun(r) + it.elem_begin;  // flat index in the output tensor
      const uint64_t dst = c.dst_begin + g0 * ds;
      for (uint64_t e = 0; e < elems; e += per) {
        const uint64_t m = std::min(per, elems - e);
        const char* p = src_file.data() + src + e * sbits / 8;
        // The segments of this piece, each within one row of the output (and so one scale row).
        uint64_t done = 0;
        while (done < m) {
          const uint64_t g = g0 + e + done;
          uint64_t len, first_scale, n_scales;
          if (mx) {
            len = m - done;
            first_scale = g / 32;
            n_scales = (g + len - 1) / 32 - first_scale + 1;
          } else {
            const uint64_t col = g % n_cols, row = g / n_cols;
            len = std::min(m - done, n_cols - col);
            const uint64_t lead = row / n_rows, in_row = row % n_rows;
            first_scale =
                (lead * scale_rows + in_row / sc.block.rows) * scale_cols + col / sc.block.cols;
            n_scales = (col + len - 1) / sc.block.cols - col / sc.block.cols + 1;
          }
          RETURN_IF_ERROR(ReadScales(sc, first_scale, n_scales));
          const unsigned char* codes = reinterpret_cast<const unsigned char*>(p) + done * sbits / 8;
          char* o = out_buf + done * ds;
          RETURN_IF_ERROR(GuardMappedAccess(in_path, src + (e + done) * sbits / 8, [&] {
            if (mx) {
              quant::DequantizeMxfp4(codes, g, len, scale_bytes_.data(), c.dst_dtype, o);
            } else {
              quant::DequantizeFp8Row(c.src_dtype, codes, len, g % n_cols, sc.block.cols,
                                      scale_values_.data(), c.dst_dtype, o);
            }
          }));
          done += len;
        }
        if (sum != nullptr) sum->Update(out_buf, m * ds);
        RETURN_IF_ERROR(out.WriteAt(dst + e * ds, absl::string_view(out_buf, m * ds)));
      }
      if (((r - it.run_begin) & 63) == 63 && o_.cancel && o_.cancel->load()) {
        return absl::CancelledError("consolidation cancelled");
      }
    }
    return absl::OkStatus();
  }

  // Scales [first, first + n) (flat indices of the scale tensor) into scale_values_ (FP8) or
  // scale_bytes_ (MXFP4, the E8M0 codes), read from the chunks that hold them.
  absl::Status ReadScales(const ScaleSource& sc, uint64_t first, uint64_t n) {
    thread_local std::vector<uint64_t> ix;
    if (sc.scheme == quant::Scheme::kMxfp4) {
      scale_bytes_.resize(n);
    } else {
      scale_values_.resize(n);
    }
    const size_t rank = sc.shape.size();
    const uint64_t esize = std::max(1, BitsOf(sc.dtype) / 8);
    uint64_t k = 0;
    while (k < n) {
      // The multi-index of flat element first + k.
      ix.assign(rank, 0);
      uint64_t rest = first + k;
      for (size_t d = rank; d-- > 0;) {
        ix[d] = rest % sc.shape[d];
        rest /= sc.shape[d];
      }
      const Chunk* hit = nullptr;
      for (size_t ci = 0; ci < sc.chunks.size() && hit == nullptr; ++ci) {
        const Chunk& ch = sc.chunks[(last_chunk_ + ci) % sc.chunks.size()];
        bool in = true;
        for (size_t d = 0; d < rank && in; ++d)
          in = ix[d] >= ch.offsets[d] && ix[d] < ch.offsets[d] + ch.sizes[d];
        if (in) {
          hit = &ch;
          last_chunk_ = (last_chunk_ + ci) % sc.chunks.size();
        }
      }
      if (hit == nullptr) {
        return absl::DataLossError(absl::StrCat("scale ", internal::Quote(sc.name), ": element ",
                                                first + k, " is in no chunk"));
      }
      // Contiguous within the chunk along the last dimension.
      const uint64_t take =
          std::min(n - k, hit->offsets[rank - 1] + hit->sizes[rank - 1] - ix[rank - 1]);
      uint64_t local = 0;
      for (size_t d = 0; d < rank; ++d) local = local * hit->sizes[d] + (ix[d] - hit->offsets[d]);
      ASSIGN_OR_RETURN(std::shared_ptr<InputCache::Open> in, inputs_->Get(hit->file));
      absl::string_view bytes = in->map->data();
      const uint64_t at = hit->begin + local * esize;
      if (at + take * esize > bytes.size() || at + take * esize > hit->end) {
        return absl::DataLossError(absl::StrCat(plan_.inputs[hit->file], ": scale ",
                                                internal::Quote(sc.name), ": bytes at offset ", at,
                                                " lie beyond its data: the file changed"));
      }
      const unsigned char* p = reinterpret_cast<const unsigned char*>(bytes.data()) + at;
      RETURN_IF_ERROR(GuardMappedAccess(plan_.inputs[hit->file], at, [&] {
        if (sc.scheme == quant::Scheme::kMxfp4) {
          std::memcpy(scale_bytes_.data() + k, p, take);
        } else {
          for (uint64_t j = 0; j < take; ++j)
            scale_values_[k + j] = quant::ScaleValue(sc.dtype, p + j * esize);
        }
      }));
      k += take;
    }
    return absl::OkStatus();
  }

  void SetError(const absl::Status& s) {
    absl::MutexLock l(&mu_);
    if (error_.ok()) error_ = s;
    failed_ = true;
  }

  const ConsolidationPlan& plan_;
  const std::vector<WorkItem>& items_;
  const std::vector<size_t>& mine_;
  const ConsolidateOptions& o_;
  std::vector<uint64_t> hashes_;
  std::unique_ptr<InputCache> inputs_;
  std::vector<std::unique_ptr<WritableFile>> outputs_;
  std::vector<char*> out_maps_;
  std::atomic<size_t> next_{0};
  std::atomic<uint64_t> done_{0};
  std::atomic<bool> failed_{false};
  uint64_t total_ = 0;
  absl::Mutex mu_;
  absl::Status error_;
  absl::Mutex progress_mu_;
  uint64_t reported_ = 0;
  // Per worker thread (dequantization): the scales of the current segment.
  static thread_local std::vector<float> scale_values_;
  static thread_local std::vector<unsigned char> scale_bytes_;
  static thread_local size_t last_chunk_;
};
thread_local std::vector<float> Executor::scale_values_;
thread_local std::vector<unsigned char> Executor::scale_bytes_;
thread_local size_t Executor::last_chunk_ = 0;

}  // namespace

std::vector<uint64_t> BytesPerRank(const ConsolidationPlan& plan, int world) {
  std::vector<WorkItem> items = SplitIntoItems(plan.tasks);
  std::vector<uint64_t> bytes(std::max(1, world), 0);
  const std::vector<std::vector<size_t>> a = AssignToRanks(items, std::max(1, world));
  for (size_t r = 0; r < a.size(); ++r) {
    for (size_t i : a[r]) bytes[r] += items[i].src_bytes;
  }
  return bytes;
}

const std::vector<std::string>& ModelFileNames() {
  static const std::vector<std::string>* names =
      new std::vector<std::string>{"config.json",
                                   "generation_config.json",
                                   "tokenizer.json",
                                   "tokenizer_config.json",
                                   "special_tokens_map.json",
                                   "added_tokens.json",
                                   "vocab.json",
                                   "vocab.txt",
                                   "merges.txt",
                                   "tokenizer.model",
                                   "spiece.model",
                                   "chat_template.jinja",
                                   "chat_template.json",
                                   "preprocessor_config.json",
                                   "processor_config.json"};
  return *names;
}

absl::StatusOr<ConsolidateResult> Consolidate(FileSystem& fs, const std::string& input,
                                              const std::string& output_dir,
                                              const ConsolidateOptions& o, Collective* collective) {
  auto t0 = Clock::now();
  std::unique_ptr<Collective> single;
  if (collective == nullptr) {
    single = NewSingleRank();
    collective = single.get();
  }
  Collective& c = *collective;
  const int rank = c.rank();
  FileSystem& out_fs = o.output_fs != nullptr ? *o.output_fs : fs;

  // 1. Plan (every rank), errors shared.
  absl::StatusOr<ConsolidationPlan> plan_or = [&]() -> absl::StatusOr<ConsolidationPlan> {
    ScanOptions so;
    so.expect_ranks = o.expect_ranks;
    so.strict = o.strict;
    so.quant_block = o.block_size;
    ASSIGN_OR_RETURN(CheckpointLayout layout, CheckpointLayout::Scan(fs, input, so));
    if (o.reference_layout != nullptr) layout.CheckAgainstReference(*o.reference_layout);
    if (&out_fs == &fs) RETURN_IF_ERROR(CheckOutputIsNotInput(fs, layout, output_dir));
    std::optional<std::string> config;
    if (o.dequantize) {
      ASSIGN_OR_RETURN(config, ReadModelConfig(fs, layout.root()));
    }
    return PlanConsolidation(layout, o, config ? &*config : nullptr);
  }();
  RETURN_IF_ERROR(AllGatherStatus(c, plan_or.status()));
  ConsolidationPlan& plan = *plan_or;
  ConsolidateResult result;
  result.output_dir = output_dir;
  result.warnings = plan.warnings;

  // 2. Output files (rank 0). Every output path resolves beneath the output directory's
  //    descriptor, opened once: replacing OUT (or anything in it) by a symlink mid-run cannot
  //    redirect a write, and no path is ever rebuilt from a string.
  std::unique_ptr<FileSystem> out_dir;  // outlives the AtomicFiles that point into it
  std::vector<AtomicFile> atomics;
  absl::Status prep = absl::OkStatus();
  std::string temp_list;
  std::optional<DirectoryLock> lock;  // held by rank 0 until the index is published
  if (rank == 0) {
    prep = [&]() -> absl::Status {
      ASSIGN_OR_RETURN(std::vector<std::string> made, MakeDirsNoting(out_fs, output_dir));
      // Again now that OUT exists: "IN/new/.." only resolves to IN once "new" is there (and
      // "new" is taken away again: a refused run leaves nothing in IN).
      if (&out_fs == &fs && SameDirectory(fs, output_dir, plan.input_root)) {
        RemoveMadeDirs(out_fs, made);
        return absl::InvalidArgumentError(absl::StrCat(
            output_dir, ": the output directory is the input directory ", plan.input_root,
            "; inputs are never modified (choose another output directory)"));
      }
      ASSIGN_OR_RETURN(out_dir, out_fs.OpenBeneath(output_dir));
      // And once more by the descriptor now held: OUT swapped for a link to IN in between is
      // caught here, before anything in it is replaced.
      if (&out_fs == &fs && SameOpenedDirectory(*out_dir, plan.input_root)) {
        return absl::InvalidArgumentError(
            absl::StrCat(output_dir, ": the output directory is (now) the input directory ",
                         plan.input_root, "; inputs are never modified"));
      }
      ASSIGN_OR_RETURN(DirectoryLock l, DirectoryLock::Acquire(*out_dir, ""));
      lock.emplace(std::move(l));
      return PrepareOutputDir(*out_dir, plan, output_dir, o, &atomics, &result.warnings);
    }();
    for (const AtomicFile& a : atomics)
      absl::StrAppend(&temp_list, a.temp_path().size(), ":", a.temp_path());
  }
  RETURN_IF_ERROR(AllGatherStatus(c, prep));
  absl::Status opened = absl::OkStatus();
  if (rank != 0) {  // every other rank opens OUT for itself, once
    absl::StatusOr<std::unique_ptr<FileSystem>> d = out_fs.OpenBeneath(output_dir);
    if (d.ok()) out_dir = std::move(*d);
    opened = d.status();
  }
  RETURN_IF_ERROR(AllGatherStatus(c, opened));
  // Temporary paths (relative to OUT) travel length-prefixed ("<bytes>:<path>" each): any byte may
  // be in a path (a newline, bytes that are not UTF-8), so no path is ever split out of a joined
  // string.
  ASSIGN_OR_RETURN(std::string temps_joined, c.Broadcast(temp_list, 0));
  std::vector<std::string> temp_paths;
  for (absl::string_view rest = temps_joined; !rest.empty();) {
    const size_t colon = rest.find(':');
    size_t n = 0;
    if (colon == absl::string_view::npos || !absl::SimpleAtoi(rest.substr(0, colon), &n) ||
        n > rest.size() - colon - 1) {
      return absl::InternalError("rank 0 sent a malformed list of temporary output paths");
    }
    temp_paths.emplace_back(rest.substr(colon + 1, n));
    rest.remove_prefix(colon + 1 + n);
  }
  if (temp_paths.size() != plan.outputs.size()) {
    return absl::InternalError("rank 0 sent a malformed list of temporary output paths");
  }

  // 3. Copy this rank's share.
  std::vector<WorkItem> items = SplitIntoItems(plan.tasks);
  std::vector<std::vector<size_t>> assignment = AssignToRanks(items, c.world_size());
  Executor ex(plan, items, assignment[rank], o);
  absl::Status copied = ex.Run(fs, *out_dir, temp_paths);
  RETURN_IF_ERROR(AllGatherStatus(c, copied));  // AtomicFiles of rank 0 clean up on error

  // 3b. Checksums of the outputs for their manifest, files shared across ranks by bytes, read
  //     back while they are still in the page cache.
  Manifest out_manifest;
  out_manifest.kind = std::string(kManifestKindConsolidated);
  if (o.checksums) {
    std::vector<uint64_t> load(c.world_size(), 0);
    std::vector<size_t> order(plan.outputs.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      return plan.outputs[a].header.file_size() > plan.outputs[b].header.file_size();
    });
    std::vector<size_t> my_files;
    for (size_t i : order) {
      int r = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
      load[r] += plan.outputs[i].header.file_size();
      if (r == rank) my_files.push_back(i);
    }
    std::vector<absl::StatusOr<ManifestFile>> sums(my_files.size(), absl::UnknownError("not run"));
    int threads = o.threads > 0 ? o.threads : static_cast<int>(std::thread::hardware_concurrency());
    ParallelFor(my_files.size(), std::max(1, threads), [&](size_t k) {
      const OutputFilePlan& f = plan.outputs[my_files[k]];
      sums[k] = [&]() -> absl::StatusOr<ManifestFile> {
        ASSIGN_OR_RETURN(std::unique_ptr<ReadableFile> in,
                         out_dir->OpenRead(temp_paths[my_files[k]]));
        // A second hashing thread per file only while cores would otherwise idle.
        ASSIGN_OR_RETURN(ManifestFile mf,
                         ChecksumFile(*in, f.header,
                                      my_files.size() < static_cast<size_t>(std::max(1, threads))));
        mf.name = f.name;
        return mf;
      }();
    });
    Manifest mine;
    absl::Status summed = absl::OkStatus();
    for (auto& sm : sums) {
      if (!sm.ok()) {
        summed = sm.status();
        break;
      }
      mine.files.push_back(std::move(*sm));
    }
    RETURN_IF_ERROR(AllGatherStatus(c, summed));
    ASSIGN_OR_RETURN(std::vector<std::string> parts, c.AllGather(SerializeManifest(mine)));
    std::map<std::string, ManifestFile> by_name;
    for (const std::string& text : parts) {
      ASSIGN_OR_RETURN(Manifest m, ParseManifest(text, "a rank's checksums"));
      for (ManifestFile& f : m.files) by_name[f.name] = std::move(f);
    }
    for (const OutputFilePlan& f : plan.outputs) {
      auto it = by_name.find(f.name);
      if (it == by_name.end()) return absl::InternalError(absl::StrCat("no checksum for ", f.name));
      out_manifest.files.push_back(std::move(it->second));
    }
  }

  // 4. Verify.
  if (o.verify) {
    VerifyReport mine;
    absl::Status vs = ex.Verify(*out_dir, temp_paths, &mine);
    if (vs.ok() && !mine.mismatches.empty()) {
      vs = absl::DataLossError(
          absl::StrCat("verification failed: ", absl::StrJoin(mine.mismatches, "; ")));
    }
    RETURN_IF_ERROR(AllGatherStatus(c, vs));
    ASSIGN_OR_RETURN(std::vector<std::string> checked,
                     c.AllGather(absl::StrCat(mine.bytes_checked, " ", mine.seconds)));
    VerifyReport total;
    for (const std::string& s : checked) {
      std::vector<std::string> p = absl::StrSplit(s, ' ');
      uint64_t b = 0;
      double sec = 0;
      if (p.size() == 2 && absl::SimpleAtoi(p[0], &b) && absl::SimpleAtod(p[1], &sec)) {
        total.bytes_checked += b;
        total.seconds = std::max(total.seconds, sec);
      }
    }
    result.verify = total;
  }

  // 5. Publish (rank 0): files, then the index last.
  absl::Status published = absl::OkStatus();
  std::vector<std::string> companions;  // companion files (config.json, ...) copied along
  if (rank == 0) {
    published = [&]() -> absl::Status {
      if (o.cancel && o.cancel->load()) return absl::CancelledError("consolidation cancelled");
      for (AtomicFile& a : atomics) RETURN_IF_ERROR(a.Commit());
      if (o.copy_model_files) {
        // config.json, tokenizer files, ...: streamed, regular files only, never over one that
        // is already in OUT.
        for (const std::string& name : ModelFileNames()) {
          if (name == "config.json" && plan.config_json) {  // dequantized: the rewritten one
            if (!o.overwrite && out_dir->Stat(name).ok()) continue;
            RETURN_IF_ERROR(WriteFileAtomically(*out_dir, name, *plan.config_json));
            companions.push_back(name);
            continue;
          }
          absl::StatusOr<std::unique_ptr<ReadableFile>> src =
              fs.OpenRead(JoinPath(plan.input_root, name));
          if (!src.ok()) continue;  // absent (or not a regular file): nothing to copy
          if (!o.overwrite && out_dir->Stat(name).ok()) continue;  // --overwrite: the new model's
          ASSIGN_OR_RETURN(AtomicFile copy, AtomicFile::Create(*out_dir, name));
          if ((*src)->size() > 0)
            RETURN_IF_ERROR(copy.file().CopyFrom(**src, 0, 0, (*src)->size()));
          RETURN_IF_ERROR(copy.Commit());
          companions.push_back(name);
        }
      }
      if (o.checksums) {
        // The outputs' sizes and checksums, before the index: the index stays the "done" signal.
        RETURN_IF_ERROR(WriteFileAtomically(*out_dir, std::string(kManifestFileName),
                                            SerializeManifest(out_manifest)));
      }
      if (o.verify) {
        // The published files, re-scanned before the index says "finished": a failure here
        // leaves no index (never an exit 1 beside a published index).
        ASSIGN_OR_RETURN(CheckpointLayout out, CheckpointLayout::Scan(*out_dir, ""));
        for (const Problem& p : out.problems()) {
          // The index is what is still to come: its absence is this run's state, not a fault.
          const bool index_to_come =
              p.kind == ProblemKind::kManifestMissingFile && p.file == kIndexFileName;
          if (IsBlocking(p.kind) && !index_to_come) {
            return absl::DataLossError(absl::StrCat(
                "the written output fails verification (no index was published): ", p.ToString()));
          }
        }
        if (out.tensors().size() != plan.weight_map.size()) {
          return absl::DataLossError(absl::StrCat("the written output holds ", out.tensors().size(),
                                                  " tensors, the plan ", plan.weight_map.size(),
                                                  " (no index was published)"));
        }
      }
      IndexJson idx;
      idx.total_size = plan.total_size;
      idx.extra_metadata["total_parameters"] = absl::StrCat(plan.total_parameters);
      idx.weight_map = plan.weight_map;
      RETURN_IF_ERROR(WriteFileAtomically(*out_dir, plan.index_name, SerializeIndexJson(idx)));
      return absl::OkStatus();
    }();
  }
  RETURN_IF_ERROR(AllGatherStatus(c, published));
  for (const OutputFilePlan& f : plan.outputs) result.files.push_back(f.name);
  result.files.insert(result.files.end(), companions.begin(), companions.end());
  if (o.checksums) result.files.push_back(kManifestFileName);
  result.files.push_back(plan.index_name);
  for (const CopyTask& t : plan.tasks) result.bytes += t.dst_bytes();
  result.dequantized = plan.dequantized.size();
  result.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return result;
}

}  // namespace safeshard
