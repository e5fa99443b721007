// Decoded values are checked against tables built here from the formats' bit definitions
// (sign, exponent field, mantissa field, bias; special codes listed by hand), never from the
// code under test.
#include "core/quant/quant.h"

#include <cmath>
#include <cstring>

#include "core/testing/testing.h"
#include "gtest/gtest.h"

namespace safeshard::quant {
namespace {

using testing::ReferenceBf16;
using testing::ReferenceF8;

double Reference(unsigned code, int ebits, int mbits, int bias) {
  return testing::ReferenceMinifloat(code, ebits, mbits, bias);
}

void ExpectSame(double want, float got, unsigned code, const char* fmt) {
  if (std::isnan(want)) {
    EXPECT_TRUE(std::isnan(got)) << fmt << " code " << code;
  } else {
    EXPECT_EQ(static_cast<double>(got), want) << fmt << " code " << code;
    EXPECT_EQ(std::signbit(got), std::signbit(want)) << fmt << " code " << code;
  }
}

TEST(QuantTablesTest, F8E4M3EveryCode) {
  const auto& t = Fp8Table(DType::kF8_E4M3);
  for (unsigned c = 0; c < 256; ++c) {
    const bool nan = (c & 0x7f) == 0x7f;  // S.1111.111; no infinities
    ExpectSame(nan ? NAN : Reference(c, 4, 3, 7), t[c], c, "E4M3");
  }
  EXPECT_EQ(t[0x7e], 448.0f);
  EXPECT_EQ(t[0x01], std::ldexp(1.0f, -9));
  EXPECT_EQ(t[0x38], 1.0f);
  EXPECT_EQ(t[0xb8], -1.0f);
}

TEST(QuantTablesTest, F8E5M2EveryCode) {
  const auto& t = Fp8Table(DType::kF8_E5M2);
  for (unsigned c = 0; c < 256; ++c) {
    const bool special = ((c >> 2) & 0x1f) == 0x1f;
    double want = Reference(c, 5, 2, 15);
    if (special) want = (c & 3) ? NAN : ((c & 0x80) ? -INFINITY : INFINITY);
    ExpectSame(want, t[c], c, "E5M2");
  }
  EXPECT_EQ(t[0x7b], 57344.0f);
  EXPECT_EQ(t[0x3c], 1.0f);
}

TEST(QuantTablesTest, FnuzVariantsEveryCode) {
  const auto& e4 = Fp8Table(DType::kF8_E4M3FNUZ);
  const auto& e5 = Fp8Table(DType::kF8_E5M2FNUZ);
  for (unsigned c = 0; c < 256; ++c) {
    ExpectSame(c == 0x80 ? NAN : Reference(c, 4, 3, 8), e4[c], c, "E4M3FNUZ");
    ExpectSame(c == 0x80 ? NAN : Reference(c, 5, 2, 16), e5[c], c, "E5M2FNUZ");
  }
  EXPECT_EQ(e4[0x7f], 240.0f);
  EXPECT_EQ(e5[0x7f], 57344.0f);
  EXPECT_EQ(e4[0x40], 1.0f);
}

TEST(QuantTablesTest, E8M0EveryCode) {
  const auto& t = Fp8Table(DType::kF8_E8M0);
  for (unsigned c = 0; c < 256; ++c) {
    ExpectSame(c == 0xff ? NAN : std::pow(2.0, static_cast<int>(c) - 127), t[c], c, "E8M0");
  }
  EXPECT_EQ(t[127], 1.0f);
}

TEST(QuantTablesTest, Fp4E2M1EveryCode) {
  const double want[16] = {0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6};
  for (unsigned c = 0; c < 16; ++c) {
    ExpectSame(want[c], Fp4Table()[c], c, "E2M1");
    ExpectSame(Reference(c, 2, 1, 1), Fp4Table()[c], c, "E2M1 by bits");
  }
}

TEST(DequantizeTest, Fp8RowAppliesEachColumnBlocksScale) {
  // One row of 10 columns, blocks of 4: scales for blocks 1, 2 (columns 5..9 start mid-block).
  unsigned char codes[5] = {0x38, 0xb8, 0x7e, 0x7f, 0x00};  // 1, -1, 448, NaN, 0
  const float scales[2] = {0.5f, 3.0f};                     // block 1 (cols 4-7), block 2 (8-11)
  float out[5];
  DequantizeFp8Row(DType::kF8_E4M3, codes, 5, 5, 4, scales, DType::kF32, out);
  EXPECT_EQ(out[0], 0.5f);          // col 5, block 1
  EXPECT_EQ(out[1], -0.5f);         // col 6
  EXPECT_EQ(out[2], 224.0f);        // col 7
  EXPECT_TRUE(std::isnan(out[3]));  // col 8, block 2: NaN code stays NaN
  EXPECT_EQ(out[4], 0.0f);
}

TEST(DequantizeTest, Fp8TensorWithPartialEdgeBlocksToBf16) {
  // [5, 7] with 2x3 blocks: scales [3, 3], the last block row and column are partial.
  const std::vector<uint64_t> shape = {5, 7};
  std::vector<unsigned char> codes(35);
  for (size_t i = 0; i < codes.size(); ++i) codes[i] = static_cast<unsigned char>(i * 37 + 11);
  const float scales[9] = {0.25f, 1.5f, -2.0f, 3.0f, 1e-3f, 7.0f, 0.125f, 1e4f, -0.5f};
  std::vector<float> f32 =
      DequantizeFp8Tensor(DType::kF8_E4M3, codes.data(), shape, scales, {2, 3});
  for (uint64_t r = 0; r < 5; ++r) {
    std::vector<uint16_t> bf(7);
    const float* srow = scales + (r / 2) * 3;
    DequantizeFp8Row(DType::kF8_E4M3, &codes[r * 7], 7, 0, 3, srow, DType::kBF16, bf.data());
    for (uint64_t c = 0; c < 7; ++c) {
      const unsigned code = codes[r * 7 + c];
      const bool nan = (code & 0x7f) == 0x7f;
      const float want =
          nan ? NAN : static_cast<float>(Reference(code, 4, 3, 7)) * scales[(r / 2) * 3 + c / 3];
      if (nan) {
        EXPECT_TRUE(std::isnan(f32[r * 7 + c]));
        EXPECT_EQ(bf[c] & 0x7fc0, 0x7fc0) << "NaN stays NaN in bf16";
        continue;
      }
      EXPECT_EQ(f32[r * 7 + c], want) << r << "," << c;
      EXPECT_EQ(bf[c], ReferenceBf16(want)) << r << "," << c;
    }
  }
}

TEST(DequantizeTest, Mxfp4LowNibbleFirstWithE8M0Scales) {
  // 64 values (2 blocks), bytes 0..31; block 0 scale 2^0, block 1 scale 2^-2.
  std::vector<unsigned char> packed(32);
  for (int i = 0; i < 32; ++i) packed[i] = static_cast<unsigned char>(i * 7 + 3);
  const unsigned char scales[2] = {127, 125};
  std::vector<float> out(64);
  DequantizeMxfp4(packed.data(), 0, 64, scales, DType::kF32, out.data());
  for (int v = 0; v < 64; ++v) {
    const unsigned code = (v % 2 == 0) ? (packed[v / 2] & 0xf) : (packed[v / 2] >> 4);
    const double want = Reference(code, 2, 1, 1) * (v < 32 ? 1.0 : 0.25);
    EXPECT_EQ(out[v], want) << v;
  }
  // From value 40 (inside block 1): scales start at block 1.
  std::vector<float> tail(8);
  DequantizeMxfp4(&packed[20], 40, 8, &scales[1], DType::kF32, tail.data());
  for (int i = 0; i < 8; ++i) EXPECT_EQ(tail[i], out[40 + i]);
  // A NaN scale (0xFF) makes its block NaN.
  const unsigned char nan_scale[1] = {0xff};
  float one[2];
  DequantizeMxfp4(packed.data(), 0, 2, nan_scale, DType::kF32, one);
  EXPECT_TRUE(std::isnan(one[0]) && std::isnan(one[1]));
}

TEST(PairingTest, FindsFp8AndMxfp4PairsAndNamesBothOnProblems) {
  std::vector<TensorDesc> t = {
      {"a.weight", DType::kF8_E4M3, {300, 200}},
      {"a.weight_scale_inv", DType::kF32, {3, 2}},
      {"e.gate_up_proj_blocks", DType::kU8, {4, 10, 90, 16}},
      {"e.gate_up_proj_scales", DType::kU8, {4, 10, 90}},
      {"b.weight", DType::kF8_E4M3, {256, 256}},
      {"b.weight_scale_inv", DType::kF32, {3, 2}},  // wrong: needs [2, 2]
      {"c.weight_scale_inv", DType::kF32, {1, 1}},  // no weight
      {"d.weight", DType::kF8_E5M2, {8, 8}},        // no scale
      {"f_scales", DType::kU8, {4}},                // no blocks: just a tensor
      {"attn.logit_scales", DType::kF32, {8}},      // names alone make no pair
      {"pos_blocks", DType::kF32, {4, 16}},
      {"enc_blocks", DType::kU8, {2, 16}},  // U8 blocks, F32 "scales": not MXFP4
      {"enc_scales", DType::kF32, {2}},
      {"g.weight", DType::kBF16, {4, 4}},  // left over: BF16 with a scale
      {"g.weight_scale_inv", DType::kF32, {1, 1}},
      {"norm.weight", DType::kBF16, {300}},
  };
  Pairing p = FindPairs(t, {128, 128});
  ASSERT_EQ(p.pairs.size(), 2u);
  EXPECT_EQ(p.pairs[0].output, "a.weight");
  EXPECT_EQ(p.pairs[0].output_shape, (std::vector<uint64_t>{300, 200}));
  EXPECT_EQ(p.pairs[1].output, "e.gate_up_proj");
  EXPECT_EQ(p.pairs[1].output_shape, (std::vector<uint64_t>{4, 10, 2880}));
  EXPECT_EQ(p.pairs[1].Describe(), "mxfp4 (E2M1 codes, one U8 E8M0 scale per 32 values)");
  ASSERT_EQ(p.problems.size(), 3u);
  EXPECT_EQ(p.problems[0].message,
            "scale \"b.weight_scale_inv\" has shape [3, 2] but weight \"b.weight\" [256, 256] "
            "needs [2, 2] for 128x128 blocks");
  EXPECT_EQ(p.problems[0].tensor, "b.weight");
  EXPECT_TRUE(p.problems[0].blocking);  // a quantized pair that cannot be decoded
  EXPECT_EQ(p.problems[1].message, "scale \"c.weight_scale_inv\" has no weight \"c.weight\"");
  EXPECT_FALSE(p.problems[1].blocking);
  EXPECT_EQ(p.problems[2].message,
            "weight \"g.weight\" is BF16, not FP8, yet has a block scale \"g.weight_scale_inv\" "
            "(left over?)");
  EXPECT_FALSE(p.problems[2].blocking);
  EXPECT_EQ(p.unscaled_fp8, (std::vector<std::string>{"d.weight"}));  // b has a (bad) scale
}

TEST(PairingTest, ControlBytesInNamesAreEscapedAndHugeBlockCountsRefused) {
  std::vector<TensorDesc> t = {{"evil\x1b[31m.weight_scale_inv", DType::kF32, {1, 1}},
                               {"big_blocks", DType::kU8, {0, (uint64_t{1} << 59) + 1, 16}},
                               {"big_scales", DType::kU8, {0, (uint64_t{1} << 59) + 1}}};
  Pairing p = FindPairs(t, {128, 128});
  ASSERT_EQ(p.problems.size(), 2u);  // sorted by name: big_blocks, then evil...
  EXPECT_NE(p.problems[0].message.find("overflow 64 bits"), std::string::npos);
  EXPECT_EQ(p.problems[1].message.find('\x1b'), std::string::npos) << p.problems[1].message;
  EXPECT_NE(p.problems[1].message.find("\\u001b"), std::string::npos) << p.problems[1].message;
  EXPECT_TRUE(p.pairs.empty());
}

TEST(PairingTest, BlockSizeFromConfigAndText) {
  auto b = BlockSizeFromConfig(R"({"quantization_config": {"weight_block_size": [128, 64]}})");
  ASSERT_TRUE(b.ok());
  ASSERT_TRUE(b->has_value());
  EXPECT_EQ(**b, (BlockSize{128, 64}));
  EXPECT_FALSE(BlockSizeFromConfig(R"({"hidden_size": 7})")->has_value());
  EXPECT_FALSE(BlockSizeFromConfig("not json")->has_value());
  EXPECT_FALSE(
      BlockSizeFromConfig(R"({"quantization_config": {"weight_block_size": [0, 2]}})").ok());
  EXPECT_EQ(*ParseBlockSize("64"), (BlockSize{64, 64}));
  EXPECT_EQ(*ParseBlockSize("128x32"), (BlockSize{128, 32}));
  EXPECT_FALSE(ParseBlockSize("x").ok());
  EXPECT_FALSE(ParseBlockSize("0").ok());
  EXPECT_EQ(*ParseDequantizeTarget("torch.bfloat16"), DType::kBF16);
  EXPECT_FALSE(ParseDequantizeTarget("f8").ok());
}

}  // namespace
}  // namespace safeshard::quant
