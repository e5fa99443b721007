#include "core/layout/layout.h"

#include <algorithm>
#include <atomic>
#include <random>

#include "absl/strings/str_cat.h"

#include "core/example/example.h"
#include "core/format/filenames.h"
#include "core/format/manifest.h"
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
    testing::WriteFile(
        JoinPath(dir, ShardFileName(r, 1, 1)),
        testing::BuildSafetensors({{"w", DType::kF32, {3, 2}}}, ShardedFileMetadata(info)));
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
  testing::WriteFile(
      JoinPath(dir, "model.safetensors.index.json"),
      R"({"metadata": {"total_size": 9}, "weight_map": {"a": "model.safetensors"}})");
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  auto ts = OfKind(*ck, ProblemKind::kIndexTotalSize);
  ASSERT_EQ(ts.size(), 1u) << Dump(*ck);
  EXPECT_THAT(ts[0].message, HasSubstr("hold 8 bytes"));
  testing::WriteFile(
      JoinPath(dir, "model.safetensors.index.json"),
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

// ---- Proof of completeness (issue 11) -------------------------------------------------------

std::vector<ExampleTensor> SmallModel() {
  return TransformerLikeModel({.layers = 1, .hidden = 16, .vocab = 40});
}

void RemoveHighestRank(const std::string& dir, int ranks) {
  ASSERT_TRUE(LocalFileSystem().Remove(JoinPath(dir, ShardFileName(ranks - 1, 1, 1))).ok());
}

TEST(CompletenessTest, LostHighestRankIsInvisibleFromHeadersAndSaidSo) {
  std::string dir = testing::NewTempDir();
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), dir, SmallModel(), {.ranks = 2}).ok());
  RemoveHighestRank(dir, 2);
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  ASSERT_TRUE(ck.ok());
  // The headers alone cannot tell: no problem, but never a claim of completeness.
  EXPECT_TRUE(ck->problems().empty()) << Dump(*ck);
  EXPECT_FALSE(ck->completeness().proven);
  EXPECT_THAT(ck->completeness().unproven, HasSubstr("--expect-ranks"));
  // --strict turns that into a blocking problem.
  auto strict = CheckpointLayout::Scan(LocalFileSystem(), dir, {.strict = true});
  ASSERT_EQ(OfKind(*strict, ProblemKind::kUnproven).size(), 1u) << Dump(*strict);
  EXPECT_TRUE(strict->HasBlockingProblem());
}

TEST(CompletenessTest, LostHighestRankIsCaughtByTheManifest) {
  std::string dir = testing::NewTempDir();
  ASSERT_TRUE(
      WriteDcpCheckpoint(LocalFileSystem(), dir, SmallModel(), {.ranks = 2, .manifest = true})
          .ok());
  auto whole = CheckpointLayout::Scan(LocalFileSystem(), dir);
  EXPECT_TRUE(whole->problems().empty()) << Dump(*whole);
  EXPECT_TRUE(whole->completeness().proven);
  EXPECT_EQ(whole->completeness().by, std::vector<std::string>{"safeshard.complete.json"});
  RemoveHighestRank(dir, 2);
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  auto missing = OfKind(*ck, ProblemKind::kManifestMissingFile);
  ASSERT_EQ(missing.size(), 1u) << Dump(*ck);
  EXPECT_EQ(missing[0].file, ShardFileName(1, 1, 1));
  auto ranks = OfKind(*ck, ProblemKind::kManifestRanks);
  ASSERT_EQ(ranks.size(), 1u) << Dump(*ck);
  EXPECT_THAT(ranks[0].message, HasSubstr("says 2 ranks; no shard file of rank 1"));
  EXPECT_TRUE(ck->HasBlockingProblem());
  EXPECT_FALSE(ck->completeness().proven);
}

