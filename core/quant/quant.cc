#include "core/quant/quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/consolidate/dtype_cast.h"
#include "core/format/internal/json_util.h"
#include "nlohmann/json.hpp"

namespace safeshard::quant {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// A minifloat with `e` exponent bits, `m` mantissa bits and `bias`.
float Minifloat(unsigned code, int e, int m, int bias) {
  const bool neg = (code >> (e + m)) & 1;
  const int exp = static_cast<int>((code >> m) & ((1u << e) - 1));
  const int man = static_cast<int>(code & ((1u << m) - 1));
  const float v = exp == 0 ? std::ldexp(static_cast<float>(man), 1 - bias - m)
                           : std::ldexp(static_cast<float>((1 << m) + man), exp - bias - m);
  return neg ? -v : v;
}

std::array<float, 256> BuildFp8(DType t) {
  std::array<float, 256> out{};
  for (unsigned c = 0; c < 256; ++c) {
    switch (t) {
      case DType::kF8_E4M3: out[c] = (c & 0x7f) == 0x7f ? kNaN : Minifloat(c, 4, 3, 7); break;
      case DType::kF8_E5M2:
        if ((c & 0x7c) == 0x7c) {
          out[c] = (c & 0x03) != 0 ? kNaN : ((c & 0x80) ? -kInf : kInf);
        } else {
          out[c] = Minifloat(c, 5, 2, 15);
        }
        break;
      case DType::kF8_E4M3FNUZ: out[c] = c == 0x80 ? kNaN : Minifloat(c, 4, 3, 8); break;
      case DType::kF8_E5M2FNUZ: out[c] = c == 0x80 ? kNaN : Minifloat(c, 5, 2, 16); break;
      case DType::kF8_E8M0:
        out[c] = c == 0xff ? kNaN : std::ldexp(1.0f, static_cast<int>(c) - 127);
        break;
      default: out[c] = kNaN;
    }
  }
  return out;
}

// Stores float values as the target dtype (round to nearest even).
struct ToBF16 {
  static constexpr size_t kSize = 2;
  static void Put(float v, unsigned char* p) {
    const uint16_t b = FloatToBFloat16(v);
    std::memcpy(p, &b, 2);
  }
};
struct ToF16 {
  static constexpr size_t kSize = 2;
  static void Put(float v, unsigned char* p) {
    const uint16_t h = FloatToHalf(v);
    std::memcpy(p, &h, 2);
  }
};
struct ToF32 {
  static constexpr size_t kSize = 4;
  static void Put(float v, unsigned char* p) { std::memcpy(p, &v, 4); }
};

// Per thread: the 256 outputs of every code for the scales seen last (a scale covers a whole
// block, 16,384 elements for 128x128, so each table is reused across a block's rows). A table
// entry is exactly what code * scale rounds to: the lookup changes nothing but the speed (the
// per-element multiply-and-round was half of a dequantization's time). Fixed-size, so nothing
// is allocated while reading a mapped input.
struct Fp8TableCache {
  static constexpr int kSlots = 64;
  DType code = DType::kU8, out = DType::kU8;
  uint32_t key[kSlots];
  bool valid[kSlots];
  alignas(64) unsigned char tables[kSlots][256 * 4];
};
thread_local Fp8TableCache fp8_cache;

template <typename To>
const unsigned char* ScaledTable(const std::array<float, 256>& table, DType code, DType out,
                                 float s) {
  Fp8TableCache& c = fp8_cache;
  if (c.code != code || c.out != out) {
    c.code = code;
    c.out = out;
    std::fill(std::begin(c.valid), std::end(c.valid), false);
  }
  uint32_t key;
  std::memcpy(&key, &s, 4);
  const int slot = static_cast<int>((key * 2654435761u) >> 26);
  unsigned char* t = c.tables[slot];
  if (!c.valid[slot] || c.key[slot] != key) {
    for (int v = 0; v < 256; ++v) To::Put(table[v] * s, t + v * To::kSize);
    c.key[slot] = key;
    c.valid[slot] = true;
  }
  return t;
}

template <typename To>
void Fp8Row(const std::array<float, 256>& table, DType code, DType out, const unsigned char* codes,
            uint64_t n, uint64_t col0, uint64_t bc, const float* scales, unsigned char* dst) {
  uint64_t i = 0;
  const uint64_t first_block = col0 / bc;
  while (i < n) {
    const uint64_t col = col0 + i;
    const uint64_t k = col / bc - first_block;
    const uint64_t end = std::min(n, i + (bc - col % bc));
    const unsigned char* t = ScaledTable<To>(table, code, out, scales[k]);
    for (; i < end; ++i) std::memcpy(dst + i * To::kSize, t + codes[i] * To::kSize, To::kSize);
  }
}

template <typename To>
void Mxfp4(const unsigned char* packed, uint64_t v0, uint64_t n, const unsigned char* scales,
           unsigned char* dst) {
  const std::array<float, 16>& lut = Fp4Table();
  const std::array<float, 256>& e8m0 = Fp8Table(DType::kF8_E8M0);
  const uint64_t first_block = v0 / 32;
  for (uint64_t i = 0; i < n; i += 2) {
    const float s = e8m0[scales[(v0 + i) / 32 - first_block]];
    const unsigned char b = packed[i / 2];
    To::Put(lut[b & 0x0f] * s, dst + i * To::kSize);
    To::Put(lut[b >> 4] * s, dst + (i + 1) * To::kSize);
  }
}

std::string Shape(const std::vector<uint64_t>& s) {
  return absl::StrCat("[", absl::StrJoin(s, ", "), "]");
}

uint64_t CeilDiv(uint64_t a, uint64_t b) {
  return a / b + (a % b != 0);
}

}  // namespace

