#include "core/write/shard_writer.h"

#include <sys/stat.h>

#include <atomic>
#include <numeric>

#include "core/consolidate/consolidate.h"
#include "core/format/manifest.h"
#include "core/layout/layout.h"
#include "core/testing/testing.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace safeshard {
namespace {

using ::testing::HasSubstr;

std::vector<float> Iota(size_t n, float start) {
  std::vector<float> v(n);
  std::iota(v.begin(), v.end(), start);
  return v;
}

TEST(ShardWriterTest, TwoRanksWriteALayoutThatScansCompleteAndConsolidates) {
  const std::string dir = testing::NewTempDir() + "/ckpt";
  // w [4, 3] row-sharded; b [3] on rank 0 only; s [4, 2] held by rank 1 as two chunks (strided).
  const std::vector<float> w = Iota(12, 0), b = Iota(3, 100), s = Iota(8, 200);
  ShardWriter r1(dir, 1, 2, {}, 2);
  ASSERT_TRUE(r1.Add({"w", DType::kF32, {2, 3}, {2, 0}, {4, 3}, w.data() + 6}).ok());
  ASSERT_TRUE(r1.Add({"s", DType::kF32, {1, 2}, {0, 0}, {4, 2}, s.data()}).ok());
  ASSERT_TRUE(r1.Add({"s", DType::kF32, {3, 2}, {1, 0}, {4, 2}, s.data() + 2}).ok());
  auto c1 = r1.Commit();
  ASSERT_TRUE(c1.ok()) << c1.status();
  EXPECT_FALSE(c1->manifest_published);  // rank 0 has not committed yet
  EXPECT_FALSE(LocalFileSystem().Stat(dir + "/" + std::string(kManifestFileName)).ok());
  ShardWriter r0(dir, 0, 2);
  ASSERT_TRUE(r0.Add({"w", DType::kF32, {2, 3}, {0, 0}, {4, 3}, w.data()}).ok());
  ASSERT_TRUE(r0.Add({"b", DType::kF32, {3}, {}, {}, b.data()}).ok());
  auto c0 = r0.Commit();
  ASSERT_TRUE(c0.ok()) << c0.status();
  EXPECT_TRUE(c0->manifest_published);
  EXPECT_EQ(c0->files, (std::vector<std::string>{"shard-00001-model-00001-of-00001.safetensors"}));

  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  ASSERT_TRUE(ck.ok());
  for (const Problem& p : ck->problems()) ADD_FAILURE() << p.ToString();
  EXPECT_TRUE(ck->completeness().proven);
  ASSERT_NE(ck->FindTensor("s"), nullptr);
  EXPECT_EQ(ck->FindTensor("s")->chunks.size(), 2u);  // s.__dcp_shard_0 and _1
  // No commit records are left; the manifest lists both ranks' files.
  auto entries = LocalFileSystem().List(dir);
  ASSERT_TRUE(entries.ok());
  EXPECT_EQ(entries->size(), 3u);
  const std::string out = testing::NewTempDir() + "/hf";
  ASSERT_TRUE(Consolidate(LocalFileSystem(), dir, out, {}).ok());
  const std::string file = testing::ReadFile(out + "/model-00001-of-00001.safetensors");
  EXPECT_NE(file.find(std::string(reinterpret_cast<const char*>(w.data()), 48)), std::string::npos);
  EXPECT_NE(file.find(std::string(reinterpret_cast<const char*>(s.data()), 32)), std::string::npos);
}

TEST(ShardWriterTest, MappingChoosesFilesAndBadChunksAreRefused) {
  const std::string dir = testing::NewTempDir() + "/ckpt";
  const std::vector<float> v = Iota(4, 0);
  ShardWriter w(dir, 0, 1, {{"a", 1}, {"b", 2}});
  ASSERT_TRUE(w.Add({"a", DType::kF32, {4}, {}, {}, v.data()}).ok());
  ASSERT_TRUE(w.Add({"b", DType::kF32, {4}, {}, {}, v.data()}).ok());
  auto bad = w.Add({"c", DType::kF32, {4}, {}, {}, v.data()});
  EXPECT_THAT(std::string(bad.message()), HasSubstr("not in fqn_to_index_mapping"));
  bad = w.Add({"a", DType::kF32, {4}, {2}, {4}, v.data()});
  EXPECT_THAT(std::string(bad.message()), HasSubstr("lies outside the global shape [4]"));
  bad = w.Add({"a", DType::kBF16, {2}, {}, {4}, v.data()});
  EXPECT_THAT(std::string(bad.message()), HasSubstr("an earlier one F32 [4]"));
  auto c = w.Commit();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->files, (std::vector<std::string>{"shard-00001-model-00001-of-00002.safetensors",
                                                "shard-00001-model-00002-of-00002.safetensors"}));
  EXPECT_TRUE(c->manifest_published);
  EXPECT_FALSE(w.Commit().ok());  // once
}