TEST(CompletenessTest, AManifestFileNameWithControlBytesIsPrintedQuoted) {
  std::string dir = testing::NewTempDir();
  testing::WriteFile(dir + "/model.safetensors",
                     testing::BuildSafetensors({{"w", DType::kF32, {2}}}));
  testing::WriteFile(dir + "/safeshard.complete.json",
                     R"({"format": "safeshard.complete/1", "kind": "consolidated", "files": [)"
                     R"({"name": "evil\nverify: ok\u001b[2J.safetensors", "size": 8}]})");
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  ASSERT_TRUE(ck.ok()) << ck.status();
  std::vector<Problem> missing;
  for (const Problem& p : OfKind(*ck, ProblemKind::kManifestMissingFile)) {
    if (p.file != "model.safetensors.index.json") missing.push_back(p);
  }
  ASSERT_EQ(missing.size(), 1u) << Dump(*ck);
  const std::string text = missing[0].ToString();
  EXPECT_EQ(text.find('\n'), std::string::npos) << text;
  EXPECT_EQ(text.find('\x1b'), std::string::npos) << text;
  EXPECT_THAT(text, HasSubstr("\"evil\\nverify: ok"));
}

TEST(CompletenessTest, AConsolidatedOutputWithoutItsIndexIsUnfinished) {
  // What a consolidation killed between its manifest and its index leaves: every file there
  // and checksummed, but the done signal missing.
  std::string dir = testing::NewTempDir();
  testing::WriteFile(dir + "/model-00001-of-00001.safetensors",
                     testing::BuildSafetensors({{"w", DType::kF32, {2}}}));
  auto whole = CheckpointLayout::Scan(LocalFileSystem(), dir);
  ASSERT_TRUE(whole.ok());
  Manifest m;
  m.kind = std::string(kManifestKindConsolidated);
  ManifestFile f;
  f.name = "model-00001-of-00001.safetensors";
  f.size = whole->files()[0].size;
  m.files.push_back(f);
  testing::WriteFile(dir + "/safeshard.complete.json", SerializeManifest(m));
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  ASSERT_TRUE(ck.ok());
  auto missing = OfKind(*ck, ProblemKind::kManifestMissingFile);
  ASSERT_EQ(missing.size(), 1u) << Dump(*ck);
  EXPECT_THAT(missing[0].message, HasSubstr("did not finish"));
  EXPECT_FALSE(ck->completeness().proven);
}

TEST(LayoutTest, ADirectoryWithoutSafetensorsSaysWhatItHoldsInstead) {
  struct Case {
    std::vector<std::string> files, dirs;
    std::string want;
  };
  for (const Case& c : std::vector<Case>{
           {{}, {}, "the directory is empty"},
           {{"__0_0.distcp", ".metadata"}, {}, "torch.distributed.checkpoint"},
           {{"pytorch_model.bin"}, {}, "PyTorch pickle weights"},
           {{"README.md"}, {}, "none of its 1 entries"},
           {{}, {"step-100", "step-200"}, "2 subdirectories hold checkpoints"},
       }) {
    std::string dir = testing::NewTempDir();
    for (const std::string& f : c.files) testing::WriteFile(dir + "/" + f, "x");
    for (const std::string& d : c.dirs) {
      ASSERT_TRUE(LocalFileSystem().MakeDirs(dir + "/" + d).ok());
      testing::WriteFile(dir + "/" + d + "/model.safetensors",
                         testing::BuildSafetensors({{"w", DType::kF32, {2}}}));
    }
    auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
    ASSERT_TRUE(ck.ok()) << c.want;
    auto none = OfKind(*ck, ProblemKind::kNoCheckpoint);
    ASSERT_EQ(none.size(), 1u) << c.want << Dump(*ck);
    EXPECT_THAT(none[0].message, HasSubstr(c.want));
    EXPECT_TRUE(ck->HasBlockingProblem());
  }
}

TEST(CompletenessTest, LostHighestRankIsCaughtByExpectedRanks) {
  std::string dir = testing::NewTempDir();
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), dir, SmallModel(), {.ranks = 3}).ok());
  auto whole = CheckpointLayout::Scan(LocalFileSystem(), dir, {.expect_ranks = 3});
  EXPECT_TRUE(whole->problems().empty()) << Dump(*whole);
  EXPECT_TRUE(whole->completeness().proven);
  RemoveHighestRank(dir, 3);
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir, {.expect_ranks = 3});
  auto r = OfKind(*ck, ProblemKind::kExpectedRanks);
  ASSERT_EQ(r.size(), 1u) << Dump(*ck);
  EXPECT_THAT(r[0].message,
              HasSubstr("expected 3 ranks, found 2 with shard files; missing rank 2"));
  auto extra = CheckpointLayout::Scan(LocalFileSystem(), dir, {.expect_ranks = 1});
  EXPECT_THAT(OfKind(*extra, ProblemKind::kExpectedRanks).at(0).message,
              HasSubstr("unexpected rank 1"));
}