const std::array<float, 256>& Fp8Table(DType t) {
  static const std::array<float, 256> e4m3 = BuildFp8(DType::kF8_E4M3),
                                      e5m2 = BuildFp8(DType::kF8_E5M2),
                                      e4m3fnuz = BuildFp8(DType::kF8_E4M3FNUZ),
                                      e5m2fnuz = BuildFp8(DType::kF8_E5M2FNUZ),
                                      e8m0 = BuildFp8(DType::kF8_E8M0);
  switch (t) {
    case DType::kF8_E4M3: return e4m3;
    case DType::kF8_E5M2: return e5m2;
    case DType::kF8_E4M3FNUZ: return e4m3fnuz;
    case DType::kF8_E5M2FNUZ: return e5m2fnuz;
    default: return e8m0;
  }
}

const std::array<float, 16>& Fp4Table() {
  static const std::array<float, 16> t = [] {
    std::array<float, 16> out{};
    for (unsigned c = 0; c < 16; ++c) out[c] = Minifloat(c, 2, 1, 1);
    return out;
  }();
  return t;
}

absl::StatusOr<BlockSize> ParseBlockSize(absl::string_view text) {
  std::vector<std::string> parts = absl::StrSplit(absl::AsciiStrToLower(text), 'x');
  BlockSize b;
  uint64_t r = 0, c = 0;
  const bool ok = (parts.size() == 1 && absl::SimpleAtoi(parts[0], &r) && (c = r) > 0) ||
                  (parts.size() == 2 && absl::SimpleAtoi(parts[0], &r) &&
                   absl::SimpleAtoi(parts[1], &c) && r > 0 && c > 0);
  if (!ok || r > (1u << 20) || c > (1u << 20)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "block size \"", text, "\" is not a positive size such as 128 or 128x128 (rows x cols)"));
  }
  b.rows = r;
  b.cols = c;
  return b;
}

