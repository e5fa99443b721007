#include "core/dcp/hf_storage_reader.h"

#include <unistd.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "core/example/example.h"
#include "core/format/filenames.h"
#include "core/io/filesystem.h"
#include "core/testing/testing.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace safeshard {
namespace {

using ::testing::HasSubstr;

c10::ScalarType Torch(DType d) {
  switch (d) {
    case DType::kBF16: return c10::kBFloat16;
    case DType::kF16: return c10::kHalf;
    case DType::kI64: return c10::kLong;
    case DType::kBOOL: return c10::kBool;
    default: return c10::kFloat;
  }
}

// The bytes the generator defines for the box (offsets, sizes) of `t`.
std::string Expected(const ExampleTensor& t, const std::vector<int64_t>& off,
                     const std::vector<int64_t>& sz) {
  return ChunkBytes(t, ChunkSpec{std::vector<uint64_t>(off.begin(), off.end()),
                                 std::vector<uint64_t>(sz.begin(), sz.end())});
}

std::string Bytes(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  return std::string(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size());
}

// Loads every tensor of `model` (saved in `dir`) column-sharded 2 ways (dim 1 where there is
// one), as one quarter of a 2x2 mesh, and whole, and compares with the generator's bytes.
void ExpectLoadsIntoOtherShardings(const std::vector<ExampleTensor>& model,
                                   const std::string& dir) {
  for (const ExampleTensor& t : model) {
    std::vector<int64_t> shape(t.shape.begin(), t.shape.end());
    std::vector<std::pair<std::vector<int64_t>, std::vector<int64_t>>> boxes;
    if (shape.size() >= 2) {
      int64_t half = shape[1] / 2;
      std::vector<int64_t> a = shape, b = shape, oa(shape.size(), 0), ob(shape.size(), 0);
      a[1] = half;
      b[1] = shape[1] - half;
      ob[1] = half;
      boxes.push_back({oa, a});
      boxes.push_back({ob, b});
      std::vector<int64_t> q = shape, oq(shape.size(), 0);
      q[0] = shape[0] - shape[0] / 2;
      q[1] = shape[1] - half;
      oq[0] = shape[0] / 2;
      oq[1] = half;
      boxes.push_back({oq, q});
    }
    boxes.push_back({std::vector<int64_t>(shape.size(), 0), shape});
    for (const auto& [off, sz] : boxes) {
      SCOPED_TRACE(t.name);
      std::vector<LoadRequest> reqs = {
          {t.name, torch::empty(sz, torch::TensorOptions().dtype(Torch(t.dtype))), off}};
      LoadStats stats;
      absl::Status s = LoadInto(dir, reqs, nullptr, &stats);
      ASSERT_TRUE(s.ok()) << s;
      EXPECT_TRUE(Bytes(reqs[0].dest) == Expected(t, off, sz));
    }
  }
}

TEST(HfStorageReaderTest, LoadsRowShardedSaveIntoColumnAndMeshShardings) {
  std::vector<ExampleTensor> model = {{"w", DType::kBF16, {12, 10}, Sharding::kRow},
                                      {"m", DType::kF32, {6, 8}, Sharding::kMesh},
                                      {"s", DType::kI64, {}, Sharding::kReplicated},
                                      {"e", DType::kF16, {4, 6, 5}, Sharding::kColumn}};
  std::string dir = testing::NewTempDir() + "/ckpt";
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), dir, model, {.ranks = 4}).ok());
  ExpectLoadsIntoOtherShardings(model, dir);
}

TEST(HfStorageReaderTest, LoadsPyTorchNewestStridedChunksByLogicalName) {
  std::vector<ExampleTensor> model = {{"w", DType::kBF16, {16, 10}, Sharding::kStrided},
                                      {"m", DType::kF32, {12, 8}, Sharding::kStridedMesh},
                                      {"s", DType::kI64, {}, Sharding::kReplicated}};
  std::string dir = testing::NewTempDir() + "/ckpt";
  ASSERT_TRUE(
      WriteDcpCheckpoint(LocalFileSystem(), dir, model,
                         {.ranks = 4, .mesh_rows = 2, .logical_fqn = true, .global_shape = true})
          .ok());
  ExpectLoadsIntoOtherShardings(model, dir);
}