TEST(CompletenessTest, LostHighestRankIsCaughtByGlobalShape) {
  std::string dir = testing::NewTempDir();
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), dir,
                                 {{"w", DType::kF32, {8, 4}, Sharding::kRow},
                                  {"c", DType::kBF16, {4, 6}, Sharding::kColumn}},
                                 {.ranks = 2, .logical_fqn = true, .global_shape = true})
                  .ok());
  auto whole = CheckpointLayout::Scan(LocalFileSystem(), dir);
  EXPECT_TRUE(whole->problems().empty()) << Dump(*whole);
  // global_shape proves every present tensor is covered, not that no tensor is missing.
  EXPECT_FALSE(whole->completeness().proven);
  EXPECT_THAT(whole->completeness().unproven, HasSubstr("a tensor saved only by a lost rank"));
  EXPECT_TRUE(whole->FindTensor("w")->declared_shape);
  RemoveHighestRank(dir, 2);
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  auto gaps = OfKind(*ck, ProblemKind::kGap);
  ASSERT_EQ(gaps.size(), 2u) << Dump(*ck);
  EXPECT_EQ(ck->FindTensor("w")->shape, (std::vector<uint64_t>{8, 4}));
  for (const Problem& g : gaps) {
    EXPECT_THAT(g.message, HasSubstr(g.tensor == "w" ? "first missing block [4:8, 0:4]"
                                                     : "first missing block [0:4, 3:6]"));
  }
}

TEST(CompletenessTest, ManifestMissingExtraAndResizedFiles) {
  std::string dir = testing::NewTempDir();
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), dir,
                                 {{"w", DType::kF32, {8, 4}, Sharding::kRow}},
                                 {.ranks = 4, .manifest = true})
                  .ok());
  // A middle rank lost, a stray file added, one file grown.
  ASSERT_TRUE(LocalFileSystem().Remove(JoinPath(dir, ShardFileName(1, 1, 1))).ok());
  testing::WriteFile(
      JoinPath(dir, "extra.safetensors"),
      testing::RawSafetensors(R"({"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", "z"));
  {
    std::string path = JoinPath(dir, ShardFileName(2, 1, 1));
    testing::WriteFile(path, testing::ReadFile(path) + "tail");
  }
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  EXPECT_EQ(OfKind(*ck, ProblemKind::kManifestMissingFile).size(), 1u) << Dump(*ck);
  auto unlisted = OfKind(*ck, ProblemKind::kManifestUnlisted);
  ASSERT_EQ(unlisted.size(), 1u) << Dump(*ck);
  EXPECT_EQ(unlisted[0].file, "extra.safetensors");
  auto resized = OfKind(*ck, ProblemKind::kManifestFileSize);
  ASSERT_EQ(resized.size(), 1u) << Dump(*ck);
  EXPECT_EQ(resized[0].file, ShardFileName(2, 1, 1));
}

TEST(CompletenessTest, HostileManifestIsAProblemNeverACrash) {
  std::string dir = testing::NewTempDir();
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), dir,
                                 {{"w", DType::kF32, {8, 4}, Sharding::kRow}}, {.ranks = 2})
                  .ok());
  for (const std::string& text :
       {std::string("{\"format\": \"safeshard.complete/1\", \"ranks\": \"2\", \"files\": []}"),
        std::string("{\"format\": \"safeshard.complete/1\", \"ranks\": 1e999, \"files\": []}"),
        std::string("{\"format\": \"safeshard.complete/1\", \"files\": [{\"name\": 5}]}"),
        std::string(50000, '[') + std::string(50000, ']'), std::string("\0\0\0", 3),
        std::string("{\"format\": \"safeshard.complete/1\", \"files\": []}") +
            std::string("\0x", 2)}) {
    testing::WriteFile(JoinPath(dir, kManifestFileName), text);
    auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
    ASSERT_TRUE(ck.ok());
    ASSERT_EQ(OfKind(*ck, ProblemKind::kInvalidManifest).size(), 1u) << Dump(*ck);
    EXPECT_TRUE(ck->HasBlockingProblem());
    EXPECT_FALSE(ck->completeness().proven);
  }
}

