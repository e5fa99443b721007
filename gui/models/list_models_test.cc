#include "gui/models/list_models.h"

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

}  // namespace
}  // namespace safeshard::gui