TEST(HfStorageReaderTest, FillsNonContiguousDestinationsAndAppliesKeyMaps) {
  std::vector<ExampleTensor> model = {{"model.w", DType::kF32, {4, 6}, Sharding::kColumn}};
  std::string dir = testing::NewTempDir() + "/ckpt";
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), dir, model, {.ranks = 3}).ok());
  at::Tensor base = torch::zeros({6, 4});
  at::Tensor view = base.t();  // [4, 6], not contiguous
  auto km = KeyMap::Create({{"^model\\.", ""}});
  std::vector<LoadRequest> reqs = {{"w", view, {}}};
  ASSERT_TRUE(LoadInto(dir, reqs, &*km).ok());
  EXPECT_TRUE(Bytes(view) == Expected(model[0], {0, 0}, {4, 6}));
}

TEST(HfStorageReaderTest, RefusesWrongDTypesBoxesAndGaps) {
  std::vector<ExampleTensor> model = {{"w", DType::kF32, {8, 2}, Sharding::kRow}};
  WriteOptions o{.ranks = 4};
  o.drop_chunk = std::make_pair(std::string("w"), 1);
  std::string dir = testing::NewTempDir() + "/ckpt";
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), dir, model, o).ok());
  std::vector<LoadRequest> gap = {{"w", torch::empty({8, 2}), {}}};
  absl::Status s = LoadInto(dir, gap);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), HasSubstr("gap"));
  std::string ok_dir = testing::NewTempDir() + "/ok";
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), ok_dir, model, {.ranks = 2}).ok());
  std::vector<LoadRequest> dtype = {{"w", torch::empty({8, 2}, torch::kFloat64), {}}};
  EXPECT_EQ(LoadInto(ok_dir, dtype).code(), absl::StatusCode::kInvalidArgument);
  std::vector<LoadRequest> box = {{"w", torch::empty({4, 2}), {6, 0}}};
  EXPECT_EQ(LoadInto(ok_dir, box).code(), absl::StatusCode::kInvalidArgument);
  std::vector<LoadRequest> missing = {{"nope", torch::empty({1}), {}}};
  EXPECT_EQ(LoadInto(ok_dir, missing).code(), absl::StatusCode::kNotFound);
}

TEST(HfStorageReaderTest, LoadsFp8IntoUint8) {
  std::string dir = testing::NewTempDir() + "/f8";
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), dir,
                                 {{"q", DType::kF8_E5M2, {6, 2}, Sharding::kRow}}, {.ranks = 2})
                  .ok());
  std::vector<LoadRequest> reqs = {{"q", torch::empty({3, 2}, torch::kUInt8), {3, 0}}};
  ASSERT_TRUE(LoadInto(dir, reqs).ok());
  EXPECT_TRUE(Bytes(reqs[0].dest) ==
              Expected({"q", DType::kF8_E5M2, {6, 2}, Sharding::kRow}, {3, 0}, {3, 2}));
}

TEST(HfStorageReaderTest, CachesMetadataUntilFilesChangeAndReadsInParallel) {
  std::vector<ExampleTensor> model = TransformerLikeModel({.layers = 2, .hidden = 32, .vocab = 64});
  std::string dir = testing::NewTempDir() + "/ckpt";
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), dir, model, {.ranks = 4}).ok());
  HfStorageReader reader(dir, nullptr, /*thread_count=*/3);
  ASSERT_TRUE(reader.ReadMetadata().ok());
  ASSERT_TRUE(reader.ReadMetadata().ok());
  EXPECT_EQ(reader.metadata_reads(), 1);
  std::vector<LoadRequest> reqs;
  for (const ExampleTensor& t : model) {
    std::vector<int64_t> sz(t.shape.begin(), t.shape.end());
    reqs.push_back({t.name, torch::empty(sz, torch::TensorOptions().dtype(Torch(t.dtype))), {}});
  }
  LoadStats stats;
  ASSERT_TRUE(reader.ReadData(reqs, &stats).ok());
  EXPECT_EQ(stats.files_mapped, 4);  // each file mapped once for all requests
  for (size_t i = 0; i < model.size(); ++i) {
    EXPECT_TRUE(Bytes(reqs[i].dest) == ExpectedTensorBytes(model[i])) << model[i].name;
  }
  // A re-save changes the files: metadata is read again.
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), dir, model, {.ranks = 4}).ok());
  ASSERT_TRUE(reader.ReadMetadata().ok());
  EXPECT_EQ(reader.metadata_reads(), 2);
}

