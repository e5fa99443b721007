// Model tests (headless): QAbstractItemModelTester on the tree and flat modes, natural order,
// group sums and a golden dump of a generated per-rank checkpoint with a deliberate gap.
#include "gui/models/tensor_tree_model.h"

#include <sys/stat.h>

#include <QAbstractItemModelTester>
#include <QCoreApplication>
#include <algorithm>
#include <string>
#include <vector>

#include "core/example/example.h"
#include "core/io/filesystem.h"
#include "core/testing/testing.h"
#include "gtest/gtest.h"
#include "gui/models/format.h"
#include "gui/models/natural_sort.h"

namespace safeshard::gui {
namespace {

std::shared_ptr<const CheckpointLayout> Layout(const std::vector<ExampleTensor>& model,
                                               WriteOptions o) {
  std::string dir = testing::NewTempDir() + "/ckpt";
  EXPECT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), dir, model, o).ok());
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  EXPECT_TRUE(ck.ok());
  return std::make_shared<const CheckpointLayout>(std::move(*ck));
}

TEST(FormatTest, BytesAndThousands) {
  EXPECT_EQ(FormatBytes(0), "0 B");
  EXPECT_EQ(FormatBytes(1023), "1023 B");
  EXPECT_EQ(FormatBytes(1536), "1.50 KiB");
  EXPECT_EQ(FormatBytes(52428800), "50.0 MiB");
  EXPECT_EQ(FormatBytes(3ull << 40), "3.00 TiB");
  EXPECT_EQ(Grouped(0), "0");
  EXPECT_EQ(Grouped(999), "999");
  EXPECT_EQ(Grouped(1234567), "1,234,567");
}

TEST(NaturalSortTest, OrdersDigitRunsByValue) {
  EXPECT_TRUE(NaturalLess("layers.2", "layers.10"));
  EXPECT_FALSE(NaturalLess("layers.10", "layers.2"));
  EXPECT_TRUE(NaturalLess("a", "b"));
  EXPECT_TRUE(NaturalLess("x1", "x01a"));
  EXPECT_FALSE(NaturalLess("same", "same"));
  EXPECT_TRUE(NaturalLess("w", "w.bias"));
}

TEST(TensorTreeModelTest, PassesTheModelTesterInTreeAndFlatModes) {
  TensorTreeModel model;
  QAbstractItemModelTester tester(&model, QAbstractItemModelTester::FailureReportingMode::Fatal);
  model.SetLayout(
      Layout(TransformerLikeModel({.layers = 12, .hidden = 8, .vocab = 16}), {.ranks = 2}));
  model.SetFlat(true);
  EXPECT_EQ(model.rowCount(), 12 * 9 + 7);
  model.SetFlat(false);
  EXPECT_GT(model.rowCount(), 0);
}

TEST(TensorTreeModelTest, GroupsByPrefixInNaturalOrderWithSums) {
  TensorTreeModel model;
  model.SetLayout(
      Layout(TransformerLikeModel({.layers = 12, .hidden = 8, .vocab = 16}), {.ranks = 2}));
  // model > layers > 0, 1, 2, ..., 10, 11
  QModelIndex m;
  for (int r = 0; r < model.rowCount(); ++r) {
    if (model.data(model.index(r, 0)).toString() == "model") m = model.index(r, 0);
  }
  ASSERT_TRUE(m.isValid());
  QModelIndex layers;
  for (int r = 0; r < model.rowCount(m); ++r) {
    if (model.data(model.index(r, 0, m)).toString() == "layers") layers = model.index(r, 0, m);
  }
  ASSERT_TRUE(layers.isValid());
  ASSERT_EQ(model.rowCount(layers), 12);
  EXPECT_EQ(model.data(model.index(2, 0, layers)).toString(), "2");
  EXPECT_EQ(model.data(model.index(10, 0, layers)).toString(), "10");
  // A layer's parameters are the sum of its tensors'.
  QModelIndex l0 = model.index(0, 0, layers);
  qulonglong sum = 0;
  for (int r = 0; r < model.rowCount(l0); ++r) {
    sum += model.data(model.index(r, TensorTreeModel::kParameters, l0), TensorTreeModel::kValueRole)
               .toULongLong();
  }
  EXPECT_EQ(
      model.data(model.index(0, TensorTreeModel::kParameters, layers), TensorTreeModel::kValueRole)
          .toULongLong(),
      sum);
  EXPECT_GT(sum, 1000u);
  EXPECT_TRUE(
      model.data(model.index(0, TensorTreeModel::kParameters, layers)).toString().contains(','));
}

