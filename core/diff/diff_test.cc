#include "core/diff/diff.h"

#include <unistd.h>

#include "core/consolidate/consolidate.h"
#include "core/example/example.h"
#include "core/testing/testing.h"
#include "gtest/gtest.h"

namespace safeshard {
namespace {

// Row, column, 2-D mesh and 3-D sharding, uneven and empty shards, a scalar, several dtypes.
std::vector<ExampleTensor> Model() {
  return {
      {"row.bf16", DType::kBF16, {16, 12}, Sharding::kRow},
      {"col.f16", DType::kF16, {6, 20}, Sharding::kColumn},
      {"mesh.f32", DType::kF32, {8, 10}, Sharding::kMesh},
      {"experts.mesh.bf16", DType::kBF16, {4, 6, 3}, Sharding::kMesh},
      {"uneven.i64", DType::kI64, {10, 3}, Sharding::kRow},
      {"empty_shard.f32", DType::kF32, {3, 4}, Sharding::kRow},
      {"uneven_col.bool", DType::kBOOL, {3, 7}, Sharding::kColumn},
      {"scalar.i64", DType::kI64, {}, Sharding::kReplicated},
      {"empty_tensor.f32", DType::kF32, {0, 4}, Sharding::kRow},
      {"vec.bool", DType::kBOOL, {9}, Sharding::kRow},
      {"f8.row", DType::kF8_E4M3, {12, 2}, Sharding::kRow},
  };
}

CheckpointLayout ScanOrDie(const std::string& dir) {
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  EXPECT_TRUE(ck.ok()) << ck.status();
  return std::move(*ck);
}

DiffReport DiffOrDie(const std::string& a, const std::string& b, DiffOptions o = {}) {
  CheckpointLayout la = ScanOrDie(a), lb = ScanOrDie(b);
  auto r = DiffCheckpoints(LocalFileSystem(), la, LocalFileSystem(), lb, o);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : DiffReport{};
}

TEST(DiffTest, PerRankShardsEqualTheirConsolidationByteForByte) {
  const std::string in = testing::NewTempDir() + "/in";
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), in, Model(), {.ranks = 4}).ok());
  const std::string single = testing::NewTempDir() + "/single",
                    split = testing::NewTempDir() + "/split";
  ASSERT_TRUE(Consolidate(LocalFileSystem(), in, single, {}).ok());
  ConsolidateOptions o;
  o.max_shard_size = 600;
  ASSERT_TRUE(Consolidate(LocalFileSystem(), in, split, o).ok());
  for (const std::string& other : {single, split}) {
    for (int threads : {1, 3}) {
      DiffReport r = DiffOrDie(in, other, {.threads = threads});
      EXPECT_TRUE(r.identical_all()) << (r.diffs.empty() ? "" : r.diffs[0].detail);
      EXPECT_EQ(r.in_both, Model().size());
      EXPECT_EQ(r.identical, Model().size());
      EXPECT_EQ(r.bytes_compared, ScanOrDie(in).total_tensor_bytes());
    }
  }
}

TEST(DiffTest, ReportsTheFirstDifferingElementAndHowMany) {
  const std::string in = testing::NewTempDir() + "/in";
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), in, Model(), {.ranks = 4}).ok());
  const std::string out = testing::NewTempDir() + "/out";
  ASSERT_TRUE(Consolidate(LocalFileSystem(), in, out, {}).ok());
  // Elements [5, 7] and [6, 2] of the [8, 10] F32 tensor (the mesh's lower-right and lower-left
  // blocks, so in different rank files of A).
  testing::FlipTensorByte(out, "mesh.f32", (5 * 10 + 7) * 4);
  testing::FlipTensorByte(out, "mesh.f32", (6 * 10 + 2) * 4 + 3);
  DiffReport r = DiffOrDie(in, out);
  ASSERT_EQ(r.diffs.size(), 1u);
  const TensorDiff& d = r.diffs[0];
  EXPECT_EQ(d.kind, DiffKind::kValues);
  EXPECT_EQ(d.name, "mesh.f32");
  EXPECT_EQ(d.differing_elements, 2u);
  EXPECT_EQ(d.first_element, 57u);
  EXPECT_EQ(d.first_index, (std::vector<uint64_t>{5, 7}));
  EXPECT_NE(d.first_a, d.first_b);
  EXPECT_NE(d.detail.find("2 of 80 elements differ; first at [5, 7]"), std::string::npos)
      << d.detail;
  EXPECT_EQ(r.identical, Model().size() - 1);
  // The same comparison reading headers only sees no difference: data is not read.
  EXPECT_TRUE(DiffOrDie(in, out, {.headers_only = true}).identical_all());
}

