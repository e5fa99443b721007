// quant.h: block-quantized weights — decoding tables, pairing of weights with their scales, and
// dequantization into BF16/F16/F32, a row segment at a time (torch-free, no I/O).
//
// Two schemes ship in open checkpoints:
//   - FP8 block-scaled (DeepSeek-V3/R1 and successors): `X.weight` F8_E4M3 [..., M, N] with
//     `X.weight_scale_inv` F32 [..., ceil(M/R), ceil(N/C)], one scale per R x C block (128 x 128
//     unless config.json's quantization_config.weight_block_size says otherwise); value = code *
//     scale of its block.
//   - MXFP4 (gpt-oss): `X_blocks` U8 [..., G, 16] (two FP4 E2M1 codes per byte, low nibble first)
//     with `X_scales` U8/F8_E8M0 [..., G]: value = fp4 * 2^(scale - 127), 32 values per scale;
//     the logical tensor is `X` [..., G * 32].
//
//   quant::Pairing p = quant::FindPairs(tensors, {128, 128});
//   if (!p.problems.empty()) ...;  // each names both tensors
//   quant::DequantizeFp8Row(DType::kF8_E4M3, codes, n, col0, 128, scales, DType::kBF16, dst);
//
// Conversions compute code * scale in float and round once to the target (nearest even), as
// `(w.float() * s).to(torch.bfloat16)` does; NaN codes stay NaN.
#ifndef SAFESHARD_CORE_QUANT_QUANT_H_
#define SAFESHARD_CORE_QUANT_QUANT_H_

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/format/dtype.h"

namespace safeshard::quant {

// The value of every code of an 8-bit float format: F8_E4M3 (the "FN" variant: no infinities,
// S.1111.111 is NaN), F8_E5M2 (IEEE-like: infinities, NaNs), F8_E4M3FNUZ and F8_E5M2FNUZ (bias 8
// and 16, no infinities, no negative zero: 0x80 is the only NaN), F8_E8M0 (2^(c - 127), 0xFF NaN).
// Requires IsFloat8(t).
const std::array<float, 256>& Fp8Table(DType t);
// The 16 values of FP4 E2M1 (sign bit 3, two exponent bits with bias 1, one mantissa bit):
// 0, 0.5, 1, 1.5, 2, 3, 4, 6 and their negatives.
const std::array<float, 16>& Fp4Table();

enum class Scheme { kBlockFp8, kMxfp4 };

struct BlockSize {
  uint64_t rows = 128;
  uint64_t cols = 128;
  bool operator==(const BlockSize&) const = default;
};
// "128" (square) or "128x64" (rows x cols).
absl::StatusOr<BlockSize> ParseBlockSize(absl::string_view text);
// quantization_config.weight_block_size of a config.json ([rows, cols]); nullopt when the text
// has none (or is not JSON). An unusable value (not two positive integers) is an error.
absl::StatusOr<std::optional<BlockSize>> BlockSizeFromConfig(absl::string_view config_json);

struct TensorDesc {
  std::string name;
  DType dtype = DType::kU8;
  std::vector<uint64_t> shape;
};

struct QuantPair {
  Scheme scheme = Scheme::kBlockFp8;
  std::string weight;                  // X.weight / X_blocks
  std::string scale;                   // X.weight_scale_inv / X_scales
  std::string output;                  // the logical tensor: X.weight / X
  DType code_dtype = DType::kF8_E4M3;  // FP8 codes; kF4 for MXFP4
  DType scale_dtype = DType::kF32;
  std::vector<uint64_t> output_shape;
  std::vector<uint64_t> scale_shape;
  BlockSize block;  // MXFP4: {1, 32} over the logical [..., G * 32]
  // "fp8 128x128 (F8_E4M3, F32 scales)" / "mxfp4 (32 per E8M0 scale)".
  std::string Describe() const;
};

struct PairProblem {
  std::string tensor;   // the tensor it is about (the weight, or a scale without one)
  std::string message;  // names both tensors and what disagrees
  // A quantized pair that is broken (an FP8 weight whose scale has another shape or dtype,
  // MXFP4 blocks and scales that disagree): the model cannot be decoded. Not blocking: a
  // X.weight_scale_inv without its FP8 weight (left over, or the weight was lost).
  bool blocking = true;
};

struct Pairing {
  std::vector<QuantPair> pairs;  // sorted by weight name
  std::vector<PairProblem> problems;
  // An FP8 weight with no scale: only a problem when dequantizing (some models keep plain FP8
  // tensors beside block-quantized ones); listed here, names sorted.
  std::vector<std::string> unscaled_fp8;
};
// Finds the quantized pairs among `tensors`. A name alone never makes a pair: MXFP4 needs U8
// [..., G, 16] blocks and U8/F8_E8M0 scales under X_blocks/X_scales (an F32 "logit_scales" is
// just a tensor); FP8 needs an 8-bit float X.weight beside X.weight_scale_inv.
Pairing FindPairs(const std::vector<TensorDesc>& tensors, BlockSize block);

// Targets of dequantization: BF16, F16, F32.
bool IsDequantizeTarget(DType t);
// "bf16", "bfloat16", "torch.bfloat16", "f16", "half", "f32", "float", ... -> the dtype.
absl::StatusOr<DType> ParseDequantizeTarget(absl::string_view text);

// The value of one scale element (F32, BF16, F16, F64, F8_E8M0 or U8 read as E8M0).
float ScaleValue(DType scale_dtype, const unsigned char* p);
bool IsScaleDType(Scheme s, DType t);

// FP8: `n` codes of one row, columns [col0, col0 + n), into `dst` (n elements of `out`).
// scales[k] is the scale of column block col0 / block_cols + k.
void DequantizeFp8Row(DType code, const unsigned char* codes, uint64_t n, uint64_t col0,
                      uint64_t block_cols, const float* scales, DType out, void* dst);
// MXFP4: `n` values from value index v0 (even; n even) of a packed E2M1 stream (value 2i in the
// low nibble of byte i); `packed` points at the byte holding value v0. scales[k] is the E8M0
// code of block v0 / 32 + k.
void DequantizeMxfp4(const unsigned char* packed, uint64_t v0, uint64_t n,
                     const unsigned char* scales, DType out, void* dst);

// Whole-tensor reference (tests, small tensors): a [..., M, N] FP8 weight with its scales.
std::vector<float> DequantizeFp8Tensor(DType code, const unsigned char* codes,
                                       const std::vector<uint64_t>& shape, const float* scales,
                                       BlockSize block);

}  // namespace safeshard::quant

#endif  // SAFESHARD_CORE_QUANT_QUANT_H_
