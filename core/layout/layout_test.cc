#include "core/layout/layout.h"

#include <atomic>

#include "core/example/example.h"
#include "core/format/filenames.h"
#include "core/format/sharding.h"
#include "core/testing/testing.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace safeshard {
namespace {

using ::testing::HasSubstr;

std::vector<Problem> OfKind(const CheckpointLayout& ck, ProblemKind k) {
  std::vector<Problem> out;
  for (const Problem& p : ck.problems()) {
    if (p.kind == k) out.push_back(p);
  }
  return out;
}

std::string Dump(const CheckpointLayout& ck) {
  std::string s;
  for (const Problem& p : ck.problems()) s += p.ToString() + "\n";
  return s;
}

// Counts bytes read through it and fails the test if anything maps a file.
class CountingFs : public testing::ForwardingFileSystem {
 public:
  explicit CountingFs(FileSystem* base) : ForwardingFileSystem(base) {}
  std::atomic<uint64_t> bytes_read{0};
  std::atomic<int> maps{0};
  absl::StatusOr<std::unique_ptr<ReadableFile>> OpenRead(const std::string& p) override {
    auto f = base_->OpenRead(p);
    if (!f.ok()) return f.status();
    return std::unique_ptr<ReadableFile>(new File(this, std::move(*f)));
  }

 private:
  class File : public ReadableFile {
   public:
    File(CountingFs* fs, std::unique_ptr<ReadableFile> f) : fs_(fs), f_(std::move(f)) {}
    const std::string& path() const override { return f_->path(); }
    uint64_t size() const override { return f_->size(); }
    absl::Status ReadAt(uint64_t o, size_t n, char* d) const override {
      fs_->bytes_read += n;
      return f_->ReadAt(o, n, d);
    }
    absl::StatusOr<std::shared_ptr<const MappedRegion>> Map() override {
      fs_->maps++;
      return f_->Map();
    }

   private:
    CountingFs* fs_;
    std::unique_ptr<ReadableFile> f_;
  };
};

TEST(LayoutTest, ScansGeneratedDcpCheckpointClean) {
  std::string dir = testing::NewTempDir();
  std::vector<ExampleTensor> model = TransformerLikeModel({.layers = 2, .hidden = 16, .vocab = 40});
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), dir, model, {.ranks = 4}).ok());
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  ASSERT_TRUE(ck.ok()) << ck.status();
  EXPECT_EQ(ck->kind(), CheckpointKind::kDcpSharded);
  EXPECT_EQ(ck->rank_count(), 4);
  EXPECT_TRUE(ck->problems().empty()) << Dump(*ck);
  ASSERT_EQ(ck->tensors().size(), model.size());
  for (const ExampleTensor& t : model) {
    const TensorLayout* tl = ck->FindTensor(t.name);
    ASSERT_NE(tl, nullptr) << t.name;
    EXPECT_EQ(tl->shape, t.shape) << t.name;
    EXPECT_EQ(tl->dtype, t.dtype) << t.name;
  }
  EXPECT_EQ(ck->FindTensor("model.layers.0.mlp.gate_proj.weight")->chunks.size(), 4u);  // mesh
  EXPECT_EQ(ck->FindTensor("model.norm.weight")->chunks.size(), 1u);  // replicated: saved once
  EXPECT_EQ(ck->FindTensor("train.step")->shape.size(), 0u);          // 0-d scalar kept
}

TEST(LayoutTest, ReadsHeadersOnly) {
  std::string dir = testing::NewTempDir();
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), dir,
                                 TransformerLikeModel({.layers = 1, .hidden = 64}), {.ranks = 2})
                  .ok());
  CountingFs fs(&LocalFileSystem());
  auto ck = CheckpointLayout::Scan(fs, dir);
  ASSERT_TRUE(ck.ok());
  uint64_t header_bytes = 0, file_bytes = 0;
  for (const FileInfo& f : ck->files()) {
    header_bytes += f.header->data_start();
    file_bytes += f.size;
  }
  EXPECT_EQ(fs.maps.load(), 0);
  EXPECT_LE(fs.bytes_read.load(), header_bytes + 64 * ck->files().size());
  EXPECT_LT(fs.bytes_read.load(), file_bytes / 4);
}

