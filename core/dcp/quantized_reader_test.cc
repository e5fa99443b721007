// Expected values come from testing::ReferenceF8 / ReferenceMinifloat / ReferenceBf16 (the bit
// definitions), never from core/quant.
#include "core/dcp/quantized_reader.h"

#include <cmath>
#include <cstring>

#include "core/example/example.h"
#include "core/io/filesystem.h"
#include "core/testing/testing.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace safeshard {
namespace {

using ::testing::HasSubstr;

std::string FloatBytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4);
}

// The whole [M, N] weight, decoded independently.
std::vector<float> Reference(const std::string& codes, int64_t m, int64_t n,
                             const std::vector<float>& scales, int64_t br, int64_t bc) {
  const int64_t sn = (n + bc - 1) / bc;
  std::vector<float> out(m * n);
  for (int64_t i = 0; i < m * n; ++i) {
    const int64_t r = i / n, c = i % n;
    out[i] =
        static_cast<float>(testing::ReferenceF8(DType::kF8_E4M3, static_cast<uint8_t>(codes[i]))) *
        scales[(r / br) * sn + c / bc];
  }
  return out;
}

void ExpectBox(const at::Tensor& got, const std::vector<float>& full, int64_t n, int64_t r0,
               int64_t c0) {
  at::Tensor f = got.to(torch::kFloat).contiguous();
  const bool bf16 = got.scalar_type() == torch::kBFloat16;
  for (int64_t i = 0; i < got.size(0); ++i) {
    for (int64_t j = 0; j < got.size(1); ++j) {
      float want = full[(r0 + i) * n + c0 + j];
      if (bf16) {
        const uint32_t bits = static_cast<uint32_t>(testing::ReferenceBf16(want)) << 16;
        std::memcpy(&want, &bits, 4);
      }
      const float have = f[i][j].item<float>();
      if (std::isnan(want)) {
        ASSERT_TRUE(std::isnan(have)) << i << "," << j;
      } else {
        ASSERT_EQ(have, want) << "row " << r0 + i << " col " << c0 + j;
      }
    }
  }
}

TEST(QuantizedReaderTest, Fp8SlicesAcrossBlocksWithTheScaleInAnotherFile) {
  const std::string dir = testing::NewTempDir() + "/fp8";
  ASSERT_TRUE(LocalFileSystem().MakeDirs(dir).ok());
  const std::string codes = testing::PatternBytes("w", 300 * 200);
  const std::vector<float> scales = {0.5f, -2.0f, 1e-3f, 3.0f, 7.0f, 0.125f};
  testing::WriteFile(dir + "/model-00001-of-00002.safetensors",
                     testing::RawSafetensors(
                         R"({"w":{"dtype":"F8_E4M3","shape":[300,200],"data_offsets":[0,60000]},)"
                         R"("norm":{"dtype":"F32","shape":[2],"data_offsets":[60000,60008]}})",
                         codes + FloatBytes({1.5f, 2.5f})));
  testing::WriteFile(dir + "/model-00002-of-00002.safetensors",
                     testing::RawSafetensors(R"({"w_scale_inv":{"dtype":"F32","shape":[3,2],)"
                                             R"("data_offsets":[0,24]}})",
                                             FloatBytes(scales)));
  const std::vector<float> full = Reference(codes, 300, 200, scales, 128, 128);
  QuantizedHfStorageReader reader(dir, 2);
  auto weights = reader.QuantizedWeights();
  ASSERT_TRUE(weights.ok()) << weights.status();
  ASSERT_EQ(weights->size(), 1u);
  EXPECT_EQ((*weights)[0].output, "w");

  at::Tensor all = torch::empty({300, 200}, torch::kFloat);
  at::Tensor box = torch::empty({150, 140}, torch::kBFloat16);  // rows 100..249, cols 50..189
  at::Tensor t = torch::empty({90, 70}, torch::kFloat);         // transposed view: not contiguous
  at::Tensor view = t.t();                                      // [70, 90]
  at::Tensor norm = torch::empty({2}, torch::kFloat);
  std::vector<LoadRequest> reqs = {
      {"w", all, {}}, {"w", box, {100, 50}}, {"w", view, {230, 110}}, {"norm", norm, {}}};
  absl::Status s = reader.ReadData(reqs);
  ASSERT_TRUE(s.ok()) << s;
  ExpectBox(all, full, 200, 0, 0);
  ExpectBox(box, full, 200, 100, 50);
  ExpectBox(view, full, 200, 230, 110);
  EXPECT_EQ(norm[1].item<float>(), 2.5f);

  // A quantized weight into an integer tensor: refused, naming the scheme.
  std::vector<LoadRequest> bad = {{"w", torch::empty({300, 200}, torch::kByte), {}}};
  s = reader.ReadData(bad);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr("is quantized (fp8 128x128 blocks"));
}

