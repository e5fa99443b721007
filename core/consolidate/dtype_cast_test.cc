#include "core/consolidate/dtype_cast.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "gtest/gtest.h"

namespace safeshard {
namespace {

TEST(DTypeCastTest, BFloat16RoundsToNearestEven) {
  EXPECT_EQ(FloatToBFloat16(1.0f), 0x3F80);
  EXPECT_EQ(FloatToBFloat16(-2.0f), 0xC000);
  // 1 + 2^-8 is exactly halfway between bf16 1.0 and 1.0078125: ties to even (1.0).
  EXPECT_EQ(FloatToBFloat16(1.00390625f), 0x3F80);
  // Slightly above halfway rounds up.
  EXPECT_EQ(FloatToBFloat16(1.0040f), 0x3F81);
  EXPECT_TRUE(std::isnan(BFloat16ToFloat(FloatToBFloat16(std::nanf("")))));
  EXPECT_EQ(FloatToBFloat16(std::numeric_limits<float>::infinity()), 0x7F80);
  EXPECT_EQ(BFloat16ToFloat(0x3F80), 1.0f);
}

TEST(DTypeCastTest, HalfRoundTripsEveryValue) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    float f = HalfToFloat(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(HalfToFloat(FloatToHalf(f))));
      continue;
    }
    EXPECT_EQ(FloatToHalf(f), h) << std::hex << h;
  }
}

TEST(DTypeCastTest, HalfKnownValuesAndOverflow) {
  EXPECT_EQ(FloatToHalf(1.0f), 0x3C00);
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7BFF);
  EXPECT_EQ(FloatToHalf(1e6f), 0x7C00);
  EXPECT_EQ(FloatToHalf(-0.0f), 0x8000);
  EXPECT_EQ(FloatToHalf(5.9604645e-8f), 0x0001);  // smallest subnormal
  EXPECT_EQ(HalfToFloat(0x0001), 5.9604645e-8f);
}

TEST(DTypeCastTest, CastElementsConvertsArrays) {
  float src[3] = {1.5f, -0.25f, 3.0f};
  uint16_t bf[3];
  CastElements(DType::kF32, src, DType::kBF16, bf, 3);
  float back[3];
  CastElements(DType::kBF16, bf, DType::kF32, back, 3);
  EXPECT_EQ(back[0], 1.5f);
  EXPECT_EQ(back[1], -0.25f);
  double d[3];
  CastElements(DType::kF32, src, DType::kF64, d, 3);
  EXPECT_EQ(d[2], 3.0);
}

TEST(DTypeCastTest, OnlyFloatingNonFp8) {
  EXPECT_TRUE(CanCast(DType::kF16, DType::kBF16));
  EXPECT_FALSE(CanCast(DType::kF8_E4M3, DType::kBF16));
  EXPECT_FALSE(CanCast(DType::kF32, DType::kF8_E5M2));
  EXPECT_FALSE(CanCast(DType::kI64, DType::kF32));
  EXPECT_FALSE(CanCast(DType::kC64, DType::kF32));
}

}  // namespace
}  // namespace safeshard
