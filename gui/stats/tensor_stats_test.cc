// Statistics over real files: exact values, NaN/Inf/zero counts, FP8 decoding, chunked tensors
// and the gap note.
#include "gui/stats/tensor_stats.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

#include "core/example/example.h"
#include "core/testing/testing.h"
#include "gtest/gtest.h"

namespace safeshard {
namespace {

std::string Floats(std::vector<float> v) {
  std::string out(v.size() * 4, '\0');
  std::memcpy(out.data(), v.data(), out.size());
  return out;
}

CheckpointLayout ScanOne(const std::string& json, const std::string& buffer) {
  std::string dir = testing::NewTempDir();
  testing::WriteFile(dir + "/model.safetensors", testing::RawSafetensors(json, buffer));
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  EXPECT_TRUE(ck.ok()) << ck.status();
  return std::move(*ck);
}

TEST(TensorStatsTest, ExactValuesAndSpecialCounts) {
  const float nan = std::numeric_limits<float>::quiet_NaN(),
              inf = std::numeric_limits<float>::infinity();
  CheckpointLayout ck = ScanOne(R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}})",
                                Floats({1, 2, nan, inf, 0, -3}));
  ASSERT_NE(ck.FindTensor("w"), nullptr);
  auto s = ComputeTensorStats(LocalFileSystem(), ck, *ck.FindTensor("w"), {.bins = 5});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->elements, 6u);
  EXPECT_EQ(s->finite, 4u);
  EXPECT_EQ(s->nan, 1u);
  EXPECT_EQ(s->inf, 1u);
  EXPECT_EQ(s->zeros, 1u);
  EXPECT_DOUBLE_EQ(s->min, -3);
  EXPECT_DOUBLE_EQ(s->max, 2);
  EXPECT_DOUBLE_EQ(s->mean, 0);
  EXPECT_NEAR(s->std, std::sqrt(14.0 / 3), 1e-12);
  // Bins of width 1 over [-3, 2]: -3 | | | 0 | 1, 2 (the maximum joins the last bin).
  EXPECT_EQ(s->histogram, (std::vector<uint64_t>{1, 0, 0, 1, 2}));
  EXPECT_TRUE(s->note.empty());
}

TEST(TensorStatsTest, ComplexAndSubByteDTypesAreAClearError) {
  // C64 (complex) and F4 have no single numeric reading here: said, naming the tensor and dtype.
  CheckpointLayout ck = ScanOne(R"({"c":{"dtype":"C64","shape":[2],"data_offsets":[0,16]},)"
                                R"("f":{"dtype":"F4","shape":[4],"data_offsets":[16,18]}})",
                                std::string(18, '\x11'));
  for (const char* name : {"c", "f"}) {
    ASSERT_NE(ck.FindTensor(name), nullptr) << name;
    auto s = ComputeTensorStats(LocalFileSystem(), ck, *ck.FindTensor(name), {});
    ASSERT_FALSE(s.ok()) << name;
    EXPECT_EQ(s.status().code(), absl::StatusCode::kUnimplemented) << s.status();
    EXPECT_NE(std::string(s.status().message()).find(std::string("tensor \"") + name + "\""),
              std::string::npos)
        << s.status();
  }
}

TEST(TensorStatsTest, DecodesFp8AndBf16) {
  // F8_E4M3: 0x38 = 1.0, 0xb8 = -1.0, 0x7f = NaN, 0x00 = 0.
  CheckpointLayout ck =
      ScanOne(R"({"a":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]},)"
              R"("b":{"dtype":"BF16","shape":[2],"data_offsets":[4,8]}})",
              std::string("\x38\xb8\x7f\x00", 4) + std::string("\x80\x3f\x00\xc0", 4));
  ASSERT_NE(ck.FindTensor("a"), nullptr);
  ASSERT_NE(ck.FindTensor("b"), nullptr);
  auto a = ComputeTensorStats(LocalFileSystem(), ck, *ck.FindTensor("a"), {});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->nan, 1u);
  EXPECT_EQ(a->zeros, 1u);
  EXPECT_DOUBLE_EQ(a->min, -1);
  EXPECT_DOUBLE_EQ(a->max, 1);
  auto b = ComputeTensorStats(LocalFileSystem(), ck, *ck.FindTensor("b"), {});
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_DOUBLE_EQ(b->min, -2);  // 0xc000
  EXPECT_DOUBLE_EQ(b->max, 1);   // 0x3f80
}

TEST(TensorStatsTest, ChunkedTensorMatchesTheWholeTensorAndBlocksDoNotMatter) {
  std::vector<ExampleTensor> model = {{"m.w", DType::kBF16, {64, 48}, Sharding::kMesh}};
  const std::string dir = testing::NewTempDir() + "/ck";
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), dir, model, {.ranks = 4}).ok());
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  ASSERT_TRUE(ck.ok());
  const TensorLayout& t = *ck->FindTensor("m.w");
  ASSERT_EQ(t.chunks.size(), 4u);
  // The same bytes as one plain file.
  const std::string one = testing::NewTempDir();
  testing::WriteFile(
      one + "/model.safetensors",
      testing::RawSafetensors(R"({"m.w":{"dtype":"BF16","shape":[64,48],"data_offsets":[0,6144]}})",
                              ExpectedTensorBytes(model[0])));
  auto whole = CheckpointLayout::Scan(LocalFileSystem(), one);
  ASSERT_TRUE(whole.ok());
  auto a = ComputeTensorStats(LocalFileSystem(), *ck, t, {.block_elements = 100});
  auto b = ComputeTensorStats(LocalFileSystem(), *whole, *whole->FindTensor("m.w"), {});
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(a->elements, 64u * 48);
  EXPECT_EQ(a->nan, b->nan);
  EXPECT_EQ(a->zeros, b->zeros);
  EXPECT_EQ(a->min, b->min);
  EXPECT_EQ(a->max, b->max);
  EXPECT_NEAR(a->mean, b->mean, 1e-9 * (1 + std::abs(b->mean)));
  EXPECT_EQ(a->histogram, b->histogram);
  EXPECT_EQ(std::accumulate(a->histogram.begin(), a->histogram.end(), uint64_t{0}), a->finite);
}

TEST(TensorStatsTest, GapIsNotedAndCancelStops) {
  WriteOptions o{.ranks = 4};
  o.drop_chunk = std::make_pair(std::string("w"), 1);
  const std::string dir = testing::NewTempDir() + "/ck";
  ASSERT_TRUE(
      WriteDcpCheckpoint(LocalFileSystem(), dir, {{"w", DType::kF32, {8, 4}, Sharding::kRow}}, o)
          .ok());
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  ASSERT_TRUE(ck.ok());
  auto s = ComputeTensorStats(LocalFileSystem(), *ck, *ck->FindTensor("w"), {});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->elements, 24u);
  EXPECT_NE(s->note.find("24 of 32"), std::string::npos) << s->note;
  std::atomic<bool> cancel{true};
  EXPECT_EQ(ComputeTensorStats(LocalFileSystem(), *ck, *ck->FindTensor("w"), {.cancel = &cancel})
                .status()
                .code(),
            absl::StatusCode::kCancelled);
}

}  // namespace
}  // namespace safeshard