TEST(DiffTest, TolerancesCompareFloatsByValueAcrossDTypes) {
  // A: per-rank shards with F32/F16/BF16 tensors; B: their consolidation cast to BF16.
  const std::vector<ExampleTensor> model = {
      {"w.f32", DType::kF32, {16, 12}, Sharding::kColumn},
      {"m.f32", DType::kF32, {8, 10}, Sharding::kMesh},
      {"h.f16", DType::kF16, {6, 20}, Sharding::kRow},
      {"ids.i64", DType::kI64, {10, 3}, Sharding::kRow},
  };
  const std::string in = testing::NewTempDir() + "/in";
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), in, model, {.ranks = 4}).ok());
  const std::string bf16 = testing::NewTempDir() + "/bf16";
  ConsolidateOptions co;
  co.cast_dtype = DType::kBF16;
  ASSERT_TRUE(Consolidate(LocalFileSystem(), in, bf16, co).ok());
  // Byte for byte: every float tensor has another dtype.
  DiffReport exact = DiffOrDie(in, bf16);
  ASSERT_EQ(exact.diffs.size(), 3u);
  for (const TensorDiff& d : exact.diffs) EXPECT_EQ(d.kind, DiffKind::kDType) << d.name;
  // Within BF16's rounding (relative 2^-8; NaN matches NaN): no difference; the integer tensor
  // is still compared byte for byte.
  DiffReport close = DiffOrDie(in, bf16, {.atol = 0, .rtol = 1.0 / 256});
  EXPECT_TRUE(close.identical_all()) << (close.diffs.empty() ? "" : close.diffs[0].detail);
  EXPECT_EQ(close.across_dtypes, 3u);
  EXPECT_EQ(close.identical, 4u);
  // A tighter tolerance than the cast's rounding: values differ, with the first one and the
  // largest difference reported.
  DiffReport tight = DiffOrDie(in, bf16, {.atol = 0, .rtol = 1e-9});
  ASSERT_FALSE(tight.diffs.empty());
  const TensorDiff& d = tight.diffs[0];
  EXPECT_EQ(d.kind, DiffKind::kValues);
  EXPECT_GT(d.differing_elements, 0u);
  EXPECT_GT(d.max_abs_diff, 0);
  EXPECT_NE(d.detail.find("beyond atol=0 rtol=1e-09"), std::string::npos) << d.detail;
}

TEST(DiffTest, NamesDTypesShapesAndIncompleteTensors) {
  const std::string a = testing::NewTempDir(), b = testing::NewTempDir();
  testing::WriteFile(a + "/model.safetensors",
                     testing::BuildSafetensors({{"same", DType::kF32, {4}},
                                                {"gone", DType::kF16, {2, 2}},
                                                {"retyped", DType::kF32, {3}},
                                                {"reshaped", DType::kI32, {2, 3}}}));
  testing::WriteFile(b + "/model.safetensors",
                     testing::BuildSafetensors({{"same", DType::kF32, {4}},
                                                {"new", DType::kU8, {5}},
                                                {"retyped", DType::kBF16, {3}},
                                                {"reshaped", DType::kI32, {3, 2}}}));
  DiffReport r = DiffOrDie(a, b);
  ASSERT_EQ(r.diffs.size(), 4u);
  EXPECT_EQ(r.diffs[0].name, "gone");
  EXPECT_EQ(r.diffs[0].kind, DiffKind::kOnlyInA);
  EXPECT_EQ(r.diffs[1].name, "new");
  EXPECT_EQ(r.diffs[1].kind, DiffKind::kOnlyInB);
  EXPECT_EQ(r.diffs[2].name, "reshaped");
  EXPECT_EQ(r.diffs[2].kind, DiffKind::kShape);
  EXPECT_EQ(r.diffs[2].detail, "A I32 [2, 3], B I32 [3, 2]");
  EXPECT_EQ(r.diffs[3].name, "retyped");
  EXPECT_EQ(r.diffs[3].kind, DiffKind::kDType);
  EXPECT_EQ(r.in_both, 3u);
  EXPECT_EQ(r.identical, 1u);
  // A filter narrows the comparison.
  DiffOptions only_same;
  only_same.filter = [](const std::string& n) { return n == "same"; };
  EXPECT_TRUE(DiffOrDie(a, b, only_same).identical_all());

  // A tensor with a gap in A cannot be compared: said so, never reported equal.
  const std::string in = testing::NewTempDir() + "/in";
  ASSERT_TRUE(
      WriteDcpCheckpoint(LocalFileSystem(), in, Model(),
                         {.ranks = 4, .drop_chunk = std::make_pair(std::string("mesh.f32"), 1)})
          .ok());
  const std::string full = testing::NewTempDir() + "/full";
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), full, Model(), {.ranks = 4}).ok());
  DiffReport g = DiffOrDie(in, full);
  ASSERT_EQ(g.diffs.size(), 1u);
  EXPECT_EQ(g.diffs[0].kind, DiffKind::kNotCompared);
  EXPECT_EQ(g.diffs[0].name, "mesh.f32");
}

