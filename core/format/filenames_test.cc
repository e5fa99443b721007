#include "core/format/filenames.h"

#include "gtest/gtest.h"

namespace safeshard {
namespace {

TEST(FileNamesTest, GeneratesModelAndShardNames) {
  EXPECT_EQ(ModelFileName(1, 2), "model-00001-of-00002.safetensors");
  EXPECT_EQ(ShardFileName(0, 3, 4), "shard-00001-model-00003-of-00004.safetensors");
  EXPECT_EQ(ShardFileName(11, 1, 1), "shard-00012-model-00001-of-00001.safetensors");
}

TEST(FileNamesTest, ParsesEveryAcceptedForm) {
  EXPECT_EQ(ParseFileIndex("model.safetensors")->index, 1);
  absl::StatusOr<FileIndex> a = ParseFileIndex("model-00002-of-00008.safetensors");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->index, 2);
  EXPECT_EQ(a->count, 8);
  EXPECT_FALSE(a->shard.has_value());
  absl::StatusOr<FileIndex> b = ParseFileIndex("model.safetensors-00002-of-00008.safetensors");
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->index, 2);
  absl::StatusOr<FileIndex> c = ParseFileIndex("shard-00003-model-00001-of-00002.safetensors");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->index, 1);
  EXPECT_EQ(c->count, 2);
  EXPECT_EQ(c->shard, 3);
  EXPECT_EQ(ParseFileIndex("diffusion_pytorch_model-00001-of-00003.safetensors")->count, 3);
}

TEST(FileNamesTest, RejectsIndicesOutsideRange) {
  EXPECT_FALSE(ParseFileIndex("model-00000-of-00002.safetensors").ok());
  EXPECT_FALSE(ParseFileIndex("model-00003-of-00002.safetensors").ok());
  EXPECT_FALSE(ParseFileIndex("model-00001-of-00000.safetensors").ok());
  EXPECT_FALSE(ParseFileIndex("weights.safetensors").ok());
  EXPECT_FALSE(ParseFileIndex("model-00001-of-00002.bin").ok());
  EXPECT_FALSE(ParseFileIndex("model-x-of-00002.safetensors").ok());
}

TEST(FileNamesTest, AssignsParsedIndicesWhenDense) {
  FileIndexAssignment a =
      AssignFileIndices({"model-00002-of-00002.safetensors", "model-00001-of-00002.safetensors"});
  EXPECT_FALSE(a.warning.has_value());
  EXPECT_EQ(a.count, 2);
  EXPECT_EQ(a.index_of.at("model-00002-of-00002.safetensors"), 2);
}

TEST(FileNamesTest, FallsBackToSortedNamesWithWarning) {
  FileIndexAssignment a = AssignFileIndices({"zeta.safetensors", "alpha.safetensors"});
  ASSERT_TRUE(a.warning.has_value());
  EXPECT_EQ(a.index_of.at("alpha.safetensors"), 1);
  EXPECT_EQ(a.index_of.at("zeta.safetensors"), 2);
  // Not dense: 1 and 3 of 3 with only two files.
  FileIndexAssignment b =
      AssignFileIndices({"model-00003-of-00003.safetensors", "model-00001-of-00003.safetensors"});
  ASSERT_TRUE(b.warning.has_value());
  EXPECT_EQ(b.index_of.at("model-00003-of-00003.safetensors"), 2);
}

TEST(FileNamesTest, PlainFileNames) {
  EXPECT_TRUE(IsPlainFileName("model-00001-of-00002.safetensors"));
  EXPECT_FALSE(IsPlainFileName("/etc/passwd"));
  EXPECT_FALSE(IsPlainFileName("../x.safetensors"));
  EXPECT_FALSE(IsPlainFileName("a\\b"));
  EXPECT_FALSE(IsPlainFileName(".."));
  EXPECT_FALSE(IsPlainFileName(""));
}

}  // namespace
}  // namespace safeshard