TEST(LayoutTest, ReportsDeliberateGapWithLocation) {
  std::string dir = testing::NewTempDir();
  std::vector<ExampleTensor> model = {{"w", DType::kF32, {8, 6}, Sharding::kRow}};
  WriteOptions o{.ranks = 4};
  o.drop_chunk = std::make_pair(std::string("w"), 2);
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), dir, model, o).ok());
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  ASSERT_TRUE(ck.ok());
  auto gaps = OfKind(*ck, ProblemKind::kGap);
  ASSERT_EQ(gaps.size(), 1u) << Dump(*ck);
  EXPECT_EQ(gaps[0].tensor, "w");
  EXPECT_THAT(gaps[0].message, HasSubstr("12 of 48 elements"));
  EXPECT_THAT(gaps[0].message, HasSubstr("[4:6, 0:6]"));
  EXPECT_TRUE(ck->FindTensor("w")->has_problem);
}

TEST(LayoutTest, ReportsGapInColumnAndMeshSharding) {
  std::string dir = testing::NewTempDir();
  std::vector<ExampleTensor> model = {{"m", DType::kBF16, {4, 8}, Sharding::kMesh}};
  WriteOptions o{.ranks = 4, .mesh_rows = 2};
  o.drop_chunk = std::make_pair(std::string("m"), 3);
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), dir, model, o).ok());
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  auto gaps = OfKind(*ck, ProblemKind::kGap);
  ASSERT_EQ(gaps.size(), 1u) << Dump(*ck);
  EXPECT_THAT(gaps[0].message, HasSubstr("[2:4, 4:8]"));
}

TEST(LayoutTest, ReportsOverlapNamingBothFiles) {
  std::string dir = testing::NewTempDir();
  for (int r = 0; r < 2; ++r) {
    ShardingInfo info;
    info.saved_offsets["w"] = {static_cast<uint64_t>(r * 2), 0};  // rows [0,3) and [2,5)
    testing::WriteFile(JoinPath(dir, ShardFileName(r, 1, 1)),
                       testing::BuildSafetensors({{"w", DType::kF32, {3, 2}}},
                                                 ShardedFileMetadata(info)));
  }
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  auto ov = OfKind(*ck, ProblemKind::kOverlap);
  ASSERT_EQ(ov.size(), 1u) << Dump(*ck);
  EXPECT_THAT(ov[0].message, HasSubstr("[2:3, 0:2]"));
  EXPECT_THAT(ov[0].message, HasSubstr("shard-00002-model-00001-of-00001.safetensors"));
}

TEST(LayoutTest, ReportsMissingRank) {
  std::string dir = testing::NewTempDir();
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), dir,
                                 {{"w", DType::kF32, {8, 2}, Sharding::kRow}}, {.ranks = 4})
                  .ok());
  ASSERT_TRUE(LocalFileSystem().Remove(JoinPath(dir, ShardFileName(1, 1, 1))).ok());
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  auto r = OfKind(*ck, ProblemKind::kShardRanks);
  ASSERT_EQ(r.size(), 1u) << Dump(*ck);
  EXPECT_THAT(r[0].message, HasSubstr("missing shard-2"));
  EXPECT_EQ(OfKind(*ck, ProblemKind::kGap).size(), 1u);
}

TEST(LayoutTest, ReportsDTypeDisagreement) {
  std::string dir = testing::NewTempDir();
  const DType dts[] = {DType::kF32, DType::kBF16};
  for (int r = 0; r < 2; ++r) {
    ShardingInfo info;
    info.saved_offsets["w"] = {static_cast<uint64_t>(r * 2)};
    testing::WriteFile(JoinPath(dir, ShardFileName(r, 1, 1)),
                       testing::BuildSafetensors({{"w", dts[r], {2}}}, ShardedFileMetadata(info)));
  }
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  EXPECT_EQ(OfKind(*ck, ProblemKind::kDTypeMismatch).size(), 1u) << Dump(*ck);
}

TEST(LayoutTest, ChecksIndexAgainstFiles) {
  std::string dir = testing::NewTempDir();
  testing::WriteFile(JoinPath(dir, "model-00001-of-00002.safetensors"),
                     testing::BuildSafetensors({{"a", DType::kF32, {2}}, {"b", DType::kU8, {3}}}));
  testing::WriteFile(JoinPath(dir, "model-00002-of-00002.safetensors"),
                     testing::BuildSafetensors({{"c", DType::kI64, {}}}));
  testing::WriteFile(JoinPath(dir, "model.safetensors.index.json"),
                     R"({"metadata": {"total_size": 999}, "weight_map": {
                        "a": "model-00001-of-00002.safetensors",
                        "c": "model-00001-of-00002.safetensors",
                        "d": "model-00003-of-00003.safetensors"}})");
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  ASSERT_TRUE(ck.ok());
  EXPECT_EQ(ck->kind(), CheckpointKind::kHfSharded);
  EXPECT_EQ(OfKind(*ck, ProblemKind::kIndexMissingTensor).size(), 1u) << Dump(*ck);  // c
  EXPECT_EQ(OfKind(*ck, ProblemKind::kIndexMissingFile).size(), 1u);                 // 00003
  auto not_in = OfKind(*ck, ProblemKind::kNotInIndex);
  ASSERT_EQ(not_in.size(), 1u);  // b (c is listed, in the wrong file: reported above)
  EXPECT_EQ(not_in[0].tensor, "b");
}

