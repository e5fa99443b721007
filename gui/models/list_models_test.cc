#include "gui/models/list_models.h"
#include "gui/models/diff_model.h"

#include <set>

#include <QAbstractItemModelTester>
#include <QCoreApplication>

#include "core/example/example.h"
#include "core/io/filesystem.h"
#include "core/testing/testing.h"
#include "gtest/gtest.h"

namespace safeshard::gui {
namespace {

std::shared_ptr<const CheckpointLayout> GapLayout() {
  WriteOptions o{.ranks = 4};
  o.drop_chunk = std::make_pair(std::string("m"), 0);
  std::string dir = testing::NewTempDir() + "/ckpt";
  EXPECT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), dir,
                                 {{"m", DType::kF32, {4, 6}, Sharding::kMesh},
                                  {"n", DType::kF32, {3}, Sharding::kReplicated}},
                                 o)
                  .ok());
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  return std::make_shared<const CheckpointLayout>(std::move(*ck));
}

TEST(ListModelsTest, ChunkModelShowsEveryChunkOfTheTensor) {
  auto layout = GapLayout();
  ChunkModel model;
  QAbstractItemModelTester tester(&model, QAbstractItemModelTester::FailureReportingMode::Fatal);
  model.SetTensor(layout, layout->FindTensor("m"));
  ASSERT_EQ(model.rowCount(), 3);  // the 2x2 mesh minus the dropped chunk
  EXPECT_EQ(model.data(model.index(0, ChunkModel::kRank)).toInt(), 1);
  EXPECT_EQ(model.data(model.index(0, ChunkModel::kOffsets)).toString(), "[0, 3]");
  EXPECT_EQ(model.data(model.index(0, ChunkModel::kSizes)).toString(), "[2, 3]");
  model.SetTensor(layout, nullptr);
  EXPECT_EQ(model.rowCount(), 0);
}

TEST(ListModelsTest, ChunkModelShowsLogicalTensorsWithEachChunksPhysicalKey) {
  std::string dir = testing::NewTempDir() + "/newest";
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), dir,
                                 {{"w", DType::kBF16, {16, 4}, Sharding::kStrided}},
                                 {.ranks = 2, .logical_fqn = true})
                  .ok());
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  ASSERT_TRUE(ck.ok());
  auto layout = std::make_shared<const CheckpointLayout>(std::move(*ck));
  ASSERT_EQ(layout->tensors().size(), 1u);  // one logical tensor, not w.__dcp_shard_0/1
  ChunkModel model;
  QAbstractItemModelTester tester(&model, QAbstractItemModelTester::FailureReportingMode::Fatal);
  model.SetTensor(layout, layout->FindTensor("w"));
  ASSERT_EQ(model.rowCount(), 4);
  std::set<QString> keys;
  for (int r = 0; r < 4; ++r) keys.insert(model.data(model.index(r, ChunkModel::kKey)).toString());
  EXPECT_EQ(keys, (std::set<QString>{"w.__dcp_shard_0", "w.__dcp_shard_1"}));
  EXPECT_EQ(model.headerData(ChunkModel::kKey, Qt::Horizontal).toString(), "Key in file");
}

TEST(ListModelsTest, ProblemsAndFilesModels) {
  auto layout = GapLayout();
  ProblemsModel problems;
  QAbstractItemModelTester t1(&problems, QAbstractItemModelTester::FailureReportingMode::Fatal);
  problems.SetLayout(layout);
  ASSERT_EQ(problems.rowCount(), 1);
  EXPECT_EQ(problems.data(problems.index(0, ProblemsModel::kKind)).toString(), "gap");
  EXPECT_EQ(problems.data(problems.index(0, ProblemsModel::kTensor)).toString(), "m");
  FileModel files;
  QAbstractItemModelTester t2(&files, QAbstractItemModelTester::FailureReportingMode::Fatal);
  files.SetLayout(layout);
  ASSERT_EQ(files.rowCount(), 4);
  EXPECT_EQ(files.data(files.index(3, FileModel::kRank)).toInt(), 3);
  EXPECT_EQ(files.data(files.index(0, FileModel::kState)).toString(), "DCP shard");
}

TEST(ListModelsTest, DiffModelListsEachDifference) {
  auto report = std::make_shared<DiffReport>();
  report->in_both = 2;
  report->identical = 1;
  TensorDiff values{DiffKind::kValues, "model.w",
                    "1 of 4 elements differ; first at [0, 1]: A 0x3f80 (1), B 0x4000 (2)"};
  TensorDiff only_b{DiffKind::kOnlyInB, "extra", "F32 [2]"};
  report->diffs = {values, only_b};
  DiffModel model;
  QAbstractItemModelTester t(&model, QAbstractItemModelTester::FailureReportingMode::Fatal);
  EXPECT_EQ(model.rowCount(), 0);
  model.SetReport(report);
  ASSERT_EQ(model.rowCount(), 2);
  EXPECT_EQ(model.data(model.index(0, DiffModel::kKind)).toString(), "values");
  EXPECT_EQ(model.data(model.index(0, DiffModel::kTensor)).toString(), "model.w");
  EXPECT_TRUE(model.data(model.index(0, DiffModel::kDetail))
                  .toString()
                  .startsWith("1 of 4 elements differ"));
  EXPECT_EQ(model.data(model.index(1, 0), DiffModel::kTensorNameRole).toString(), "extra");
  EXPECT_FALSE(model.data(model.index(1, 0), DiffModel::kInARole).toBool());
  EXPECT_TRUE(model.data(model.index(0, 0), DiffModel::kInARole).toBool());
  model.SetReport(nullptr);
  EXPECT_EQ(model.rowCount(), 0);
}

}  // namespace
}  // namespace safeshard::gui