TEST(CompletenessTest, ChecksumMismatchNamesFileAndTensor) {
  std::string dir = testing::NewTempDir();
  ASSERT_TRUE(
      WriteDcpCheckpoint(LocalFileSystem(), dir, SmallModel(), {.ranks = 2, .manifest = true})
          .ok());
  auto clean = CheckpointLayout::Scan(LocalFileSystem(), dir);
  auto ok = VerifyChecksums(LocalFileSystem(), *clean);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_TRUE(ok->problems.empty());
  EXPECT_TRUE(ok->unchecked.empty());
  EXPECT_GT(ok->bytes, 0u);
  testing::FlipTensorByte(dir, "model.norm.weight", 3);
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  EXPECT_TRUE(ck->problems().empty()) << "a flipped data byte is invisible in headers";
  auto r = VerifyChecksums(LocalFileSystem(), *ck);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->problems.size(), 1u);
  const Chunk& c = ck->FindTensor("model.norm.weight")->chunks[0];
  EXPECT_EQ(r->problems[0].kind, ProblemKind::kChecksum);
  EXPECT_EQ(r->problems[0].file, ck->files()[c.file].name);
  EXPECT_EQ(r->problems[0].tensor, "model.norm.weight");
  EXPECT_THAT(r->problems[0].message,
              HasSubstr(absl::StrCat("bytes [", c.begin, ", ", c.end, ")")));
  // Without a manifest there is nothing to compare with: said plainly.
  ASSERT_TRUE(LocalFileSystem().Remove(JoinPath(dir, kManifestFileName)).ok());
  auto none = CheckpointLayout::Scan(LocalFileSystem(), dir);
  EXPECT_EQ(VerifyChecksums(LocalFileSystem(), *none).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(CompletenessTest, ReferenceModelProvesOrRefutes) {
  std::string dir = testing::NewTempDir(), ref = testing::NewTempDir();
  std::vector<ExampleTensor> model = {{"w", DType::kF32, {8, 4}, Sharding::kRow},
                                      {"b", DType::kF32, {4}, Sharding::kReplicated}};
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), dir, model, {.ranks = 2}).ok());
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), ref, model, {.ranks = 1}).ok());
  auto r = CheckpointLayout::Scan(LocalFileSystem(), ref);
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir, {.strict = true});
  EXPECT_FALSE(ck->completeness().proven);
  ck->CheckAgainstReference(*r);
  EXPECT_TRUE(ck->completeness().proven);
  EXPECT_TRUE(ck->problems().empty()) << Dump(*ck);  // the kUnproven problem is gone
  RemoveHighestRank(dir, 2);
  auto lost = CheckpointLayout::Scan(LocalFileSystem(), dir);
  lost->CheckAgainstReference(*r);
  auto m = OfKind(*lost, ProblemKind::kReference);
  ASSERT_FALSE(m.empty()) << Dump(*lost);
  EXPECT_THAT(m[0].message, HasSubstr("shape [4, 4] but the reference has [8, 4]"));
}

