#include "core/layout/layout_json.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/example/example.h"
#include "core/format/filenames.h"
#include "core/format/internal/json_util.h"
#include "core/io/filesystem.h"
#include "core/testing/testing.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace safeshard {
namespace {

// The streamed document is byte for byte what nlohmann prints for the same document (pretty and
// compact), so the CLI's output did not change when the DOM went away.
void ExpectFormattedLikeNlohmann(const CheckpointLayout& ck, const NameFilter& keep = nullptr) {
  const std::string pretty = LayoutJsonText(ck, keep, 2);
  const std::string compact = LayoutJsonText(ck, keep, -1);
  nlohmann::ordered_json parsed = nlohmann::ordered_json::parse(pretty);
  EXPECT_EQ(internal::DumpJson(parsed, 2), pretty);
  EXPECT_EQ(internal::DumpJson(parsed, -1), compact);
  EXPECT_EQ(parsed["schema"], "safeshard.inspect/1");
}

TEST(LayoutJsonTest, ShardedCheckpointWithProblemsAndPhysicalKeys) {
  const std::string dir = testing::NewTempDir();
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), dir, TransformerLikeModel({.layers = 2}),
                                 {.ranks = 4, .logical_fqn = true, .global_shape = true})
                  .ok());
  // A problem: one rank's file replaced by garbage (an invalid file and gaps).
  testing::WriteFile(JoinPath(dir, ShardFileName(3, 4, 1)), "garbage!");
  absl::StatusOr<CheckpointLayout> ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  ASSERT_TRUE(ck.ok()) << ck.status();
  ASSERT_FALSE(ck->problems().empty());
  ExpectFormattedLikeNlohmann(*ck);
  ExpectFormattedLikeNlohmann(*ck, [](const std::string& n) { return n.find("mlp") != n.npos; });
  nlohmann::json j = nlohmann::json::parse(LayoutJsonText(*ck, nullptr, -1));
  EXPECT_EQ(j["tensors"].size(), ck->tensors().size());
  EXPECT_EQ(j["problems"].size(), ck->problems().size());
  EXPECT_EQ(j["files"].size(), ck->files().size());
  EXPECT_FALSE(j["completeness"]["proven"].get<bool>());
}

TEST(LayoutJsonTest, NamesThatNeedEscapingAndEmptyContainers) {
  const std::string dir = testing::NewTempDir();
  // A file name with a newline, a quote and a byte that is not UTF-8; tensor names with escapes.
  testing::WriteFile(JoinPath(dir, "we\"ird\n\xff.safetensors"),
                     testing::BuildSafetensors({{"a\tb", DType::kF32, {2}},
                                                {"\xc3\xa9\\", DType::kBF16, {}},
                                                {"empty", DType::kU8, {0}}},
                                               {{"format", "pt"}, {"k\x01", "v\"\n"}}));
  absl::StatusOr<CheckpointLayout> ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  ASSERT_TRUE(ck.ok()) << ck.status();
  ExpectFormattedLikeNlohmann(*ck);
  // Nothing kept: empty arrays and objects.
  ExpectFormattedLikeNlohmann(*ck, [](const std::string&) { return false; });
  const std::string empty = testing::NewTempDir();
  absl::StatusOr<CheckpointLayout> none = CheckpointLayout::Scan(LocalFileSystem(), empty);
  ASSERT_TRUE(none.ok());
  ExpectFormattedLikeNlohmann(*none);
}

}  // namespace
}  // namespace safeshard