TEST(QuantizedReaderTest, Mxfp4SliceWithinAndAcrossBlocks) {
  const std::string dir = testing::NewTempDir() + "/mx";
  ASSERT_TRUE(LocalFileSystem().MakeDirs(dir).ok());
  const std::string blocks = testing::PatternBytes("e_blocks", 2 * 3 * 16);
  const std::string scales = {char(127), char(125), char(130), char(1), char(128), char(120)};
  testing::WriteFile(dir + "/model.safetensors",
                     testing::RawSafetensors(
                         R"({"e_blocks":{"dtype":"U8","shape":[2,3,16],"data_offsets":[0,96]},)"
                         R"("e_scales":{"dtype":"U8","shape":[2,3],"data_offsets":[96,102]}})",
                         blocks + scales));
  QuantizedHfStorageReader reader(dir);
  at::Tensor part = torch::empty({1, 30}, torch::kFloat);  // row 1, values 40..69 (blocks 1, 2)
  std::vector<LoadRequest> reqs = {{"e", part, {1, 40}}};
  absl::Status s = reader.ReadData(reqs);
  ASSERT_TRUE(s.ok()) << s;
  for (int64_t j = 0; j < 30; ++j) {
    const int64_t v = 96 + 40 + j;  // flat value index in [2, 96]
    const uint8_t byte = static_cast<uint8_t>(blocks[v / 2]);
    const unsigned code = v % 2 == 0 ? (byte & 0xf) : (byte >> 4);
    const double want = testing::ReferenceMinifloat(code, 2, 1, 1) *
                        testing::ReferenceF8(DType::kF8_E8M0, static_cast<uint8_t>(scales[v / 32]));
    EXPECT_EQ(part[0][j].item<float>(), static_cast<float>(want)) << j;
  }
}

TEST(QuantizedReaderTest, PerRankShardsLoadIntoAnotherSharding) {
  // Saved row-sharded over 4 ranks (weights and scales), loaded as column slices.
  const std::vector<ExampleTensor> model = {
      {"m.weight", DType::kF8_E4M3, {256, 384}, Sharding::kRow},
      {"m.weight_scale_inv", DType::kF32, {2, 3}, Sharding::kRow},
  };
  const std::string dir = testing::NewTempDir() + "/ranks";
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), dir, model, {.ranks = 4}).ok());
  const std::string codes = ExpectedTensorBytes(model[0]);
  const std::string sb = ExpectedTensorBytes(model[1]);
  std::vector<float> scales(6);
  std::memcpy(scales.data(), sb.data(), 24);
  const std::vector<float> full = Reference(codes, 256, 384, scales, 128, 128);
  QuantizedHfStorageReader reader(dir, 2);
  for (int part = 0; part < 2; ++part) {
    at::Tensor w = torch::empty({256, 192}, torch::kBFloat16);
    std::vector<LoadRequest> reqs = {{"m.weight", w, {0, part * 192}}};
    absl::Status s = reader.ReadData(reqs);
    ASSERT_TRUE(s.ok()) << s;
    ExpectBox(w, full, 384, 0, part * 192);
  }
}

}  // namespace
}  // namespace safeshard
