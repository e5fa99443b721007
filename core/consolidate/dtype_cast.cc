#include "core/consolidate/dtype_cast.h"

#include <cmath>
#include <cstring>

namespace safeshard {
namespace {

bool Castable(DType t) {
  return t == DType::kF64 || t == DType::kF32 || t == DType::kF16 || t == DType::kBF16;
}

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

void Store(DType t, double v, unsigned char* p) {
  switch (t) {
    case DType::kF64: std::memcpy(p, &v, 8); break;
    case DType::kF32: {
      float f = static_cast<float>(v);
      std::memcpy(p, &f, 4);
      break;
    }
    case DType::kF16: {
      uint16_t h = FloatToHalf(static_cast<float>(v));
      std::memcpy(p, &h, 2);
      break;
    }
    default: {
      uint16_t b = FloatToBFloat16(static_cast<float>(v));
      std::memcpy(p, &b, 2);
      break;
    }
  }
}

}  // namespace

double LoadFloat(DType t, const unsigned char* p) {
  switch (t) {
    case DType::kF64: {
      double d;
      std::memcpy(&d, p, 8);
      return d;
    }
    case DType::kF32: {
      float f;
      std::memcpy(&f, p, 4);
      return f;
    }
    case DType::kF16: {
      uint16_t h;
      std::memcpy(&h, p, 2);
      return HalfToFloat(h);
    }
    default: {
      uint16_t b;
      std::memcpy(&b, p, 2);
      return BFloat16ToFloat(b);
    }
  }
}

float BFloat16ToFloat(uint16_t b) {
  return FromBits(static_cast<uint32_t>(b) << 16);
}

float HalfToFloat(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1F;
  uint32_t man = h & 0x3FF;
  if (exp == 0) {
    if (man == 0) return FromBits(sign);
    // Subnormal: value = man * 2^-24.
    float v = std::ldexp(static_cast<float>(man), -24);
    return sign ? -v : v;
  }
  if (exp == 31) return FromBits(sign | 0x7F800000 | (man << 13));
  return FromBits(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t FloatToHalf(float f) {
  uint32_t u = Bits(f);
  uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000);
  uint32_t abs = u & 0x7FFFFFFF;
  if (abs >= 0x7F800000) {  // inf or nan
    return static_cast<uint16_t>(sign | 0x7C00 |
                                 (abs > 0x7F800000 ? 0x200 | ((abs >> 13) & 0x3FF) : 0));
  }
  if (abs >= 0x477FF000) return static_cast<uint16_t>(sign | 0x7C00);  // rounds to >= 65520: inf
  if (abs < 0x38800000) {  // below the smallest normal half (2^-14): subnormal or zero
    // Round abs * 2^24 to nearest even integer.
    float v = FromBits(abs);
    float scaled = v * 16777216.0f;    // exact: power of two
    float r = std::nearbyint(scaled);  // default rounding mode: to nearest even
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(r));
  }
  // Normal: rebias exponent, round mantissa from 23 to 10 bits (nearest even).
  uint32_t rounded = abs + 0xFFF + ((abs >> 13) & 1);
  return static_cast<uint16_t>(sign | ((rounded - 0x38000000) >> 13));
}

bool CanCast(DType from, DType to) {
  return Castable(from) && Castable(to);
}

void CastElements(DType from, const void* src, DType to, void* dst, size_t n) {
  const auto* s = static_cast<const unsigned char*>(src);
  auto* d = static_cast<unsigned char*>(dst);
  const size_t ss = BitsOf(from) / 8, ds = BitsOf(to) / 8;
  if (from == to) {
    std::memcpy(dst, src, n * ss);
    return;
  }
  if (from == DType::kF32 && to == DType::kBF16) {
    for (size_t i = 0; i < n; ++i) {
      float f;
      std::memcpy(&f, s + 4 * i, 4);
      uint16_t b = FloatToBFloat16(f);
      std::memcpy(d + 2 * i, &b, 2);
    }
    return;
  }
  for (size_t i = 0; i < n; ++i) Store(to, LoadFloat(from, s + i * ss), d + i * ds);
}

}  // namespace safeshard
