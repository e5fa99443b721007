#include "core/format/index_json.h"

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace safeshard {
namespace {

using ::testing::HasSubstr;

TEST(IndexJsonTest, ParsesAndRoundTrips) {
  absl::StatusOr<IndexJson> idx = ParseIndexJson(
      R"({"metadata": {"total_size": 9007199254740993, "total_parameters": 12},
          "weight_map": {"a": "model-00001-of-00002.safetensors",
                         "b": "model-00002-of-00002.safetensors"}})",
      "i.json");
  ASSERT_TRUE(idx.ok()) << idx.status();
  EXPECT_EQ(idx->total_size, 9007199254740993ull);  // > 2^53: kept exact as 64-bit
  EXPECT_EQ(idx->weight_map.at("b"), "model-00002-of-00002.safetensors");
  absl::StatusOr<IndexJson> back = ParseIndexJson(SerializeIndexJson(*idx), "again");
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->total_size, idx->total_size);
  EXPECT_EQ(back->weight_map, idx->weight_map);
  EXPECT_EQ(back->extra_metadata.at("total_parameters"), "12");
}

TEST(IndexJsonTest, WritesIndentedSortedJson) {
  IndexJson idx;
  idx.total_size = 8;
  idx.weight_map = {{"b", "f.safetensors"}, {"a", "f.safetensors"}};
  EXPECT_EQ(SerializeIndexJson(idx),
            "{\n  \"metadata\": {\n    \"total_size\": 8\n  },\n  \"weight_map\": {\n"
            "    \"a\": \"f.safetensors\",\n    \"b\": \"f.safetensors\"\n  }\n}\n");
}

TEST(IndexJsonTest, RejectsPathsThatLeaveTheDirectory) {
  for (const char* f :
       {"/abs/model.safetensors", "../model.safetensors", "sub/model.safetensors", "..", ""}) {
    std::string text = std::string(R"({"weight_map": {"a": ")") + f + "\"}}";
    absl::StatusOr<IndexJson> r = ParseIndexJson(text, "i.json");
    ASSERT_FALSE(r.ok()) << f;
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("tensor \"a\""));
  }
}

TEST(IndexJsonTest, RejectsBadStructure) {
  for (const char* t :
       {"", "[]", R"({"metadata": {}})", R"({"weight_map": []})", R"({"weight_map": {"a": 1}})",
        R"({"metadata": {"total_size": -1}, "weight_map": {}})",
        R"({"metadata": {"total_size": "12"}, "weight_map": {}})",
        R"({"weight_map": {"a": "x.safetensors", "a": "y.safetensors"}})"}) {
    absl::StatusOr<IndexJson> r = ParseIndexJson(t, "i.json");
    EXPECT_FALSE(r.ok()) << t;
    if (!r.ok()) {
      EXPECT_THAT(std::string(r.status().message()), HasSubstr("i.json"));
    }
  }
}

TEST(IndexJsonTest, AcceptsMissingMetadataAndIntegralFloatSize) {
  absl::StatusOr<IndexJson> a = ParseIndexJson(R"({"weight_map": {}})", "i");
  ASSERT_TRUE(a.ok());
  EXPECT_FALSE(a->total_size.has_value());
  absl::StatusOr<IndexJson> b =
      ParseIndexJson(R"({"metadata": {"total_size": 1.0e3}, "weight_map": {}})", "i");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->total_size, 1000u);
}

TEST(IndexJsonTest, RejectsTrailingBytesAndDeepNesting) {
  const std::string ok = R"({"weight_map": {"w": "model-00001-of-00001.safetensors"}})";
  ASSERT_TRUE(ParseIndexJson(ok, "i.json").ok());
  absl::StatusOr<IndexJson> nul = ParseIndexJson(ok + std::string("\n\0junk", 6), "i.json");
  ASSERT_FALSE(nul.ok());
  EXPECT_THAT(std::string(nul.status().message()), ::testing::HasSubstr("trailing characters"));
  EXPECT_THAT(std::string(nul.status().message()),
              ::testing::HasSubstr(absl::StrCat("byte offset ", ok.size() + 1)));
  const std::string deep = R"({"metadata": {"x": )" + std::string(200, '[') +
                           std::string(200, ']') + R"(}, "weight_map": {}})";
  absl::StatusOr<IndexJson> d = ParseIndexJson(deep, "i.json");
  ASSERT_FALSE(d.ok());
  EXPECT_THAT(std::string(d.status().message()), ::testing::HasSubstr("recursion limit"));
}

}  // namespace
}  // namespace safeshard
