#include "core/example/example.h"

#include <cstring>

#include <cmath>

#include <algorithm>
#include <map>

#include "absl/strings/str_cat.h"
#include "core/format/filenames.h"
#include "core/format/header.h"
#include "core/format/manifest.h"
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

// A deterministic N(0, 1) sample for element `g` of a tensor (Box-Muller on two hashes).
double Normal(uint64_t seed, uint64_t g) {
  auto u = [&](uint64_t salt) {
    uint64_t x = seed ^ ((2 * g + salt) * 0x9E3779B97F4A7C15ull);
    x ^= x >> 31;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 29;
    x *= 0x94D049BB133111EBull;
    x ^= x >> 32;
    return (static_cast<double>(x >> 11) + 0.5) / 9007199254740992.0;  // (0, 1)
  };
  return std::sqrt(-2.0 * std::log(u(0))) * std::cos(6.283185307179586 * u(1));
}

// F8 code nearest to v (finite codes only), from a table of every code's value.
uint8_t NearestF8(double v, int exp_bits, int bias, bool fnuz) {
  const int man_bits = 7 - exp_bits;
  uint8_t best = 0;
  double best_d = 1e300;
  for (int code = 0; code < 256; ++code) {
    const int sign = code >> 7, e = (code >> man_bits) & ((1 << exp_bits) - 1),
              m = code & ((1 << man_bits) - 1);
    if (fnuz && code == 0x80) continue;                         // NaN
    if (!fnuz && exp_bits == 4 && e == 15 && m == 7) continue;  // E4M3FN NaN
    if (!fnuz && exp_bits == 5 && e == 31) continue;            // E5M2 inf/NaN
    const double mag = e == 0 ? std::ldexp(m, 1 - bias - man_bits)
                              : std::ldexp(1.0 + std::ldexp(m, -man_bits), e - bias);
    const double d = std::fabs((sign ? -mag : mag) - v);
    if (d < best_d) best_d = d, best = static_cast<uint8_t>(code);
  }
  return best;
}

uint16_t ToBF16(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return static_cast<uint16_t>((b + 0x7fff + ((b >> 16) & 1)) >> 16);  // round to nearest even
}

uint16_t ToF16(float f) {  // normal-range values (|f| < 65504), round to nearest even
  uint32_t b;
  std::memcpy(&b, &f, 4);
  const uint32_t sign = (b >> 16) & 0x8000;
  const int exp = static_cast<int>((b >> 23) & 0xff) - 127 + 15;
  uint32_t man = b & 0x7fffff;
  if (exp <= 0) {  // subnormal half (or zero)
    if (exp < -10) return static_cast<uint16_t>(sign);
    man |= 0x800000;
    const int shift = 14 - exp;
    uint32_t h = man >> shift;
    const uint32_t rem = man & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1))) ++h;
    return static_cast<uint16_t>(sign | h);
  }
  uint32_t h = (static_cast<uint32_t>(exp) << 10) | (man >> 13);
  const uint32_t rem = man & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) ++h;
  return static_cast<uint16_t>(sign | h);
}