TEST(DiffTest, AnUnreadableFileIsAnErrorNotMissingTensors) {
  const std::string a = testing::NewTempDir(), b = testing::NewTempDir();
  testing::WriteFile(a + "/model.safetensors",
                     testing::BuildSafetensors({{"w", DType::kF32, {4}}}));
  testing::WriteFile(b + "/model.safetensors", "garbage");
  CheckpointLayout la = ScanOrDie(a), lb = ScanOrDie(b);
  auto r = DiffCheckpoints(LocalFileSystem(), la, LocalFileSystem(), lb, {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(std::string(r.status().message()).find(b + "/model.safetensors: "), std::string::npos)
      << r.status();
}

TEST(DiffTest, AFileChangedAfterTheScanIsAnErrorNamingIt) {
  const std::string a = testing::NewTempDir(), b = testing::NewTempDir();
  const std::string bytes = testing::BuildSafetensors({{"w", DType::kF32, {64}}});
  testing::WriteFile(a + "/model.safetensors", bytes);
  testing::WriteFile(b + "/model.safetensors", bytes);
  CheckpointLayout la = ScanOrDie(a), lb = ScanOrDie(b);
  testing::WriteFile(b + "/model.safetensors", bytes.substr(0, bytes.size() - 16));  // truncated
  auto r = DiffCheckpoints(LocalFileSystem(), la, LocalFileSystem(), lb, {});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find(b + "/model.safetensors"), std::string::npos)
      << r.status();
}

TEST(DiffTest, AFileTruncatedWhileItIsComparedIsAnErrorNotASigbus) {
  const std::string a = testing::NewTempDir() + "/a";
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), a,
                                 {{"x", DType::kF32, {256, 1024}, Sharding::kRow},
                                  {"y", DType::kF32, {256, 1024}, Sharding::kRow}},
                                 {.ranks = 1})
                  .ok());
  const std::string b = testing::NewTempDir() + "/b";
  ASSERT_TRUE(Consolidate(LocalFileSystem(), a, b, {}).ok());
  CheckpointLayout la = ScanOrDie(a), lb = ScanOrDie(b);
  DiffOptions o;
  o.threads = 1;
  bool truncated = false;
  o.progress = [&](uint64_t, uint64_t) {
    if (truncated) return;
    truncated = true;
    ASSERT_EQ(truncate((b + "/model-00001-of-00001.safetensors").c_str(), 4096), 0);
  };
  auto r = DiffCheckpoints(LocalFileSystem(), la, LocalFileSystem(), lb, o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << r.status();
  EXPECT_NE(std::string(r.status().message()).find("shrank while it was being read"),
            std::string::npos)
      << r.status();
}

TEST(DiffTest, ZeroTolerancesStillCompareByValueAcrossDTypes) {
  // An F32 tensor of values exactly representable in BF16, and its BF16 cast: equal values,
  // different bytes. With tolerances given (even 0) they are equal; byte for byte they differ.
  const std::string a = testing::NewTempDir() + "/a", b = testing::NewTempDir() + "/b";
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), a,
                                 {{"w", DType::kF32, {4}, Sharding::kReplicated}}, {.ranks = 1})
                  .ok());
  // Make the values BF16-exact: keep only the upper 16 bits of every F32.
  {
    CheckpointLayout la = ScanOrDie(a);
    const Chunk& c = la.FindTensor("w")->chunks[0];
    std::string path = JoinPath(a, la.files()[c.file].name);
    std::string bytes = testing::ReadFile(path);
    for (uint64_t k = c.begin; k < c.end; k += 4) {
      bytes[k] = 0;
      bytes[k + 1] = 0;
      bytes[k + 2] &= 0x7f;
    }
    testing::WriteFile(path, bytes);
  }
  ConsolidateOptions co;
  co.cast_dtype = DType::kBF16;
  ASSERT_TRUE(Consolidate(LocalFileSystem(), a, b, co).ok());
  DiffOptions zero;
  zero.by_value = true;
  DiffReport r = DiffOrDie(a, b, zero);
  EXPECT_TRUE(r.identical_all()) << (r.diffs.empty() ? "" : r.diffs[0].detail);
  DiffReport bytes = DiffOrDie(a, b, {});
  EXPECT_FALSE(bytes.identical_all());
}

}  // namespace
}  // namespace safeshard