TEST(CompletenessTest, PlainModelFilesMissingOneOfN) {
  std::string dir = testing::NewTempDir();
  const std::string one =
      testing::RawSafetensors(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", "z");
  testing::WriteFile(JoinPath(dir, "model-00001-of-00003.safetensors"), one);
  testing::WriteFile(
      JoinPath(dir, "model-00003-of-00003.safetensors"),
      testing::RawSafetensors(R"({"c":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", "z"));
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  auto r = OfKind(*ck, ProblemKind::kModelFileCount);
  ASSERT_EQ(r.size(), 1u) << Dump(*ck);
  EXPECT_THAT(r[0].message, HasSubstr("file 2 of 3 is absent"));
  // One file named by its path is judged alone.
  auto one_file =
      CheckpointLayout::Scan(LocalFileSystem(), JoinPath(dir, "model-00001-of-00003.safetensors"));
  EXPECT_TRUE(one_file->problems().empty()) << Dump(*one_file);
}

// ---- PyTorch's newest layout: physical keys + logical_fqn ------------------------------------

TEST(NewestLayoutTest, StridedChunksAreOneLogicalTensor) {
  for (Sharding sh : {Sharding::kStrided, Sharding::kStridedMesh}) {
    std::string dir = testing::NewTempDir();
    std::vector<ExampleTensor> model = {{"w", DType::kBF16, {16, 8}, sh},
                                        {"b", DType::kF32, {8}, Sharding::kReplicated}};
    ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), dir, model,
                                   {.ranks = 4, .mesh_rows = 2, .logical_fqn = true})
                    .ok());
    // Each rank file holds w.__dcp_shard_0 and w.__dcp_shard_1.
    absl::StatusOr<Header> h = ReadHeader(LocalFileSystem(), JoinPath(dir, ShardFileName(0, 1, 1)));
    ASSERT_TRUE(h.ok());
    EXPECT_NE(h->Find("w.__dcp_shard_0"), nullptr);
    EXPECT_NE(h->Find("w.__dcp_shard_1"), nullptr);
    auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
    EXPECT_TRUE(ck->problems().empty()) << Dump(*ck);
    ASSERT_EQ(ck->tensors().size(), 2u);
    const TensorLayout* w = ck->FindTensor("w");
    ASSERT_NE(w, nullptr);
    EXPECT_EQ(ck->FindTensor("w.__dcp_shard_0"), nullptr);
    EXPECT_EQ(w->shape, (std::vector<uint64_t>{16, 8}));
    EXPECT_EQ(w->chunks.size(), 8u);
    for (const Chunk& c : w->chunks) EXPECT_THAT(c.key, ::testing::StartsWith("w.__dcp_shard_"));
    EXPECT_EQ(ck->FindTensor("b")->chunks[0].key, "");
    // Dropping one rank's two blocks leaves two gaps, not a renamed tensor.
    ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), dir, model,
                                   {.ranks = 4,
                                    .mesh_rows = 2,
                                    .drop_chunk = std::make_pair(std::string("w"), 3),
                                    .logical_fqn = true})
                    .ok());
    auto gap = CheckpointLayout::Scan(LocalFileSystem(), dir);
    EXPECT_FALSE(OfKind(*gap, ProblemKind::kGap).empty()) << Dump(*gap);
    EXPECT_EQ(gap->FindTensor("w.__dcp_shard_0"), nullptr);
  }
}

TEST(NewestLayoutTest, GlobalShapeDisagreementAndOutOfBounds) {
  std::string dir = testing::NewTempDir();
  auto write = [&](int rank, const std::string& info, uint64_t rows) {
    std::string json = absl::StrCat(R"({"__metadata__":{"DCP_SHARDING_INFO":)",
                                    testing::Quoted(info), R"(},"w":{"dtype":"U8","shape":[)", rows,
                                    R"(,2],"data_offsets":[0,)", rows * 2, "]}}");
    testing::WriteFile(JoinPath(dir, ShardFileName(rank, 1, 1)),
                       testing::RawSafetensors(json, std::string(rows * 2, 'z')));
  };
  write(0, R"({"w": {"logical_fqn": "w", "saved_offsets": [0, 0], "global_shape": [4, 2]}})", 2);
  write(1, R"({"w": {"logical_fqn": "w", "saved_offsets": [2, 0], "global_shape": [6, 2]}})", 2);
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  EXPECT_EQ(OfKind(*ck, ProblemKind::kGlobalShapeMismatch).size(), 1u) << Dump(*ck);
  write(1, R"({"w": {"logical_fqn": "w", "saved_offsets": [3, 0], "global_shape": [4, 2]}})", 2);
  auto oob = CheckpointLayout::Scan(LocalFileSystem(), dir);
  EXPECT_EQ(OfKind(*oob, ProblemKind::kOutOfBounds).size(), 1u) << Dump(*oob);
}

