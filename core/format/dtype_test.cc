#include "core/format/dtype.h"

#include "gtest/gtest.h"

namespace safeshard {
namespace {

TEST(DTypeTest, EveryDTypeRoundTripsItsName) {
  for (int i = 0; i < kNumDTypes; ++i) {
    DType t = static_cast<DType>(i);
    absl::StatusOr<DType> back = ParseDType(DTypeName(t));
    ASSERT_TRUE(back.ok()) << DTypeName(t);
    EXPECT_EQ(*back, t);
  }
}

TEST(DTypeTest, BitSizesMatchTheFormat) {
  const std::pair<const char*, int> expected[] = {
      {"BOOL", 8}, {"F4", 4},      {"F6_E2M3", 6}, {"F6_E3M2", 6}, {"U8", 8},
      {"I8", 8},   {"F8_E5M2", 8}, {"F8_E4M3", 8}, {"F8_E8M0", 8}, {"I16", 16},
      {"U16", 16}, {"F16", 16},    {"BF16", 16},   {"I32", 32},    {"U32", 32},
      {"F32", 32}, {"C64", 64},    {"F64", 64},    {"I64", 64},    {"U64", 64}};
  for (const auto& [name, bits] : expected) {
    absl::StatusOr<DType> t = ParseDType(name);
    ASSERT_TRUE(t.ok()) << name;
    EXPECT_EQ(BitsOf(*t), bits) << name;
  }
}

TEST(DTypeTest, RejectsUnknownNames) {
  EXPECT_FALSE(ParseDType("F128").ok());
  EXPECT_FALSE(ParseDType("bf16").ok());
  EXPECT_FALSE(ParseDType("").ok());
}

TEST(DTypeTest, ByteSizeHandlesScalarsEmptyAndSubByte) {
  EXPECT_EQ(*ByteSizeOf(DType::kI64, {}), 8u);
  EXPECT_EQ(*ByteSizeOf(DType::kF32, std::vector<uint64_t>{0, 7}), 0u);
  EXPECT_EQ(*ByteSizeOf(DType::kF4, std::vector<uint64_t>{2, 3}), 3u);
  EXPECT_FALSE(ByteSizeOf(DType::kF4, std::vector<uint64_t>{3}).ok());
  EXPECT_FALSE(ByteSizeOf(DType::kU8, std::vector<uint64_t>{1ull << 40, 1ull << 40}).ok());
}

TEST(DTypeTest, ClassifiesFloatingAndFloat8) {
  EXPECT_TRUE(IsFloatingPoint(DType::kBF16));
  EXPECT_FALSE(IsFloatingPoint(DType::kI64));
  EXPECT_TRUE(IsFloat8(DType::kF8_E4M3));
  EXPECT_FALSE(IsFloat8(DType::kF16));
  EXPECT_EQ(AlignmentOf(DType::kF4), 1);
  EXPECT_EQ(AlignmentOf(DType::kC64), 8);
}

}  // namespace
}  // namespace safeshard