TEST(LayoutTest, ChecksIndexTotalSize) {
  std::string dir = testing::NewTempDir();
  testing::WriteFile(JoinPath(dir, "model.safetensors"),
                     testing::BuildSafetensors({{"a", DType::kF32, {2}}}));
  testing::WriteFile(JoinPath(dir, "model.safetensors.index.json"),
                     R"({"metadata": {"total_size": 9}, "weight_map": {"a": "model.safetensors"}})");
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  auto ts = OfKind(*ck, ProblemKind::kIndexTotalSize);
  ASSERT_EQ(ts.size(), 1u) << Dump(*ck);
  EXPECT_THAT(ts[0].message, HasSubstr("hold 8 bytes"));
  testing::WriteFile(JoinPath(dir, "model.safetensors.index.json"),
                     R"({"metadata": {"total_size": 8}, "weight_map": {"a": "model.safetensors"}})");
  EXPECT_TRUE(CheckpointLayout::Scan(LocalFileSystem(), dir)->problems().empty());
}

TEST(LayoutTest, InvalidFileIsReportedAndOthersStillScanned) {
  std::string dir = testing::NewTempDir();
  testing::WriteFile(JoinPath(dir, "a.safetensors"),
                     testing::BuildSafetensors({{"a", DType::kF32, {2}}}));
  testing::WriteFile(JoinPath(dir, "b.safetensors"), "garbage!");
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  ASSERT_TRUE(ck.ok());
  auto inv = OfKind(*ck, ProblemKind::kInvalidFile);
  ASSERT_EQ(inv.size(), 1u);
  EXPECT_EQ(inv[0].file, "b.safetensors");
  EXPECT_NE(ck->FindTensor("a"), nullptr);
}

TEST(LayoutTest, IgnoresTemporaryFilesAndScansSingleFilePath) {
  std::string dir = testing::NewTempDir();
  testing::WriteFile(JoinPath(dir, "model.safetensors"),
                     testing::BuildSafetensors({{"a", DType::kF32, {2}}}));
  testing::WriteFile(JoinPath(dir, ".model.safetensors.safeshard-tmp-1-ff"), "partial");
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  EXPECT_EQ(ck->files().size(), 1u);
  EXPECT_EQ(ck->kind(), CheckpointKind::kSingleFile);
  auto one = CheckpointLayout::Scan(LocalFileSystem(), JoinPath(dir, "model.safetensors"));
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(one->tensors().size(), 1u);
  EXPECT_EQ(CheckpointLayout::Scan(LocalFileSystem(), JoinPath(dir, "nope")).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(CoverageTest, ReportsOutOfBoundsChunk) {
  std::vector<FileInfo> files(1);
  files[0].name = "f";
  std::vector<Chunk> chunks = {{0, {0, 0}, {2, 4}, 0, 32}, {0, {2, 0}, {3, 4}, 32, 80}};
  std::vector<Problem> problems;
  CheckCoverage("t", {4, 4}, chunks, files, {}, &problems);
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_EQ(problems[0].kind, ProblemKind::kOutOfBounds);
}

TEST(CoverageTest, ExactTilingIsClean) {
  std::vector<FileInfo> files(1);
  std::vector<Chunk> chunks;
  for (uint64_t i = 0; i < 3; ++i) {
    for (uint64_t j = 0; j < 5; ++j) chunks.push_back({0, {i * 2, j * 3, 0}, {2, 3, 7}, 0, 0});
  }
  chunks.push_back({0, {6, 0, 0}, {0, 15, 7}, 0, 0});  // empty local shard
  std::vector<Problem> problems;
  CheckCoverage("t", {6, 15, 7}, chunks, files, {}, &problems);
  EXPECT_TRUE(problems.empty());
}

TEST(CoverageTest, CountsMissingElementsBeyondGridLimit) {
  std::vector<FileInfo> files(1);
  std::vector<Chunk> chunks;
  for (uint64_t i = 0; i < 100; ++i) {
    if (i != 50) chunks.push_back({0, {i, 0}, {1, 10}, 0, 0});
  }
  std::vector<Problem> problems;
  CheckCoverage("t", {100, 10}, chunks, files, {.max_gap_cells = 10}, &problems);
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_THAT(problems[0].message, HasSubstr("10 of 1000"));
}

}  // namespace
}  // namespace safeshard