TEST(CompletenessTest, ATensorOnlyTheLostRankHeldIsNeverCalledComplete) {
  // Replicated tensors saved by the highest rank vanish with it; global_shape cannot tell.
  std::string dir = testing::NewTempDir();
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), dir, ManySmallTensors(8),
                                 {.ranks = 4, .logical_fqn = true, .global_shape = true})
                  .ok());
  RemoveHighestRank(dir, 4);
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir, {.strict = true});
  EXPECT_LT(ck->tensors().size(), 8u);
  EXPECT_FALSE(ck->completeness().proven);
  EXPECT_EQ(OfKind(*ck, ProblemKind::kUnproven).size(), 1u) << Dump(*ck);
}

TEST(CompletenessTest, BlockingProblemsMeanNotComplete) {
  std::string dir = testing::NewTempDir();
  ASSERT_TRUE(
      WriteDcpCheckpoint(LocalFileSystem(), dir, SmallModel(), {.ranks = 2, .manifest = true})
          .ok());
  RemoveHighestRank(dir, 2);
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir, {.expect_ranks = 1});
  EXPECT_TRUE(ck->HasBlockingProblem());
  EXPECT_FALSE(ck->completeness().proven);
  EXPECT_TRUE(ck->completeness().by.empty());
}

TEST(CompletenessTest, ManifestThatIsADirectoryOrForOtherFilesIsInvalid) {
  std::string dir = testing::NewTempDir();
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), dir,
                                 {{"w", DType::kF32, {8, 4}, Sharding::kRow}}, {.ranks = 2})
                  .ok());
  ASSERT_TRUE(LocalFileSystem().MakeDirs(JoinPath(dir, kManifestFileName)).ok());
  auto d = CheckpointLayout::Scan(LocalFileSystem(), dir);
  EXPECT_EQ(OfKind(*d, ProblemKind::kInvalidManifest).size(), 1u) << Dump(*d);
  ASSERT_TRUE(LocalFileSystem().Remove(JoinPath(dir, kManifestFileName)).ok());
  Manifest m;
  m.kind = "consolidated";
  for (int r = 0; r < 2; ++r) {
    const std::string name = ShardFileName(r, 1, 1);
    m.files.push_back({name, LocalFileSystem().Stat(JoinPath(dir, name))->size, std::nullopt, {}});
  }
  testing::WriteFile(JoinPath(dir, kManifestFileName), SerializeManifest(m));
  auto k = CheckpointLayout::Scan(LocalFileSystem(), dir);
  EXPECT_EQ(OfKind(*k, ProblemKind::kInvalidManifest).size(), 1u) << Dump(*k);
}

TEST(CompletenessTest, ChecksumListOfAnotherLengthIsAProblem) {
  std::string dir = testing::NewTempDir();
  ASSERT_TRUE(
      WriteDcpCheckpoint(LocalFileSystem(), dir, SmallModel(), {.ranks = 1, .manifest = true})
          .ok());
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  Manifest m = *ck->manifest();
  m.files[0].tensor_xxh3.pop_back();
  testing::WriteFile(JoinPath(dir, kManifestFileName), SerializeManifest(m));
  auto r = VerifyChecksums(LocalFileSystem(), *CheckpointLayout::Scan(LocalFileSystem(), dir));
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->problems.size(), 1u);
  EXPECT_THAT(r->problems[0].message, HasSubstr("tensor checksums but the file holds"));
}

TEST(CompletenessTest, OffsetsThatOverflowAreOutOfBounds) {
  std::string dir = testing::NewTempDir();
  const std::string info = R"({"w": {"saved_offsets": [18446744073709551615, 0]}})";
  std::string json = absl::StrCat(R"({"__metadata__":{"DCP_SHARDING_INFO":)", testing::Quoted(info),
                                  R"(},"w":{"dtype":"U8","shape":[4,4],"data_offsets":[0,16]}})");
  testing::WriteFile(JoinPath(dir, ShardFileName(0, 1, 1)),
                     testing::RawSafetensors(json, std::string(16, 'z')));
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  auto r = OfKind(*ck, ProblemKind::kOutOfBounds);
  ASSERT_FALSE(r.empty()) << Dump(*ck);
  EXPECT_THAT(r[0].message, HasSubstr("ends beyond 2^64"));
}

