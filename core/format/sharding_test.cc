#include "core/format/sharding.h"

#include <optional>
#include <string>
#include <vector>

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
  for (const char* bad :
       {"not json", "[1]", R"({"x": {"saved_offsets": [0]}})", R"({"w": {"saved_offsets": [0]}})",
        R"({"w": {"offsets": [0, 0]}})", R"({"w": {"saved_offsets": [0, -1]}})",
        R"({"w": {"saved_offsets": [0, 0]}, "w": {"saved_offsets": [0, 0]}})"}) {
    h.metadata["DCP_SHARDING_INFO"] = bad;
    absl::StatusOr<std::optional<ShardingInfo>> r = ReadShardingInfo(h, "shard.st");
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("shard.st"));
  }
}

TEST(ShardingTest, ReadsPyTorchNewestPhysicalKeysWithLogicalNames) {
  // One rank holding two row blocks of "w" (strided FSDP2+TP): physical keys w.__dcp_shard_k.
  absl::StatusOr<Header> h = LayoutHeader({{"w.__dcp_shard_0", DType::kF32, {2, 8}},
                                           {"w.__dcp_shard_1", DType::kF32, {2, 8}},
                                           {"b", DType::kF32, {8}}},
                                          {});
  ASSERT_TRUE(h.ok());
  h->metadata["DCP_SHARDING_INFO"] =
      R"({"w.__dcp_shard_0": {"logical_fqn": "w", "saved_offsets": [0, 0], "global_shape": [8, 8]},)"
      R"( "w.__dcp_shard_1": {"logical_fqn": "w", "saved_offsets": [4, 0], "global_shape": [8, 8]},)"
      R"( "b": {"logical_fqn": "b", "saved_offsets": [0]}})";
  absl::StatusOr<std::optional<ShardingInfo>> r = ReadShardingInfo(*h, "f");
  ASSERT_TRUE(r.ok()) << r.status();
  const ShardingInfo& info = **r;
  EXPECT_EQ(info.LogicalName("w.__dcp_shard_0"), "w");
  EXPECT_EQ(info.LogicalName("w.__dcp_shard_1"), "w");
  EXPECT_EQ(info.LogicalName("b"), "b");
  EXPECT_EQ(info.saved_offsets.at("w.__dcp_shard_1"), (std::vector<uint64_t>{4, 0}));
  EXPECT_EQ(info.global_shape.at("w.__dcp_shard_0"), (std::vector<uint64_t>{8, 8}));
  EXPECT_EQ(info.global_shape.count("b"), 0u);
  // What the writer emits reads back the same.
  h->metadata = ShardedFileMetadata(info);
  EXPECT_EQ(
      h->metadata.at("DCP_SHARDING_INFO"),
      R"({"b": {"logical_fqn": "b", "saved_offsets": [0]}, )"
      R"("w.__dcp_shard_0": {"logical_fqn": "w", "saved_offsets": [0, 0], "global_shape": [8, 8]}, )"
      R"("w.__dcp_shard_1": {"logical_fqn": "w", "saved_offsets": [4, 0], "global_shape": [8, 8]}})");
  absl::StatusOr<std::optional<ShardingInfo>> back = ReadShardingInfo(*h, "f");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ((*back)->logical_fqn, info.logical_fqn);
  EXPECT_EQ((*back)->global_shape, info.global_shape);
  EXPECT_EQ(PhysicalShardKey("w", 1), "w.__dcp_shard_1");
}

TEST(ShardingTest, RejectsMalformedLogicalNamesAndGlobalShapes) {
  Header h = TwoTensors();
  for (const char* bad : {R"({"w": {"logical_fqn": 3, "saved_offsets": [0, 0]}})",
                          R"({"w": {"logical_fqn": "", "saved_offsets": [0, 0]}})",
                          R"({"w": {"logical_fqn": "__metadata__", "saved_offsets": [0, 0]}})",
                          R"({"w": {"saved_offsets": [0, 0], "global_shape": [8]}})",
                          R"({"w": {"saved_offsets": [0, 0], "global_shape": "8x8"}})",
                          R"({"w": {"saved_offsets": [0, 0], "global_shape": [8, -8]}})"}) {
    h.metadata["DCP_SHARDING_INFO"] = bad;
    absl::StatusOr<std::optional<ShardingInfo>> r = ReadShardingInfo(h, "shard.st");
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("tensor \"w\""));
  }
}

}  // namespace
}  // namespace safeshard

