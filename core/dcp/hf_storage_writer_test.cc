// The writer with ranks as threads of one process (the in-process Collective): full saves with a
// file mapping, and sharded saves with empty shards, non-contiguous tensors and views.
#include "core/dcp/hf_storage_writer.h"

#include <thread>

#include "core/consolidate/run_ranks.h"
#include "core/format/index_json.h"
#include "core/io/filesystem.h"
#include "core/layout/layout.h"
#include "core/testing/testing.h"
#include "gtest/gtest.h"

namespace safeshard {
namespace {

using testing::RunRanks;

std::string Bytes(const CheckpointLayout& ck, const std::string& name) {
  const TensorLayout* t = ck.FindTensor(name);
  if (t == nullptr || t->chunks.size() != 1) return "";
  const Chunk& c = t->chunks[0];
  return testing::ReadFile(JoinPath(ck.root(), ck.files()[c.file].name))
      .substr(c.begin, c.end - c.begin);
}

std::string Raw(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  return std::string(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size());
}

TEST(HfStorageWriterTest, FullSaveFollowsTheMappingAndWritesTheIndexLast) {
  std::string dir = testing::NewTempDir() + "/full";
  at::Tensor a = torch::arange(12, torch::kFloat32).reshape({3, 4});
  at::Tensor b = torch::arange(6, torch::kInt64);
  at::Tensor c = torch::ones({2, 2}, torch::kBFloat16);
  SaveOptions o;
  o.fqn_to_index_mapping = std::map<std::string, int>{{"a", 1}, {"b", 2}, {"c", 2}};
  auto st = RunRanks(2, [&](int, Collective& col) {
    StateDict sd = {{"a", a}, {"b", b}, {"c", c}};
    return SaveFull(sd, dir, col, o).status();
  });
  for (const auto& s : st) ASSERT_TRUE(s.ok()) << s;
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  ASSERT_TRUE(ck.ok());
  EXPECT_TRUE(ck->problems().empty());
  EXPECT_EQ(ck->kind(), CheckpointKind::kHfSharded);
  EXPECT_EQ(ck->index()->weight_map.at("a"), "model-00001-of-00002.safetensors");
  EXPECT_EQ(ck->index()->weight_map.at("c"), "model-00002-of-00002.safetensors");
  EXPECT_EQ(*ck->index()->total_size, 48u + 48u + 8u);
  EXPECT_TRUE(Bytes(*ck, "a") == Raw(a));
  EXPECT_TRUE(Bytes(*ck, "b") == Raw(b));
  EXPECT_TRUE(Bytes(*ck, "c") == Raw(c));
}

TEST(HfStorageWriterTest, FullSaveRefusesShardedTensorsOnEveryRank) {
  std::string dir = testing::NewTempDir() + "/full";
  auto st = RunRanks(2, [&](int r, Collective& col) {
    StateDict sd = {{"w", ShardedTensor{torch::zeros({2, 2}), {4, 2}, {2 * r, 0}}}};
    return SaveFull(sd, dir, col).status();
  });
  for (const auto& s : st) EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
}

TEST(HfStorageWriterTest, ShardedSaveHandlesEmptyShardsViewsAndNonContiguousTensors) {
  std::string dir = testing::NewTempDir() + "/sharded";
  at::Tensor global = torch::arange(30, torch::kFloat32).reshape({5, 6});
  at::Tensor big = torch::arange(100, torch::kInt64);
  auto st = RunRanks(3, [&](int r, Collective& col) {
    // Rows 0-2 / 3-4 / empty; column halves of a transposed (non-contiguous) view; a narrow
    // view of a larger storage; a replicated scalar.
    int64_t lo = std::min<int64_t>(5, 3 * r), hi = std::min<int64_t>(5, 3 * r + 3);
    at::Tensor rows = global.slice(0, lo, hi);
    at::Tensor t = global.t();  // [6, 5], non-contiguous
    at::Tensor cols = t.slice(1, r == 0 ? 0 : 3, r == 0 ? 3 : 5);
    StateDict sd = {{"rows", ShardedTensor{rows, {5, 6}, {lo, 0}}},
                    {"view", big.narrow(0, 10, 4)},
                    {"step", torch::tensor(7, torch::kInt64)}};
    if (r < 2) sd.push_back({"tcols", ShardedTensor{cols, {6, 5}, {0, r == 0 ? 0 : 3}}});
    return SaveSharded(sd, dir, col).status();
  });
  for (const auto& s : st) ASSERT_TRUE(s.ok()) << s;
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  ASSERT_TRUE(ck.ok());
  for (const Problem& p : ck->problems()) ADD_FAILURE() << p.ToString();
  EXPECT_EQ(ck->FindTensor("rows")->chunks.size(), 2u);  // the empty shard saved nothing
  EXPECT_EQ(ck->FindTensor("view")->chunks.size(), 1u);  // replicated: once
  EXPECT_TRUE(Bytes(*ck, "view") == Raw(big.narrow(0, 10, 4)));
  EXPECT_EQ(ck->FindTensor("tcols")->shape, (std::vector<uint64_t>{6, 5}));
  EXPECT_TRUE(LocalFileSystem().Stat(dir + "/safeshard.complete.json").ok());
}

TEST(HfStorageWriterTest, ShardedSaveSplitsFilesByMappingInParallelAndRelabelsFp8) {
  std::string dir = testing::NewTempDir() + "/mapped";
  at::Tensor q = torch::arange(16, torch::kUInt8).reshape({4, 4});  // FP8 bytes
  SaveOptions o;
  o.fqn_to_index_mapping = std::map<std::string, int>{{"a", 1}, {"q", 2}};
  o.fqn_to_dtype_mapping = {{"q", DType::kF8_E4M3}};
  o.thread_count = 2;
  o.consolidated_output_path = testing::NewTempDir() + "/hf";
  auto st = RunRanks(2, [&](int r, Collective& col) {
    StateDict sd = {
        {"a", ShardedTensor{torch::full({2, 3}, r, torch::kFloat32), {4, 3}, {2 * r, 0}}},
        {"q", ShardedTensor{q.slice(0, 2 * r, 2 * r + 2), {4, 4}, {2 * r, 0}}}};
    return SaveSharded(sd, dir, col, o).status();
  });
  for (const auto& s : st) ASSERT_TRUE(s.ok()) << s;
  for (const char* f : {"shard-00001-model-00001-of-00002.safetensors",
                        "shard-00001-model-00002-of-00002.safetensors",
                        "shard-00002-model-00001-of-00002.safetensors",
                        "shard-00002-model-00002-of-00002.safetensors"}) {
    EXPECT_TRUE(LocalFileSystem().Stat(dir + "/" + f).ok()) << f;
  }
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  ASSERT_TRUE(ck.ok());
  EXPECT_TRUE(ck->problems().empty());
  EXPECT_EQ(ck->FindTensor("q")->dtype, DType::kF8_E4M3);
  auto hf = CheckpointLayout::Scan(LocalFileSystem(), o.consolidated_output_path);
  ASSERT_TRUE(hf.ok());
  EXPECT_EQ(hf->index()->weight_map.at("q"), "model-00002-of-00002.safetensors");
  EXPECT_TRUE(Bytes(*hf, "q") == Raw(q));
}

TEST(HfStorageWriterTest, StridedChunksOfOneRankGoToPhysicalKeysWithLogicalNames) {
  // A 2-rank strided (FSDP2 + TP) row split of an [8, 3] tensor in 4 blocks: rank r holds blocks
  // r and r + 2, two non-adjacent chunks in its one file.
  std::string root = testing::NewTempDir() + "/run";
  at::Tensor full = torch::arange(24, torch::kFloat32).reshape({8, 3});
  SaveOptions o;
  o.enable_consolidation = true;  // shards to run/sharded, the consolidation to run
  o.thread_count_consolidation = 2;
  auto st = RunRanks(2, [&](int r, Collective& col) {
    StateDict sd;
    for (int k = 0; k < 2; ++k) {
      const int64_t row = 2 * (r + 2 * k);
      sd.push_back({"w", ShardedTensor{full.slice(0, row, row + 2), {8, 3}, {row, 0}}});
    }
    sd.push_back({"b", torch::ones({3}, torch::kFloat32)});
    return Save(sd, root, col, o).status();
  });
  for (const auto& s : st) ASSERT_TRUE(s.ok()) << s;
  auto shards = CheckpointLayout::Scan(LocalFileSystem(), root + "/sharded");
  ASSERT_TRUE(shards.ok());
  std::string problems;
  for (const Problem& p : shards->problems()) problems += p.ToString() + "\n";
  EXPECT_TRUE(shards->problems().empty()) << problems;
  EXPECT_TRUE(shards->completeness().proven);
  const TensorLayout* w = shards->FindTensor("w");
  ASSERT_NE(w, nullptr);
  EXPECT_TRUE(w->declared_shape);
  ASSERT_EQ(w->chunks.size(), 4u);
  for (const Chunk& c : w->chunks) {
    EXPECT_TRUE(c.key == "w.__dcp_shard_0" || c.key == "w.__dcp_shard_1") << c.key;
  }
  auto sums = VerifyChecksums(LocalFileSystem(), *shards);
  ASSERT_TRUE(sums.ok()) << sums.status();
  EXPECT_TRUE(sums->problems.empty());
  EXPECT_TRUE(sums->unchecked.empty());
  // The consolidation in `root` holds the logical tensor, byte for byte.
  auto hf = CheckpointLayout::Scan(LocalFileSystem(), root);
  ASSERT_TRUE(hf.ok());
  EXPECT_TRUE(hf->problems().empty());
  EXPECT_TRUE(Bytes(*hf, "w") == Raw(full));
}

TEST(HfStorageWriterTest, RepeatedNamesMustBeChunksOfOneShardedTensor) {
  std::string dir = testing::NewTempDir() + "/bad";
  auto st = RunRanks(1, [&](int, Collective& col) {
    StateDict sd = {{"w", torch::zeros({2})}, {"w", torch::zeros({2})}};
    return SaveSharded(sd, dir, col).status();
  });
  EXPECT_EQ(st[0].code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace safeshard