TEST(CompletenessTest, AHugeRankNumberIsOneBoundedLine) {
  std::string dir = testing::NewTempDir();
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), dir,
                                 {{"w", DType::kF32, {4}, Sharding::kReplicated}}, {.ranks = 1})
                  .ok());
  ASSERT_EQ(std::rename(JoinPath(dir, ShardFileName(0, 1, 1)).c_str(),
                        JoinPath(dir, ShardFileName(99998, 1, 1)).c_str()),
            0);
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  auto r = OfKind(*ck, ProblemKind::kShardRanks);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_LT(r[0].message.size(), 400u);
  EXPECT_THAT(r[0].message, HasSubstr("and 99982 more"));
}

TEST(LayoutTest, PairsQuantizedWeightsAndReportsScalesThatDisagree) {
  const std::string dir = testing::NewTempDir() + "/q";
  ASSERT_TRUE(LocalFileSystem().MakeDirs(dir).ok());
  // config.json says 128x64 blocks: [256, 256] needs [2, 4] scales.
  testing::WriteFile(dir + "/config.json",
                     R"({"quantization_config": {"weight_block_size": [128, 64]}})");
  testing::WriteFile(dir + "/model.safetensors",
                     testing::BuildSafetensors({{"a.weight", DType::kF8_E4M3, {256, 256}},
                                                {"a.weight_scale_inv", DType::kF32, {2, 4}},
                                                {"b.weight", DType::kF8_E4M3, {256, 256}},
                                                {"b.weight_scale_inv", DType::kF32, {2, 2}},
                                                {"c.weight", DType::kF8_E4M3, {4, 4}},
                                                {"m_blocks", DType::kU8, {3, 16}},
                                                {"m_scales", DType::kU8, {3}}}));
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  ASSERT_TRUE(ck.ok()) << ck.status();
  ASSERT_EQ(ck->quantized().size(), 2u);
  EXPECT_EQ(ck->quantized()[0].Describe(), "fp8 128x64 blocks (F8_E4M3 codes, F32 scales)");
  EXPECT_EQ(ck->quantized()[1].output, "m");
  ASSERT_NE(ck->QuantPairOf("a.weight_scale_inv"), nullptr);
  EXPECT_EQ(ck->QuantPairOf("a.weight_scale_inv")->weight, "a.weight");
  EXPECT_EQ(ck->QuantPairOf("c.weight"), nullptr);
  auto bad = OfKind(*ck, ProblemKind::kQuantization);
  ASSERT_EQ(bad.size(), 1u);
  EXPECT_EQ(bad[0].message,
            "scale \"b.weight_scale_inv\" has shape [2, 2] but weight \"b.weight\" [256, 256] "
            "needs [2, 4] for 128x64 blocks");
  EXPECT_TRUE(IsBlocking(ProblemKind::kQuantization));
  auto unscaled = OfKind(*ck, ProblemKind::kUnscaledFp8);  // c.weight: a warning only
  ASSERT_EQ(unscaled.size(), 1u);
  EXPECT_EQ(unscaled[0].tensor, "c.weight");
  EXPECT_FALSE(IsBlocking(ProblemKind::kUnscaledFp8));
  // --block-size given to the scan: the same [2, 2] scale fits 128x128 blocks of b.weight.
  ScanOptions so;
  so.quant_block = quant::BlockSize{128, 128};
  auto given = CheckpointLayout::Scan(LocalFileSystem(), dir, so);
  ASSERT_TRUE(given.ok());
  EXPECT_EQ(given->quantized().size(), 2u);  // b pairs now; a does not
  EXPECT_EQ(OfKind(*given, ProblemKind::kQuantization).size(), 1u);
}

TEST(LayoutTest, NamesAloneMakeNoQuantizedPairAndLeftOverScalesOnlyWarn) {
  const std::string dir = testing::NewTempDir() + "/plain";
  ASSERT_TRUE(LocalFileSystem().MakeDirs(dir).ok());
  testing::WriteFile(dir + "/model.safetensors",
                     testing::BuildSafetensors({{"attn.logit_scales", DType::kF32, {8}},
                                                {"pos_blocks", DType::kF32, {4, 16}},
                                                {"g.weight", DType::kBF16, {4, 4}},
                                                {"g.weight_scale_inv", DType::kF32, {1, 1}}}));
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  ASSERT_TRUE(ck.ok());
  EXPECT_TRUE(ck->quantized().empty());
  EXPECT_FALSE(ck->HasBlockingProblem());
  auto left = OfKind(*ck, ProblemKind::kUnpairedScale);
  ASSERT_EQ(left.size(), 1u);
  EXPECT_EQ(left[0].tensor, "g.weight");
}

}  // namespace
}  // namespace safeshard