// Element `g` of an example tensor, encoded in its dtype: N(0, 1) for floating point (so values,
// histograms and diffs look like weights, not like random bit patterns), small integers for
// integer dtypes, 0/1 for booleans.
void EncodeElement(DType t, uint64_t seed, uint64_t g, char* out) {
  const double v = Normal(seed, g);
  const int64_t small = static_cast<int64_t>(std::llround(v * 30));  // about -100..100
  switch (t) {
    case DType::kF64: std::memcpy(out, &v, 8); return;
    case DType::kF32: {
      const float f = static_cast<float>(v);
      std::memcpy(out, &f, 4);
      return;
    }
    case DType::kBF16: {
      const uint16_t h = ToBF16(static_cast<float>(v));
      std::memcpy(out, &h, 2);
      return;
    }
    case DType::kF16: {
      const uint16_t h = ToF16(static_cast<float>(v));
      std::memcpy(out, &h, 2);
      return;
    }
    case DType::kF8_E4M3: *out = static_cast<char>(NearestF8(v, 4, 7, false)); return;
    case DType::kF8_E5M2: *out = static_cast<char>(NearestF8(v, 5, 15, false)); return;
    case DType::kF8_E4M3FNUZ: *out = static_cast<char>(NearestF8(v, 4, 8, true)); return;
    case DType::kF8_E5M2FNUZ: *out = static_cast<char>(NearestF8(v, 5, 16, true)); return;
    case DType::kF8_E8M0:
      *out = static_cast<char>(127 + std::clamp<int64_t>(std::llround(v * 2), -8, 8));
      return;
    case DType::kBOOL: *out = static_cast<char>(v > 0); return;
    case DType::kI8:
    case DType::kI16:
    case DType::kI32:
    case DType::kI64: {
      const int64_t x = std::clamp<int64_t>(small, -127, 127);
      std::memcpy(out, &x, static_cast<size_t>(BitsOf(t) / 8));  // little-endian: low bytes
      return;
    }
    case DType::kU8:
    case DType::kU16:
    case DType::kU32:
    case DType::kU64: {
      const uint64_t x = static_cast<uint64_t>(std::clamp<int64_t>(small + 128, 0, 255));
      std::memcpy(out, &x, static_cast<size_t>(BitsOf(t) / 8));
      return;
    }
    default:  // C64 and sub-byte types: the byte pattern
      for (int b = 0; b < BitsOf(t) / 8; ++b) out[b] = static_cast<char>(ByteAt(seed, g * 8 + b));
      return;
  }
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
    out.push_back({p + "post_attention_layernorm.weight", DType::kF32, {h}, Sharding::kReplicated});
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

std::vector<std::vector<ChunkSpec>> PlanChunks(const std::vector<ExampleTensor>& tensors, size_t ti,
                                               const WriteOptions& o,
                                               std::vector<uint64_t>* bytes_per_rank) {
  const ExampleTensor& t = tensors[ti];
  const int R = o.ranks;
  std::vector<std::vector<ChunkSpec>> out(R);
  Sharding s = t.sharding;
  if (s == Sharding::kStridedMesh &&
      (t.shape.size() < 2 || o.mesh_rows < 1 || R % o.mesh_rows != 0)) {
    s = Sharding::kStrided;
  }
  if (s == Sharding::kStrided && t.shape.empty()) s = Sharding::kReplicated;
  if ((s == Sharding::kColumn || s == Sharding::kMesh) && t.shape.size() < 2) s = Sharding::kRow;
  if (s == Sharding::kRow && t.shape.empty()) s = Sharding::kReplicated;
  if (s == Sharding::kMesh && (o.mesh_rows < 1 || R % o.mesh_rows != 0)) s = Sharding::kRow;
  for (int r = 0; r < R; ++r) {
    ChunkSpec c{std::vector<uint64_t>(t.shape.size(), 0), t.shape};
    switch (s) {
      case Sharding::kReplicated: break;
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
      case Sharding::kStrided:
      case Sharding::kStridedMesh: {
        // Row blocks r and r + P of 2P (P = ranks, or mesh rows for the 2-D form).
        const int P = s == Sharding::kStrided ? R : o.mesh_rows;
        const int cols = s == Sharding::kStrided ? 1 : R / o.mesh_rows;
        const int prow = r / cols;
        for (int k = 0; k < 2; ++k) {
          ChunkSpec b = c;
          auto [lo0, n0] = Split(t.shape[0], 2 * P, prow + k * P);
          b.offsets[0] = lo0;
          b.sizes[0] = n0;
          if (s == Sharding::kStridedMesh) {
            auto [lo1, n1] = Split(t.shape[1], cols, r % cols);
            b.offsets[1] = lo1;
            b.sizes[1] = n1;
          }
          out[r].push_back(std::move(b));
        }
        continue;
      }
    }
    out[r].push_back(std::move(c));
  }
  if (s == Sharding::kReplicated) {
    // Saved once, by the rank with the fewest bytes so far (DCP's dedup, balanced by bytes).
    int best = static_cast<int>(std::min_element(bytes_per_rank->begin(), bytes_per_rank->end()) -
                                bytes_per_rank->begin());
    for (int r = 0; r < R; ++r) {
      if (r != best) out[r].clear();
    }
  }
  for (int r = 0; r < R; ++r) {
    if (o.drop_chunk && o.drop_chunk->first == t.name && o.drop_chunk->second == r) {
      out[r].clear();
      continue;
    }
    for (const ChunkSpec& c : out[r]) {
      (*bytes_per_rank)[r] += ByteSizeOf(t.dtype, c.sizes).value_or(0);
    }
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
    EncodeElement(t.dtype, seed, g, out.data() + e * esize);
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
                                const std::vector<ExampleTensor>& tensors, const WriteOptions& o) {
  if (o.ranks < 1) return absl::InvalidArgumentError("ranks must be at least 1");
  for (const ExampleTensor& t : tensors) {
    if (IsSubByte(t.dtype)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor ", t.name, ": the example writer does not generate sub-byte dtypes"));
    }
  }
  for (const ExampleTensor& t : tensors) {
    if ((t.sharding == Sharding::kStrided || t.sharding == Sharding::kStridedMesh) &&
        !o.logical_fqn) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", t.name,
                       ": strided sharding puts two chunks in one rank file, which only "
                       "the newest layout (logical_fqn, physical keys) can express"));
    }
  }
  RETURN_IF_ERROR(fs.MakeDirs(dir));
  std::vector<uint64_t> bytes(o.ranks, 0);
  // per rank: (tensor index, chunk)
  std::vector<std::vector<std::pair<size_t, ChunkSpec>>> per_rank(o.ranks);
  for (size_t i = 0; i < tensors.size(); ++i) {
    std::vector<std::vector<ChunkSpec>> chunks = PlanChunks(tensors, i, o, &bytes);
    for (int r = 0; r < o.ranks; ++r) {
      for (ChunkSpec& c : chunks[r]) per_rank[r].emplace_back(i, std::move(c));
    }
  }
  uint64_t total = 0, done = 0;
  for (uint64_t b : bytes) total += b;
  Manifest manifest;
  manifest.ranks = o.ranks;
  for (int r = 0; r < o.ranks; ++r) {
    std::vector<TensorSpec> specs;
    ShardingInfo info;
    std::map<std::string, const std::pair<size_t, ChunkSpec>*> by_key;
    std::map<std::string, int> count;
    for (const auto& item : per_rank[r]) count[tensors[item.first].name]++;
    std::map<std::string, int> next;
    for (const auto& item : per_rank[r]) {
      const ExampleTensor& t = tensors[item.first];
      const std::string key = count[t.name] > 1 ? PhysicalShardKey(t.name, next[t.name]++) : t.name;
      specs.push_back({key, t.dtype, item.second.sizes});
      info.saved_offsets[key] = item.second.offsets;
      if (o.logical_fqn) info.logical_fqn[key] = t.name;
      if (o.global_shape) info.global_shape[key] = t.shape;
      by_key[key] = &item;
    }
    ASSIGN_OR_RETURN(Header h, LayoutHeader(std::move(specs), ShardedFileMetadata(info)));
    const std::string name = ShardFileName(r, 1, 1);
    ASSIGN_OR_RETURN(AtomicFile out, AtomicFile::Create(fs, JoinPath(dir, name)));
    ManifestFile mf;
    mf.name = name;
    ContentHasher whole;
    const std::string head = SerializeHeader(h);
    if (o.manifest) whole.Update(head);
    RETURN_IF_ERROR(out.file().Append(head));
    for (const TensorEntry& e : h.tensors) {
      const auto* item = by_key.at(e.name);
      const std::string bytes_of = ChunkBytes(tensors[item->first], item->second);
      if (o.manifest) {  // checksums only when a manifest will carry them
        whole.Update(bytes_of);
        mf.tensor_xxh3.push_back(Xxh3(bytes_of));
      }
      RETURN_IF_ERROR(out.file().Append(bytes_of));
    }
    RETURN_IF_ERROR(out.Commit());
    mf.size = h.file_size();
    mf.xxh3 = whole.Digest();
    manifest.files.push_back(std::move(mf));
    done += h.buffer_size;
    if (o.progress) o.progress(done, total);
  }
  if (o.manifest) {
    RETURN_IF_ERROR(
        WriteFileAtomically(fs, JoinPath(dir, kManifestFileName), SerializeManifest(manifest)));
  }
  return absl::OkStatus();
}

}  // namespace safeshard