// Siblings are in NaturalLess order, digit-only labels (compared by value there) mixed with
// others, equal values kept in layout order.
TEST(TensorTreeModelTest, SiblingsFollowNaturalLessWithDigitOnlyLabels) {
  const std::vector<std::string> labels = {"10",
                                           "2",
                                           "007",
                                           "7",
                                           "x",
                                           "1a",
                                           "0",
                                           "a2",
                                           "a10",
                                           "18446744073709551615",
                                           "99999999999999999999",
                                           "3b"};
  std::vector<ExampleTensor> m;
  for (const std::string& l : labels) m.push_back({"l." + l + ".w", DType::kF32, {1}});
  TensorTreeModel model;
  model.SetLayout(Layout(m, {.ranks = 1}));
  ASSERT_EQ(model.rowCount(), 1);
  const QModelIndex l = model.index(0, 0);
  std::vector<std::string> got;
  for (int r = 0; r < model.rowCount(l); ++r) {
    got.push_back(model.data(model.index(r, 0, l)).toString().toStdString());
  }
  // Expected: the layout's (byte) order, stably sorted by NaturalLess.
  std::vector<std::string> want = labels;
  std::sort(want.begin(), want.end());
  std::stable_sort(want.begin(), want.end(),
                   [](const std::string& a, const std::string& b) { return NaturalLess(a, b); });
  EXPECT_EQ(got, want);
}

TEST(TensorTreeModelTest, GoldenDumpMarksTheGap) {
  WriteOptions o{.ranks = 4};
  o.drop_chunk = std::make_pair(std::string("b.w"), 0);
  TensorTreeModel model;
  model.SetLayout(Layout({{"b.w", DType::kBF16, {8, 4}, Sharding::kRow},
                          {"a.norm", DType::kF32, {4}, Sharding::kReplicated},
                          {"b.v", DType::kI64, {}, Sharding::kReplicated}},
                         o));
  EXPECT_EQ(model.Dump(),
            "a |  |  | 4 | 16 B |  |  | ok\n"
            "  norm | F32 | [4] | 4 | 16 B | 1 | rank 0 | ok\n"
            "b |  |  | 33 | 72 B |  |  | problem\n"
            "  v | I64 | [] | 1 | 8 B | 1 | rank 0 | ok\n"
            "  w | BF16 | [8, 4] | 32 | 64 B | 3 | 3 | problem\n");
}

// Issue 13: in an HF-sharded checkpoint the Files column names the file holding each tensor
// (sortable by name); a tensor spread over several files shows how many.
TEST(TensorTreeModelTest, FilesColumnNamesTheHfShardHoldingATensor) {
  const std::string dir = testing::NewTempDir() + "/hf";
  ASSERT_EQ(mkdir(dir.c_str(), 0755), 0);
  testing::WriteFile(dir + "/model-00001-of-00002.safetensors",
                     testing::BuildSafetensors({{"a", DType::kF32, {2}}}));
  testing::WriteFile(dir + "/model-00002-of-00002.safetensors",
                     testing::BuildSafetensors({{"b", DType::kF32, {2}}}));
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), dir);
  ASSERT_TRUE(ck.ok()) << ck.status();
  TensorTreeModel model;
  model.SetLayout(std::make_shared<const CheckpointLayout>(std::move(*ck)));
  ASSERT_EQ(model.rowCount(), 2);
  EXPECT_EQ(model.data(model.index(0, TensorTreeModel::kFiles)).toString(), "00001-of-00002");
  EXPECT_EQ(model.data(model.index(1, TensorTreeModel::kFiles)).toString(), "00002-of-00002");
  EXPECT_FALSE(
      model.data(model.index(1, TensorTreeModel::kFiles), TensorTreeModel::kValueRole).isValid());
  EXPECT_EQ(model.data(model.index(1, TensorTreeModel::kFiles), Qt::ToolTipRole).toString(),
            "model-00002-of-00002.safetensors");

  // Per-rank shards: a tensor in 3 rank files shows 3 (a number, sortable by value).
  TensorTreeModel dcp;
  dcp.SetLayout(Layout({{"w", DType::kBF16, {8, 4}, Sharding::kRow}}, {.ranks = 3}));
  EXPECT_EQ(dcp.data(dcp.index(0, TensorTreeModel::kFiles)).toString(), "3");
  EXPECT_EQ(
      dcp.data(dcp.index(0, TensorTreeModel::kFiles), TensorTreeModel::kValueRole).toULongLong(),
      3u);
}

}  // namespace
}  // namespace safeshard::gui
