#include "core/example/example.h"

#include <cmath>
#include <cstring>

#include "gtest/gtest.h"

namespace safeshard {
namespace {

// Decoded here from the bit layouts, not with the generator's code.
double DecodeBF16(const char* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  const uint32_t b = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

double DecodeF16(const char* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  const int e = (h >> 10) & 0x1f, m = h & 0x3ff;
  const double mag = e == 0 ? std::ldexp(m, -24) : std::ldexp(1024 + m, e - 25);
  return (h & 0x8000) ? -mag : mag;
}

double DecodeE4M3(uint8_t c) {
  const int e = (c >> 3) & 0xf, m = c & 7;
  const double mag = e == 0 ? std::ldexp(m, -9) : std::ldexp(8 + m, e - 10);
  return (c & 0x80) ? -mag : mag;
}

TEST(ExampleTest, ValuesLookLikeWeightsInEveryDType) {
  for (DType d : {DType::kF32, DType::kBF16, DType::kF16, DType::kF8_E4M3}) {
    ExampleTensor t{"w", d, {64, 64}, Sharding::kRow};
    const std::string bytes = ExpectedTensorBytes(t);
    const size_t esize = static_cast<size_t>(BitsOf(d) / 8), n = 64 * 64;
    double sum = 0, sq = 0;
    for (size_t i = 0; i < n; ++i) {
      const char* p = bytes.data() + i * esize;
      double v = 0;
      if (d == DType::kF32) {
        float f;
        std::memcpy(&f, p, 4);
        v = f;
      } else if (d == DType::kBF16) {
        v = DecodeBF16(p);
      } else if (d == DType::kF16) {
        v = DecodeF16(p);
      } else {
        v = DecodeE4M3(static_cast<uint8_t>(*p));
      }
      ASSERT_TRUE(std::isfinite(v)) << DTypeName(d) << " element " << i;
      ASSERT_LT(std::fabs(v), 8.0) << DTypeName(d) << " element " << i;  // no +-3.4e38
      sum += v;
      sq += v * v;
    }
    const double mean = sum / n, sd = std::sqrt(sq / n - mean * mean);
    EXPECT_NEAR(mean, 0.0, 0.1) << DTypeName(d);  // N(0, 1)
    EXPECT_NEAR(sd, 1.0, 0.1) << DTypeName(d);
  }
  // Integers are small, booleans 0 or 1.
  const std::string i64 = ExpectedTensorBytes({"ids", DType::kI64, {256}, Sharding::kRow});
  for (size_t i = 0; i < 256; ++i) {
    int64_t x;
    std::memcpy(&x, i64.data() + 8 * i, 8);
    EXPECT_LE(std::llabs(x), 127);
  }
  for (char b : ExpectedTensorBytes({"mask", DType::kBOOL, {256}, Sharding::kRow})) {
    EXPECT_TRUE(b == 0 || b == 1);
  }
}

}  // namespace
}  // namespace safeshard
