#include "gui/models/remap_preview_model.h"

#include <QAbstractItemModelTester>
#include <QCoreApplication>

#include "gtest/gtest.h"

namespace safeshard::gui {
namespace {

TEST(RemapPreviewModelTest, PreviewsRenamesAndFlagsCollisions) {
  RemapPreviewModel m;
  QAbstractItemModelTester tester(&m, QAbstractItemModelTester::FailureReportingMode::Fatal);
  m.SetKeys({"enc.w", "dec.w", "head"});
  EXPECT_EQ(m.changed(), 0);
  ASSERT_TRUE(m.SetRules({{"^enc\\.", "encoder."}}).ok());
  EXPECT_EQ(m.changed(), 1);
  EXPECT_EQ(m.collisions(), 0);
  EXPECT_EQ(m.data(m.index(0, RemapPreviewModel::kNew)).toString(), "encoder.w");
  ASSERT_TRUE(m.SetRules({{"^(enc|dec)\\.", ""}}).ok());
  EXPECT_EQ(m.collisions(), 2);
  EXPECT_EQ(m.data(m.index(1, RemapPreviewModel::kState)).toString(), "collision");
  EXPECT_TRUE(m.data(m.index(1, 0), RemapPreviewModel::kCollisionRole).toBool());
  EXPECT_FALSE(m.data(m.index(2, 0), RemapPreviewModel::kCollisionRole).toBool());
  // A bad rule is an error and keeps the last good preview.
  EXPECT_FALSE(m.SetRules({{"(", ""}}).ok());
  EXPECT_EQ(m.collisions(), 2);
}

}  // namespace
}  // namespace safeshard::gui
