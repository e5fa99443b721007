#include "core/format/sharding.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace safeshard {
namespace {

using ::testing::HasSubstr;

Header TwoTensors() {
  absl::StatusOr<Header> h =
      LayoutHeader({{"w", DType::kF32, {4, 8}}, {"b", DType::kF32, {8}}}, {});
  return *h;
}

TEST(ShardingTest, SerializesLikePythonJsonDumps) {
  ShardingInfo info;
  info.saved_offsets["w"] = {4, 0};
  info.saved_offsets["b"] = {0};
  EXPECT_EQ(SerializeShardingInfo(info),
            R"({"b": {"saved_offsets": [0]}, "w": {"saved_offsets": [4, 0]}})");
  auto md = ShardedFileMetadata(info);
  EXPECT_EQ(md.at("DCP_VERSION"), "1.0");
  EXPECT_EQ(md.at("format"), "pt");
}

TEST(ShardingTest, RoundTripsThroughHeaderMetadata) {
  Header h = TwoTensors();
  ShardingInfo info;
  info.saved_offsets["w"] = {4, 0};
  info.saved_offsets["b"] = {8};
  h.metadata = ShardedFileMetadata(info);
  absl::StatusOr<std::optional<ShardingInfo>> back = ReadShardingInfo(h, "f");
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_TRUE(back->has_value());
  EXPECT_EQ((*back)->saved_offsets, info.saved_offsets);
}

TEST(ShardingTest, AbsentInfoIsNotAnError) {
  absl::StatusOr<std::optional<ShardingInfo>> r = ReadShardingInfo(TwoTensors(), "f");
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->has_value());
}

TEST(ShardingTest, UnmentionedTensorsSitAtZero) {
  Header h = TwoTensors();
  h.metadata["DCP_SHARDING_INFO"] = R"({"w": {"saved_offsets": [4, 0]}})";
  absl::StatusOr<std::optional<ShardingInfo>> r = ReadShardingInfo(h, "f");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)->saved_offsets.at("b"), std::vector<uint64_t>{0});
}

TEST(ShardingTest, RejectsMalformedInfo) {
  Header h = TwoTensors();
  for (const char* bad : {"not json", "[1]", R"({"x": {"saved_offsets": [0]}})",
                          R"({"w": {"saved_offsets": [0]}})", R"({"w": {"offsets": [0, 0]}})",
                          R"({"w": {"saved_offsets": [0, -1]}})",
                          R"({"w": {"saved_offsets": [0, 0]}, "w": {"saved_offsets": [0, 0]}})"}) {
    h.metadata["DCP_SHARDING_INFO"] = bad;
    absl::StatusOr<std::optional<ShardingInfo>> r = ReadShardingInfo(h, "shard.st");
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("shard.st"));
  }
}

}  // namespace
}  // namespace safeshard