TEST(HfStorageReaderTest, AFileTruncatedWhileItIsReadIsAnErrorNotASigbus) {
  // The truncation races the copy (no hook inside ReadData): whichever wins, the process must
  // live and the result must be the data or an error naming the file, never a SIGBUS.
  std::vector<ExampleTensor> model = {{"w", DType::kF32, {4096, 2048}, Sharding::kRow}};
  int errors = 0;
  for (int round = 0; round < 6; ++round) {
    std::string dir = testing::NewTempDir() + "/ckpt";
    ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), dir, model, {.ranks = 2}).ok());
    HfStorageReader reader(dir, nullptr, /*thread_count=*/1);
    ASSERT_TRUE(reader.ReadMetadata().ok());
    std::vector<LoadRequest> reqs = {{"w", torch::empty({4096, 2048}), {}}};
    std::thread cut([&] {
      std::this_thread::sleep_for(std::chrono::microseconds(500 * round));
      for (int r = 0; r < 2; ++r) {
        (void)!truncate(JoinPath(dir, ShardFileName(r, 1, 1)).c_str(), 4096);
      }
    });
    absl::Status s = reader.ReadData(reqs, nullptr);
    cut.join();
    if (!s.ok()) {
      ++errors;
      EXPECT_THAT(std::string(s.message()), HasSubstr("shard-0000")) << s;
      std::fprintf(stderr, "round %d: %s\n", round, std::string(s.message()).c_str());
    }
  }
  std::fprintf(stderr, "%d of 6 reads ended with an error instead of the data\n", errors);
}

TEST(HfStorageReaderTest, ViewsAlignedWholeTensorsWithoutCopying) {
  std::string dir = testing::NewTempDir();
  testing::WriteFile(
      dir + "/model.safetensors",
      testing::BuildSafetensors({{"w", DType::kF32, {4, 2}}, {"b", DType::kU8, {3}}}));
  HfStorageReader reader(dir);
  absl::StatusOr<at::Tensor> v = reader.View("w");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->sizes(), (std::vector<int64_t>{4, 2}));
  std::string all = testing::ReadFile(dir + "/model.safetensors");
  EXPECT_EQ(Bytes(*v), all.substr(all.size() - 3 - 32, 32));
  EXPECT_TRUE(reader.View("b").ok());
  std::string sharded = testing::NewTempDir() + "/s";
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), sharded,
                                 {{"w", DType::kF32, {4, 2}, Sharding::kRow}}, {.ranks = 2})
                  .ok());
  HfStorageReader r2(sharded);
  EXPECT_EQ(r2.View("w").status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(HfStorageReaderTest, ReadsFixtureFiles) {
  SAFESHARD_REQUIRE_FIXTURES_OR_SKIP(fixtures);
  // safetensorsharp basic_model: "attention" I8[2,3] = [[1,2,3],[4,5,6]], "embedding" F32 zeros.
  std::vector<LoadRequest> reqs = {{"attention", torch::empty({1, 2}, torch::kInt8), {1, 1}},
                                   {"embedding", torch::ones({2, 2}), {}}};
  absl::Status s = LoadInto(JoinPath(fixtures, "safetensorsharp/basic_model.safetensors"), reqs);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(reqs[0].dest[0][0].item<int8_t>(), 5);
  EXPECT_EQ(reqs[0].dest[0][1].item<int8_t>(), 6);
  EXPECT_EQ(reqs[1].dest.sum().item<float>(), 0.0f);
}

}  // namespace
}  // namespace safeshard