absl::StatusOr<std::optional<BlockSize>> BlockSizeFromConfig(absl::string_view config_json) {
  nlohmann::json j = nlohmann::json::parse(config_json.begin(), config_json.end(), nullptr,
                                           /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return std::optional<BlockSize>();
  auto q = j.find("quantization_config");
  if (q == j.end() || !q->is_object()) return std::optional<BlockSize>();
  auto w = q->find("weight_block_size");
  if (w == q->end() || w->is_null()) return std::optional<BlockSize>();
  if (!w->is_array() || w->size() != 2 || !(*w)[0].is_number_unsigned() ||
      !(*w)[1].is_number_unsigned() || (*w)[0].get<uint64_t>() == 0 ||
      (*w)[1].get<uint64_t>() == 0 || (*w)[0].get<uint64_t>() > (1u << 20) ||
      (*w)[1].get<uint64_t>() > (1u << 20)) {
    return absl::InvalidArgumentError(absl::StrCat("quantization_config.weight_block_size is ",
                                                   w->dump(),
                                                   ", not two positive integers [rows, cols]"));
  }
  return std::optional<BlockSize>(BlockSize{(*w)[0].get<uint64_t>(), (*w)[1].get<uint64_t>()});
}

std::string QuantPair::Describe() const {
  if (scheme == Scheme::kMxfp4) {
    return absl::StrCat("mxfp4 (E2M1 codes, one ", DTypeName(scale_dtype),
                        " E8M0 scale per 32 values)");
  }
  return absl::StrCat("fp8 ", block.rows, "x", block.cols, " blocks (", DTypeName(code_dtype),
                      " codes, ", DTypeName(scale_dtype), " scales)");
}

bool IsScaleDType(Scheme s, DType t) {
  if (s == Scheme::kMxfp4) return t == DType::kU8 || t == DType::kF8_E8M0;
  return t == DType::kF32 || t == DType::kBF16 || t == DType::kF16 || t == DType::kF64;
}

Pairing FindPairs(const std::vector<TensorDesc>& tensors, BlockSize block) {
  Pairing p;
  std::map<std::string, const TensorDesc*> by_name;
  for (const TensorDesc& t : tensors) by_name[t.name] = &t;
  constexpr absl::string_view kFp8Scale = "_scale_inv", kMxBlocks = "_blocks",
                              kMxScales = "_scales";
  using internal::Quote;
  auto problem = [&](const std::string& tensor, std::string msg, bool blocking) {
    p.problems.push_back({tensor, std::move(msg), blocking});
  };
  for (const auto& [name, t] : by_name) {
    if (absl::EndsWith(name, kFp8Scale)) {
      const std::string weight = name.substr(0, name.size() - kFp8Scale.size());
      auto w = by_name.find(weight);
      if (w == by_name.end()) {
        problem(name, absl::StrCat("scale ", Quote(name), " has no weight ", Quote(weight)), false);
        continue;
      }
      const TensorDesc& wt = *w->second;
      if (!IsFloat8(wt.dtype) || wt.dtype == DType::kF8_E8M0) {
        problem(weight,
                absl::StrCat("weight ", Quote(weight), " is ", DTypeName(wt.dtype),
                             ", not FP8, yet has a block scale ", Quote(name), " (left over?)"),
                false);
        continue;
      }
      QuantPair q;
      q.scheme = Scheme::kBlockFp8;
      q.weight = weight;
      q.scale = name;
      q.output = weight;
      q.code_dtype = wt.dtype;
      q.scale_dtype = t->dtype;
      q.output_shape = wt.shape;
      q.scale_shape = t->shape;
      q.block = block;
      if (!IsScaleDType(q.scheme, t->dtype)) {
        problem(weight,
                absl::StrCat("scale ", Quote(name), " of ", Quote(weight), " is ",
                             DTypeName(t->dtype), ", not F32, BF16, F16 or F64"),
                true);
        continue;
      }
      std::vector<uint64_t> want = wt.shape;
      if (want.size() >= 2) {
        want[want.size() - 2] = CeilDiv(want[want.size() - 2], block.rows);
        want.back() = CeilDiv(want.back(), block.cols);
      }
      if (wt.shape.size() < 2 || t->shape != want) {
        problem(weight,
                absl::StrCat("scale ", Quote(name), " has shape ", Shape(t->shape), " but weight ",
                             Quote(weight), " ", Shape(wt.shape),
                             wt.shape.size() < 2
                                 ? " has fewer than 2 dimensions"
                                 : absl::StrCat(" needs ", Shape(want), " for ", block.rows, "x",
                                                block.cols, " blocks")),
                true);
        continue;
      }
      p.pairs.push_back(std::move(q));
    } else if (absl::EndsWith(name, kMxBlocks)) {
      // MXFP4 only when both halves look like it: U8 [..., G, 16] blocks, U8/E8M0 scales.
      const std::string base = name.substr(0, name.size() - kMxBlocks.size());
      const std::string scale = base + std::string(kMxScales);
      auto s = by_name.find(scale);
      const std::vector<uint64_t>& b = t->shape;
      if (s == by_name.end() || t->dtype != DType::kU8 || b.size() < 2 || b.back() != 16 ||
          !IsScaleDType(Scheme::kMxfp4, s->second->dtype)) {
        continue;
      }
      const TensorDesc& st = *s->second;
      QuantPair q;
      q.scheme = Scheme::kMxfp4;
      q.weight = name;
      q.scale = scale;
      q.output = base;
      q.code_dtype = DType::kF4;
      q.scale_dtype = st.dtype;
      q.scale_shape = st.shape;
      q.block = {1, 32};
      if (st.shape != std::vector<uint64_t>(b.begin(), b.end() - 1)) {
        problem(name,
                absl::StrCat("MXFP4 blocks ", Quote(name), " ", Shape(b), " and scales ",
                             Quote(scale), " ", Shape(st.shape),
                             " disagree: blocks must be [..., G, 16] and scales [..., G]"),
                true);
        continue;
      }
      const uint64_t g = b[b.size() - 2];
      if (g > (uint64_t{1} << 58)) {
        problem(name,
                absl::StrCat("MXFP4 blocks ", Quote(name), " ", Shape(b), ": ", g,
                             " blocks of 32 values overflow 64 bits"),
                true);
        continue;
      }
      q.output_shape.assign(b.begin(), b.end() - 2);
      q.output_shape.push_back(g * 32);
      if (by_name.count(base)) {
        problem(name,
                absl::StrCat("MXFP4 blocks ", Quote(name), " would dequantize to ", Quote(base),
                             ", which is already a tensor"),
                true);
        continue;
      }
      p.pairs.push_back(std::move(q));
    }
  }
  for (const auto& [name, t] : by_name) {
    if (IsFloat8(t->dtype) && t->dtype != DType::kF8_E8M0 &&
        !by_name.count(name + std::string(kFp8Scale))) {
      p.unscaled_fp8.push_back(name);
    }
  }
  return p;
}

bool IsDequantizeTarget(DType t) {
  return t == DType::kBF16 || t == DType::kF16 || t == DType::kF32;
}

absl::StatusOr<DType> ParseDequantizeTarget(absl::string_view text) {
  std::string s = absl::AsciiStrToLower(absl::StripAsciiWhitespace(text));
  if (absl::StartsWith(s, "torch.")) s = s.substr(6);
  if (s == "bf16" || s == "bfloat16") return DType::kBF16;
  if (s == "f16" || s == "fp16" || s == "float16" || s == "half") return DType::kF16;
  if (s == "f32" || s == "fp32" || s == "float32" || s == "float") return DType::kF32;
  return absl::InvalidArgumentError(
      absl::StrCat("dequantize target \"", text, "\" is not bf16, f16 or f32"));
}

float ScaleValue(DType t, const unsigned char* p) {
  if (t == DType::kU8 || t == DType::kF8_E8M0) return Fp8Table(DType::kF8_E8M0)[*p];
  return static_cast<float>(LoadFloat(t, p));  // F32, F64, F16, BF16
}

void DequantizeFp8Row(DType code, const unsigned char* codes, uint64_t n, uint64_t col0,
                      uint64_t block_cols, const float* scales, DType out, void* dst) {
  const std::array<float, 256>& table = Fp8Table(code);
  auto* d = static_cast<unsigned char*>(dst);
  switch (out) {
    case DType::kBF16:
      Fp8Row<ToBF16>(table, code, out, codes, n, col0, block_cols, scales, d);
      break;
    case DType::kF16: Fp8Row<ToF16>(table, code, out, codes, n, col0, block_cols, scales, d); break;
    default: Fp8Row<ToF32>(table, code, out, codes, n, col0, block_cols, scales, d); break;
  }
}

void DequantizeMxfp4(const unsigned char* packed, uint64_t v0, uint64_t n,
                     const unsigned char* scales, DType out, void* dst) {
  auto* d = static_cast<unsigned char*>(dst);
  switch (out) {
    case DType::kBF16: Mxfp4<ToBF16>(packed, v0, n, scales, d); break;
    case DType::kF16: Mxfp4<ToF16>(packed, v0, n, scales, d); break;
    default: Mxfp4<ToF32>(packed, v0, n, scales, d); break;
  }
}

std::vector<float> DequantizeFp8Tensor(DType code, const unsigned char* codes,
                                       const std::vector<uint64_t>& shape, const float* scales,
                                       BlockSize block) {
  const uint64_t n = shape.back(), m = shape[shape.size() - 2];
  uint64_t rows = 1;
  for (size_t d = 0; d + 1 < shape.size(); ++d) rows *= shape[d];
  const uint64_t sm = CeilDiv(m, block.rows), sn = CeilDiv(n, block.cols);
  std::vector<float> out(rows * n);
  for (uint64_t r = 0; r < rows; ++r) {
    const uint64_t lead = r / m, row = r % m;
    const float* srow = scales + (lead * sm + row / block.rows) * sn;
    DequantizeFp8Row(code, codes + r * n, n, 0, block.cols, srow, DType::kF32, &out[r * n]);
  }
  return out;
}

}  // namespace safeshard::quant
