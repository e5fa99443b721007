// dtype_cast.h: element conversions between floating-point safetensors dtypes.
//
// Supported: any of F64, F32, F16, BF16 to any other (round to nearest even; NaN stays NaN,
// infinities and signed zeros kept; overflow to F16 becomes infinity as in PyTorch's .to()).
// FP8, F4/F6 and complex types are never converted.
//
//   if (CanCast(DType::kF32, DType::kBF16)) CastElements(DType::kF32, src, DType::kBF16, dst, n);
#ifndef SAFESHARD_CORE_CONSOLIDATE_DTYPE_CAST_H_
#define SAFESHARD_CORE_CONSOLIDATE_DTYPE_CAST_H_

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "core/format/dtype.h"

namespace safeshard {

bool CanCast(DType from, DType to);
// Converts `n` elements. `src` and `dst` must not overlap. Requires CanCast(from, to).
void CastElements(DType from, const void* src, DType to, void* dst, size_t n);

// One element of F64, F32, F16 or BF16 at `p` (unaligned), as a double.
double LoadFloat(DType t, const unsigned char* p);

float HalfToFloat(uint16_t h);
uint16_t FloatToHalf(float f);
float BFloat16ToFloat(uint16_t b);
// Inline: the inner loop of casts and dequantization (a call per element cost half their time).
inline uint16_t FloatToBFloat16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    return static_cast<uint16_t>((u >> 16) | 0x0040);  // NaN: quiet, sign kept
  }
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1)) >> 16);  // nearest even
}

}  // namespace safeshard

#endif  // SAFESHARD_CORE_CONSOLIDATE_DTYPE_CAST_H_
