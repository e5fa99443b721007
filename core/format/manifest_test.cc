#include "core/format/manifest.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace safeshard {
namespace {

using ::testing::HasSubstr;

void ExpectRefused(const std::string& text, const std::string& substr) {
  absl::StatusOr<Manifest> m = ParseManifest(text, "d/safeshard.complete.json");
  ASSERT_FALSE(m.ok()) << "accepted: " << text.substr(0, 200);
  EXPECT_EQ(m.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(m.status().message()), HasSubstr("d/safeshard.complete.json"));
  EXPECT_THAT(std::string(m.status().message()), HasSubstr(substr));
}

TEST(ManifestTest, RoundTripsWithChecksums) {
  Manifest m;
  m.ranks = 2;
  m.files.push_back({"shard-00001-model-00001-of-00001.safetensors",
                     123,
                     0x0123456789abcdefull,
                     {1, 2, 0xffffffffffffffffull}});
  m.files.push_back({"shard-00002-model-00001-of-00001.safetensors", 0, std::nullopt, {}});
  const std::string text = SerializeManifest(m);
  EXPECT_THAT(text, HasSubstr("\"xxh3_64\": \"0123456789abcdef\""));
  EXPECT_THAT(text, HasSubstr("\"checksum\": \"xxh3-64\""));
  absl::StatusOr<Manifest> back = ParseManifest(text, "m");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->kind, "dcp_shards");
  EXPECT_EQ(back->ranks, 2);
  ASSERT_EQ(back->files.size(), 2u);
  EXPECT_EQ(back->files[0].xxh3, 0x0123456789abcdefull);
  EXPECT_EQ(back->files[0].tensor_xxh3, (std::vector<uint64_t>{1, 2, 0xffffffffffffffffull}));
  EXPECT_FALSE(back->files[1].xxh3.has_value());
  EXPECT_EQ(SerializeManifest(*back), text);
}

TEST(ManifestTest, ReadsTheFirstFormatWithoutChecksums) {
  // What safeshard's writer published before checksums existed.
  absl::StatusOr<Manifest> m = ParseManifest(
      R"({"format": "safeshard.complete/1", "ranks": 2, "files": [{"name": "a.safetensors", "size": 5}]})",
      "m");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->ranks, 2);
  ASSERT_NE(m->Find("a.safetensors"), nullptr);
  EXPECT_EQ(m->Find("a.safetensors")->size, 5u);
}

TEST(ManifestTest, HostileManifestsAreErrorsNeverCrashes) {
  const std::string f = R"("format": "safeshard.complete/1")";
  ExpectRefused("", "not valid JSON");
  ExpectRefused("[]", "not a JSON object");
  ExpectRefused("{}", "\"files\"");
  ExpectRefused(R"({"format": 1, "files": []})", "\"format\"");
  ExpectRefused(R"({"format": "other/1", "files": []})", "\"format\"");
  ExpectRefused(R"({"format": "safeshard.complete/9", "files": []})", "newer");
  ExpectRefused("{" + f + R"(, "ranks": "4", "files": []})", "\"ranks\"");
  ExpectRefused("{" + f + R"(, "ranks": -1, "files": []})", "\"ranks\"");
  ExpectRefused("{" + f + R"(, "ranks": 1e300, "files": []})", "\"ranks\"");
  ExpectRefused("{" + f + R"(, "ranks": 99999999999999999999999, "files": []})", "\"ranks\"");
  ExpectRefused("{" + f + R"(, "ranks": 0, "files": []})", "\"ranks\"");
  ExpectRefused("{" + f + R"(, "files": {}})", "\"files\"");
  ExpectRefused("{" + f + R"(, "files": [3]})", "files[0] is not an object");
  ExpectRefused("{" + f + R"(, "files": [{"name": "../x.safetensors", "size": 1}]})",
                "plain file name");
  ExpectRefused("{" + f + R"(, "files": [{"name": "/etc/passwd", "size": 1}]})", "plain file name");
  ExpectRefused("{" + f + R"(, "files": [{"name": "a", "size": -5}]})", "\"size\"");
  ExpectRefused("{" + f + R"(, "files": [{"name": "a", "size": 1.5}]})", "\"size\"");
  ExpectRefused("{" + f + R"(, "files": [{"name": "a", "size": 1}, {"name": "a", "size": 1}]})",
                "listed twice");
  ExpectRefused("{" + f + R"(, "files": [{"name": "a", "size": 1, "xxh3_64": "xyz"}]})", "16 hex");
  ExpectRefused("{" + f + R"(, "files": [{"name": "a", "size": 1, "tensors_xxh3_64": [1]}]})",
                "16 hex");
  ExpectRefused("{" + f + R"(, "kind": "other", "files": []})", "\"kind\"");
  ExpectRefused("{" + f + R"(, "checksum": "md5", "files": []})", "checksum algorithm");
  ExpectRefused("{" + f + R"(, "files": [], "files": []})", "repeated");
  ExpectRefused("{" + f + R"(, "files": []})" + std::string("\0x", 2), "trailing characters");
  ExpectRefused("{" + f + R"(, "x": )" + std::string(100000, '[') + std::string(100000, ']') +
                    R"(, "files": []})",
                "recursion limit");
  ExpectRefused(std::string("{\"format\": \"\xff\"}"), "UTF-8");
}

TEST(ManifestTest, ChecksumIsXxh3OfTheBytes) {
  // Reference values of XXH3-64 (seed 0), as `xxhsum -H3` prints them.
  EXPECT_EQ(ChecksumHex(Xxh3("")), "2d06800538d394c2");
  ContentHasher h;
  h.Update("ab");
  h.Update("c");
  EXPECT_EQ(h.Digest(), Xxh3("abc"));
  EXPECT_EQ(ChecksumHex(Xxh3("abc")), "78af5f94892f3950");
}

}  // namespace
}  // namespace safeshard