namespace safeshard {
namespace {

// ReadShardingInfo (fast path, then the DOM parser) and the DOM parser alone agree on `text`.
void ExpectAgreement(const Header& base, const std::string& text) {
  Header h = base;
  h.metadata["DCP_SHARDING_INFO"] = text;
  absl::StatusOr<std::optional<ShardingInfo>> got = ReadShardingInfo(h, "f");
  absl::StatusOr<std::optional<ShardingInfo>> dom = internal::ReadShardingInfoWithDom(h, "f");
  ASSERT_EQ(got.ok(), dom.ok()) << text;
  if (!got.ok()) {
    EXPECT_EQ(got.status(), dom.status());
    EXPECT_EQ(ReadShardingByTensor(h, "f").status(), dom.status());
    return;
  }
  ASSERT_TRUE(got->has_value() && dom->has_value());
  EXPECT_EQ((*got)->saved_offsets, (*dom)->saved_offsets) << text;
  EXPECT_EQ((*got)->logical_fqn, (*dom)->logical_fqn) << text;
  EXPECT_EQ((*got)->global_shape, (*dom)->global_shape) << text;
  // The per-tensor arrangement says the same, tensor by tensor.
  absl::StatusOr<std::optional<ShardingByTensor>> by = ReadShardingByTensor(h, "f");
  ASSERT_TRUE(by.ok() && by->has_value()) << by.status();
  for (size_t i = 0; i < h.tensors.size(); ++i) {
    const std::string& name = h.tensors[i].name;
    EXPECT_EQ((*by)->saved_offsets[i], (*dom)->saved_offsets.at(name)) << text << " " << name;
    auto lf = (*dom)->logical_fqn.find(name);
    EXPECT_EQ((*by)->logical_fqn[i], lf == (*dom)->logical_fqn.end() ? "" : lf->second) << text;
    auto gs = (*dom)->global_shape.find(name);
    EXPECT_EQ((*by)->global_shape[i].has_value(), gs != (*dom)->global_shape.end()) << text;
    if (gs != (*dom)->global_shape.end() && (*by)->global_shape[i]) {
      EXPECT_EQ(*(*by)->global_shape[i], gs->second) << text;
    }
  }
}

TEST(ShardingFastPathTest, ReadsWhatWritersWriteAndAgreesWithTheDomParser) {
  absl::StatusOr<Header> h = LayoutHeader(
      {{"w.__dcp_shard_0", DType::kF32, {4, 8}}, {"b", DType::kF32, {8}}, {"s", DType::kF32, {}}},
      {});
  ASSERT_TRUE(h.ok());
  const std::vector<std::string> usual = {
      R"({"b": {"saved_offsets": [8]}, "w.__dcp_shard_0": {"logical_fqn": "w", "saved_offsets": [4, 0], "global_shape": [8, 8]}})",
      R"({"b":{"saved_offsets":[0],"global_shape":null,"logical_fqn":null},"s":{"saved_offsets":[]}})",
      R"({})",
      R"( {"b": {"global_shape": [16], "saved_offsets": [8], "logical_fqn": "b\u00e9"}} )",
  };
  for (const std::string& text : usual) {
    ShardingInfo info;
    EXPECT_TRUE(internal::ReadShardingInfoFast(text, *h, &info)) << text;
    ExpectAgreement(*h, text);
  }
  const std::vector<std::string> declined = {
      R"({"b": {"saved_offsets": [8], "extra": 1}})",                   // valid: extra kept out
      R"({"b": {"saved_offsets": [8.0]}})",                             // refused
      R"({"b": {"saved_offsets": [8, 0]}})",                            // wrong rank
      R"({"x": {"saved_offsets": [0]}})",                               // not in the file
      R"({"b": {"saved_offsets": [8]}, "b": {"saved_offsets": [0]}})",  // repeated key
      R"({"b": {"saved_offsets": [8], "saved_offsets": [0]}})",
      R"({"b": {"logical_fqn": ""}})",
      R"({"b": {"saved_offsets": [8], "logical_fqn": "__metadata__"}})",
      R"({"b": {"saved_offsets": [8], "logical_fqn": 3}})",
      R"({"b": {"saved_offsets": [8], "global_shape": [1, 2]}})",
      R"({"b": {}})",
      R"({"b": {"saved_offsets": [8]}} x)",
      std::string(R"({"b": {"saved_offsets": [8]}})") + '\0',
      R"([])",
      R"({"b": {"saved_offsets": [8]},})",
  };
  for (const std::string& text : declined) {
    ShardingInfo info;
    EXPECT_FALSE(internal::ReadShardingInfoFast(text, *h, &info)) << text;
    ExpectAgreement(*h, text);
  }
}

}  // namespace
}  // namespace safeshard
