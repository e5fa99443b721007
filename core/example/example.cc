#include "core/example/example.h"

#include <algorithm>
#include <map>

#include "absl/strings/str_cat.h"
#include "core/format/filenames.h"
#include "core/format/header.h"
#include "core/format/sharding.h"
#include "core/io/atomic_file.h"
#include "core/util/status_macros.h"

namespace safeshard {
namespace {

uint64_t NameSeed(const std::string& name) {
  uint64_t h = 1469598103934665603ull;
  for (char c : name) h = (h ^ static_cast<uint8_t>(c)) * 1099511628211ull;
  return h;
}

inline uint8_t ByteAt(uint64_t seed, uint64_t pos) {
  uint64_t x = seed ^ (pos * 0x9E3779B97F4A7C15ull);
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  return static_cast<uint8_t>(x);
}

// torch.chunk: chunk size ceil(n / parts); later parts may be short or empty.
std::pair<uint64_t, uint64_t> Split(uint64_t n, int parts, int i) {
  uint64_t step = (n + parts - 1) / parts;
  uint64_t lo = std::min<uint64_t>(n, step * i);
  uint64_t hi = std::min<uint64_t>(n, lo + step);
  return {lo, hi - lo};
}

}  // namespace

std::vector<ExampleTensor> TransformerLikeModel(const ModelOptions& o) {
  const uint64_t h = o.hidden, f = o.hidden * o.ffn_multiple;
  std::vector<ExampleTensor> out;
  out.push_back({"model.embed_tokens.weight", DType::kBF16, {o.vocab, h}, Sharding::kRow});
  for (int l = 0; l < o.layers; ++l) {
    std::string p = absl::StrCat("model.layers.", l, ".");
    out.push_back({p + "self_attn.q_proj.weight", DType::kBF16, {h, h}, Sharding::kRow});
    out.push_back({p + "self_attn.k_proj.weight", DType::kBF16, {h, h}, Sharding::kRow});
    out.push_back({p + "self_attn.v_proj.weight", DType::kBF16, {h, h}, Sharding::kRow});
    out.push_back({p + "self_attn.o_proj.weight", DType::kBF16, {h, h}, Sharding::kColumn});
    out.push_back({p + "mlp.gate_proj.weight", DType::kBF16, {f, h}, Sharding::kMesh});
    out.push_back({p + "mlp.up_proj.weight", DType::kF16, {f, h}, Sharding::kRow});
    out.push_back({p + "mlp.down_proj.weight", DType::kBF16, {h, f}, Sharding::kColumn});
    out.push_back({p + "input_layernorm.weight", DType::kF32, {h}, Sharding::kReplicated});
    out.push_back({p + "post_attention_layernorm.weight", DType::kF32, {h},
                   Sharding::kReplicated});
  }
  out.push_back({"model.norm.weight", DType::kF32, {h}, Sharding::kReplicated});
  out.push_back({"lm_head.weight", DType::kBF16, {o.vocab, h}, Sharding::kColumn});
  out.push_back({"model.rotary_emb.inv_freq", DType::kF32, {h / 2}, Sharding::kReplicated});
  out.push_back({"model.position_ids", DType::kI64, {1, 128}, Sharding::kReplicated});
  out.push_back({"model.attention_mask", DType::kBOOL, {128}, Sharding::kReplicated});
  out.push_back({"train.step", DType::kI64, {}, Sharding::kReplicated});
  return out;
}

std::vector<ExampleTensor> ManySmallTensors(int count) {
  std::vector<ExampleTensor> out;
  out.reserve(count);
  for (int i = 0; i < count; ++i) {
    out.push_back({absl::StrCat("blocks.", i, ".w"), DType::kF32, {4, 4}, Sharding::kReplicated});
  }
  return out;
}

std::vector<std::optional<ChunkSpec>> PlanChunks(const std::vector<ExampleTensor>& tensors,
                                                 size_t ti, const WriteOptions& o,
                                                 std::vector<uint64_t>* bytes_per_rank) {
  const ExampleTensor& t = tensors[ti];
  const int R = o.ranks;
  std::vector<std::optional<ChunkSpec>> out(R);
  Sharding s = t.sharding;
  if ((s == Sharding::kColumn || s == Sharding::kMesh) && t.shape.size() < 2) s = Sharding::kRow;
  if (s == Sharding::kRow && t.shape.empty()) s = Sharding::kReplicated;
  if (s == Sharding::kMesh && (o.mesh_rows < 1 || R % o.mesh_rows != 0)) s = Sharding::kRow;
  for (int r = 0; r < R; ++r) {
    ChunkSpec c{std::vector<uint64_t>(t.shape.size(), 0), t.shape};
    switch (s) {
      case Sharding::kReplicated:
        break;
      case Sharding::kRow: {
        auto [lo, n] = Split(t.shape[0], R, r);
        c.offsets[0] = lo;
        c.sizes[0] = n;
        break;
      }
      case Sharding::kColumn: {
        auto [lo, n] = Split(t.shape[1], R, r);
        c.offsets[1] = lo;
        c.sizes[1] = n;
        break;
      }
      case Sharding::kMesh: {
        int cols = R / o.mesh_rows;
        auto [lo0, n0] = Split(t.shape[0], o.mesh_rows, r / cols);
        auto [lo1, n1] = Split(t.shape[1], cols, r % cols);
        c.offsets[0] = lo0;
        c.sizes[0] = n0;
        c.offsets[1] = lo1;
        c.sizes[1] = n1;
        break;
      }
    }
    out[r] = std::move(c);
  }
  if (s == Sharding::kReplicated) {
    // Saved once, by the rank with the fewest bytes so far (DCP's dedup, balanced by bytes).
    int best = static_cast<int>(std::min_element(bytes_per_rank->begin(), bytes_per_rank->end()) -
                                bytes_per_rank->begin());
    for (int r = 0; r < R; ++r) {
      if (r != best) out[r].reset();
    }
  }
  for (int r = 0; r < R; ++r) {
    if (!out[r]) continue;
    if (o.drop_chunk && o.drop_chunk->first == t.name && o.drop_chunk->second == r) {
      out[r].reset();
      continue;
    }
    (*bytes_per_rank)[r] += ByteSizeOf(t.dtype, out[r]->sizes).value_or(0);
  }
  return out;
}

std::string ChunkBytes(const ExampleTensor& t, const ChunkSpec& c) {
  const uint64_t esize = static_cast<uint64_t>(BitsOf(t.dtype)) / 8;
  const uint64_t seed = NameSeed(t.name);
  const size_t rank = t.shape.size();
  uint64_t n = 1;
  for (uint64_t s : c.sizes) n *= s;
  std::string out(n * esize, '\0');
  if (n == 0) return out;
  std::vector<uint64_t> gstride(rank, 1);
  for (size_t d = rank; d-- > 1;) gstride[d - 1] = gstride[d] * t.shape[d];
  std::vector<uint64_t> idx(rank, 0);
  for (uint64_t e = 0; e < n; ++e) {
    uint64_t g = 0;
    for (size_t d = 0; d < rank; ++d) g += (c.offsets[d] + idx[d]) * gstride[d];
    for (uint64_t b = 0; b < esize; ++b) out[e * esize + b] = static_cast<char>(ByteAt(seed, g * esize + b));
    for (size_t d = rank; d-- > 0;) {
      if (++idx[d] < c.sizes[d]) break;
      idx[d] = 0;
    }
  }
  return out;
}

std::string ExpectedTensorBytes(const ExampleTensor& t) {
  return ChunkBytes(t, ChunkSpec{std::vector<uint64_t>(t.shape.size(), 0), t.shape});
}

absl::Status WriteDcpCheckpoint(FileSystem& fs, const std::string& dir,
                                const std::vector<ExampleTensor>& tensors,
                                const WriteOptions& o) {
  if (o.ranks < 1) return absl::InvalidArgumentError("ranks must be at least 1");
  for (const ExampleTensor& t : tensors) {
    if (IsSubByte(t.dtype)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", t.name, ": the example writer does not generate sub-byte dtypes"));
    }
  }
  RETURN_IF_ERROR(fs.MakeDirs(dir));
  std::vector<uint64_t> bytes(o.ranks, 0);
  // per rank: (tensor index, chunk)
  std::vector<std::vector<std::pair<size_t, ChunkSpec>>> per_rank(o.ranks);
  for (size_t i = 0; i < tensors.size(); ++i) {
    std::vector<std::optional<ChunkSpec>> chunks = PlanChunks(tensors, i, o, &bytes);
    for (int r = 0; r < o.ranks; ++r) {
      if (chunks[r]) per_rank[r].emplace_back(i, std::move(*chunks[r]));
    }
  }
  uint64_t total = 0, done = 0;
  for (uint64_t b : bytes) total += b;
  for (int r = 0; r < o.ranks; ++r) {
    std::vector<TensorSpec> specs;
    ShardingInfo info;
    std::map<std::string, const std::pair<size_t, ChunkSpec>*> by_name;
    for (const auto& item : per_rank[r]) {
      const ExampleTensor& t = tensors[item.first];
      specs.push_back({t.name, t.dtype, item.second.sizes});
      info.saved_offsets[t.name] = item.second.offsets;
      by_name[t.name] = &item;
    }
    ASSIGN_OR_RETURN(Header h, LayoutHeader(std::move(specs), ShardedFileMetadata(info)));
    ASSIGN_OR_RETURN(AtomicFile out, AtomicFile::Create(fs, JoinPath(dir, ShardFileName(r, 1, 1))));
    RETURN_IF_ERROR(out.file().Append(SerializeHeader(h)));
    for (const TensorEntry& e : h.tensors) {
      const auto* item = by_name.at(e.name);
      RETURN_IF_ERROR(out.file().Append(ChunkBytes(tensors[item->first], item->second)));
    }
    RETURN_IF_ERROR(out.Commit());
    done += h.buffer_size;
    if (o.progress) o.progress(done, total);
  }
  return absl::OkStatus();
}

}  // namespace safeshard