namespace safeshard {
namespace {

// tensors() is in byte order of the names (std::string's <) whatever the names: shared
// prefixes, one name a prefix of another, bytes above 0x7f, NUL bytes, names in any order over
// several files (the scan sorts them with its own multikey quicksort).
TEST(LayoutTest, TensorsAreSortedByNameBytes) {
  std::vector<std::string> names = {"a",
                                    "ab",
                                    "a.b",
                                    "",
                                    "b",
                                    std::string("a\0", 2),
                                    "\xc3\xa9",
                                    "\xef\xbf\xbf",
                                    "\xf4\x8f\xbf\xbf",
                                    "z\x7f",
                                    "zz"};
  for (int i = 0; i < 600; ++i) {
    names.push_back(absl::StrCat("model.layers.", (i * 7919) % 600, ".mlp.w"));
    names.push_back(absl::StrCat("model.layers.", i % 37, ".attn.", i));
  }
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  std::vector<std::string> shuffled = names;
  std::mt19937 rng(7);
  std::shuffle(shuffled.begin(), shuffled.end(), rng);
  std::string dir = testing::NewTempDir();
  for (int f = 0; f < 3; ++f) {
    std::vector<TensorSpec> tensors;
    for (size_t i = f; i < shuffled.size(); i += 3) {
      tensors.push_back({shuffled[i], DType::kU8, {1}});
    }
    testing::WriteFile(JoinPath(dir, absl::StrCat("part", f, ".safetensors")),
                       testing::BuildSafetensors(tensors));
  }
  absl::StatusOr<CheckpointLayout> ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  ASSERT_TRUE(ck.ok()) << ck.status();
  EXPECT_TRUE(ck->problems().empty()) << ck->problems()[0].ToString();
  std::vector<std::string> got;
  for (const TensorLayout& t : ck->tensors()) got.push_back(t.name);
  EXPECT_EQ(got, names);
  for (const std::string& n : names) EXPECT_NE(ck->FindTensor(n), nullptr) << n;
}

}  // namespace
}  // namespace safeshard

namespace safeshard {
namespace {

// A file of 64 MiB or more is hashed on two threads from its mapping (the whole-file XXH3 beside
// the per-tensor ones): the digests are those of the bytes, computed here directly.
TEST(ChecksumFileTest, LargeFilesHashTheSameOnTwoThreads) {
  const std::string dir = testing::NewTempDir();
  const std::string path = JoinPath(dir, "big.safetensors");
  testing::WriteFile(path, testing::BuildSafetensors({{"a", DType::kU8, {40u << 20}},
                                                      {"b", DType::kBF16, {13u << 20}},
                                                      {"c", DType::kU8, {0}},
                                                      {"d", DType::kF32, {7}}}));
  const std::string bytes = testing::ReadFile(path);
  ASSERT_GE(bytes.size(), 64u << 20);
  absl::StatusOr<Header> h = ReadHeader(LocalFileSystem(), path);
  ASSERT_TRUE(h.ok()) << h.status();
  auto f = LocalFileSystem().OpenRead(path);
  ASSERT_TRUE(f.ok());
  absl::StatusOr<ManifestFile> got = ChecksumFile(**f, *h);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->size, bytes.size());
  EXPECT_EQ(got->xxh3, Xxh3(bytes));
  ASSERT_EQ(got->tensor_xxh3.size(), h->tensors.size());
  for (size_t i = 0; i < h->tensors.size(); ++i) {
    const TensorEntry& t = h->tensors[i];
    EXPECT_EQ(got->tensor_xxh3[i],
              Xxh3(absl::string_view(bytes).substr(h->data_start() + t.begin, t.size())))
        << t.name;
  }
}

}  // namespace
}  // namespace safeshard