TEST(ShardWriterTest, AStaleRecordOfAnEarlierSaveDoesNotPublishAWrongManifest) {
  const std::string dir = testing::NewTempDir() + "/ckpt";
  const std::vector<float> v = Iota(8, 0);
  {
    ShardWriter r1(dir, 1, 2);
    ASSERT_TRUE(r1.Add({"w", DType::kF32, {4}, {4}, {8}, v.data() + 4}).ok());
    ASSERT_TRUE(r1.Commit().ok());
  }
  // Rank 1's file is rewritten (a new save that died before its record): its size differs.
  testing::WriteFile(dir + "/shard-00002-model-00001-of-00001.safetensors", "torn");
  ShardWriter r0(dir, 0, 2);
  ASSERT_TRUE(r0.Add({"w", DType::kF32, {4}, {0}, {8}, v.data()}).ok());
  auto c = r0.Commit();
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("the manifest is not published"));
  EXPECT_FALSE(LocalFileSystem().Stat(dir + "/" + std::string(kManifestFileName)).ok());
}

TEST(ShardWriterTest, StaleFilesAnotherWorldSizeAndACancelledCommitPublishNothing) {
  const std::vector<float> v = Iota(8, 0);
  // An earlier, larger save left rank 2's file: the manifest of a 2-rank save is not published.
  const std::string dir = testing::NewTempDir() + "/ckpt";
  ASSERT_TRUE(LocalFileSystem().MakeDirs(dir).ok());
  testing::WriteFile(dir + "/shard-00003-model-00001-of-00001.safetensors", "old");
  ShardWriter a(dir, 1, 2), b(dir, 0, 2);
  ASSERT_TRUE(a.Add({"w", DType::kF32, {4}, {4}, {8}, v.data() + 4}).ok());
  ASSERT_TRUE(b.Add({"w", DType::kF32, {4}, {0}, {8}, v.data()}).ok());
  ASSERT_TRUE(a.Commit().ok());
  auto c = b.Commit();
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("not a file of this save"));
  EXPECT_FALSE(LocalFileSystem().Stat(dir + "/" + std::string(kManifestFileName)).ok());
  // The records stay: the scan reports the save as unfinished (blocking).
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  ASSERT_TRUE(ck.ok());
  EXPECT_TRUE(ck->HasBlockingProblem());

  // Two saves with other world sizes met in one directory.
  const std::string two = testing::NewTempDir() + "/two";
  ShardWriter x(two, 0, 2), y(two, 1, 3);
  ASSERT_TRUE(y.Add({"w", DType::kF32, {4}, {4}, {8}, v.data() + 4}).ok());
  ASSERT_TRUE(y.Commit().ok());
  ASSERT_TRUE(x.Add({"w", DType::kF32, {4}, {0}, {8}, v.data()}).ok());
  auto xc = x.Commit();
  ASSERT_TRUE(xc.ok());  // rank 1 of its own 2-rank save has not committed: no publishing yet
  EXPECT_FALSE(xc->manifest_published);
  auto both = CheckpointLayout::Scan(LocalFileSystem(), two);
  ASSERT_TRUE(both.ok());
  int unfinished = 0;
  for (const Problem& p : both->problems()) unfinished += p.kind == ProblemKind::kUnfinishedSave;
  EXPECT_EQ(unfinished, 2);  // one per world size

  // A cancelled commit renames nothing and leaves no record.
  const std::string cancelled = testing::NewTempDir() + "/cancelled";
  std::atomic<bool> stop{true};
  ShardWriter z(cancelled, 0, 1);
  ASSERT_TRUE(z.Add({"w", DType::kF32, {8}, {}, {}, v.data()}).ok());
  auto zc = z.Commit(&stop);
  EXPECT_EQ(zc.status().code(), absl::StatusCode::kCancelled);
  auto left = LocalFileSystem().List(cancelled);
  ASSERT_TRUE(left.ok());
  EXPECT_TRUE(left->empty());
  // Chunks of one tensor that overlap on one rank, and bad ranks, are refused at once.
  ShardWriter o(testing::NewTempDir() + "/o", 0, 1);
  ASSERT_TRUE(o.Add({"w", DType::kF32, {4}, {0}, {8}, v.data()}).ok());
  EXPECT_THAT(std::string(o.Add({"w", DType::kF32, {4}, {2}, {8}, v.data()}).message()),
              HasSubstr("overlaps one added before"));
  EXPECT_FALSE(ShardWriter::CheckGroup(2, 2, {}).ok());
  EXPECT_FALSE(ShardWriter::CheckGroup(0, 1, {{"a", 0}}).ok());
}

}  // namespace
}  // namespace safeshard
