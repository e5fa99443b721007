// Golden dumps of every model over the ../shared/fixtures checkpoints (each file as a
// single-file checkpoint, each directory as a whole) and a generated per-rank checkpoint with a
// deliberate gap; every model also runs under QAbstractItemModelTester.
//
// To refresh after an intended change:
//   SAFESHARD_UPDATE_GOLDEN=$PWD/gui/models/testdata/fixtures.golden bazel test
//   //gui/models:fixtures_golden_test
#include <QAbstractItemModelTester>
#include <QCoreApplication>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "core/example/example.h"
#include "core/io/filesystem.h"
#include "core/testing/testing.h"
#include "gtest/gtest.h"
#include "gui/models/list_models.h"
#include "gui/models/remap_preview_model.h"
#include "gui/models/tensor_tree_model.h"

namespace safeshard::gui {
namespace {

std::string DumpTable(const QAbstractItemModel& m) {
  std::string out;
  std::vector<std::string> head;
  for (int c = 0; c < m.columnCount(); ++c)
    head.push_back(m.headerData(c, Qt::Horizontal).toString().toStdString());
  absl::StrAppend(&out, "  # ", absl::StrJoin(head, " | "), "\n");
  for (int r = 0; r < m.rowCount(); ++r) {
    std::vector<std::string> cells;
    for (int c = 0; c < m.columnCount(); ++c)
      cells.push_back(m.data(m.index(r, c)).toString().toStdString());
    absl::StrAppend(&out, "  ", absl::StrJoin(cells, " | "), "\n");
  }
  return out;
}

// Every model over one checkpoint, as text.
std::string DumpAll(const std::string& label, const std::string& path) {
  auto scanned = CheckpointLayout::Scan(LocalFileSystem(), path);
  if (!scanned.ok())
    return absl::StrCat("== ", label, "\n  scan error: ", scanned.status().message(), "\n");
  auto layout = std::make_shared<const CheckpointLayout>(std::move(*scanned));
  std::string out = absl::StrCat("== ", label, " (", CheckpointKindName(layout->kind()), ")\n");
  TensorTreeModel tree;
  QAbstractItemModelTester t1(&tree, QAbstractItemModelTester::FailureReportingMode::Fatal);
  tree.SetLayout(layout);
  absl::StrAppend(&out, "-- tree\n", tree.Dump());
  tree.SetFlat(true);
  EXPECT_EQ(tree.rowCount(), static_cast<int>(layout->tensors().size())) << label;
  FileModel files;
  QAbstractItemModelTester t2(&files, QAbstractItemModelTester::FailureReportingMode::Fatal);
  files.SetLayout(layout);
  absl::StrAppend(&out, "-- files\n", DumpTable(files));
  ProblemsModel problems;
  QAbstractItemModelTester t3(&problems, QAbstractItemModelTester::FailureReportingMode::Fatal);
  problems.SetLayout(layout);
  absl::StrAppend(&out, "-- problems\n", DumpTable(problems));
  ChunkModel chunks;
  QAbstractItemModelTester t4(&chunks, QAbstractItemModelTester::FailureReportingMode::Fatal);
  for (const TensorLayout& t : layout->tensors()) {
    if (t.chunks.size() > 1 || t.has_problem) {
      chunks.SetTensor(layout, &t);
      absl::StrAppend(&out, "-- chunks of ", t.name, "\n", DumpTable(chunks));
    }
  }
  // Remap preview: strip the first name component.
  RemapPreviewModel remap;
  QAbstractItemModelTester t5(&remap, QAbstractItemModelTester::FailureReportingMode::Fatal);
  std::vector<std::string> keys;
  for (const TensorLayout& t : layout->tensors()) keys.push_back(t.name);
  remap.SetKeys(keys);
  EXPECT_TRUE(remap.SetRules({{"^[^.]*\\.", ""}}).ok());
  absl::StrAppend(&out, "-- remap ^[^.]*\\. => '' : ", remap.changed(), " changed, ",
                  remap.collisions(), " collisions\n");
  return out;
}

TEST(FixturesGoldenTest, EveryModelOverEveryFixtureAndAGap) {
  SAFESHARD_REQUIRE_FIXTURES_OR_SKIP(fixtures);
  std::vector<std::pair<std::string, std::string>> inputs;  // label, path
  for (const auto& e : std::filesystem::recursive_directory_iterator(fixtures)) {
    const std::string rel = std::filesystem::relative(e.path(), fixtures).string();
    if (e.is_regular_file() && e.path().extension() == ".safetensors")
      inputs.push_back({rel, e.path().string()});
    if (e.is_directory()) {
      bool has = false;
      for (const auto& f : std::filesystem::directory_iterator(e.path()))
        has |= f.path().extension() == ".safetensors";
      if (has) inputs.push_back({rel + "/", e.path().string()});
    }
  }
  std::sort(inputs.begin(), inputs.end());
  ASSERT_GE(inputs.size(), 20u);
  std::string got;
  for (const auto& [label, path] : inputs) got += DumpAll(label, path);
  // Error messages name files by absolute path: make the dump independent of where fixtures are.
  got = absl::StrReplaceAll(got, {{fixtures + "/", "$FIXTURES/"}});
  WriteOptions o{.ranks = 4};
  o.drop_chunk = std::make_pair(std::string("model.layers.0.mlp.gate_proj.weight"), 1);
  const std::string gap = testing::NewTempDir() + "/gap";
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), gap,
                                 TransformerLikeModel({.layers = 1, .hidden = 16, .vocab = 32}), o)
                  .ok());
  got += DumpAll(
      "generated 4-rank checkpoint, rank 1's chunk of model.layers.0.mlp.gate_proj.weight dropped",
      gap);

  if (const char* update = std::getenv("SAFESHARD_UPDATE_GOLDEN")) {
    std::ofstream(update) << got;
    GTEST_SKIP() << "wrote " << update;
  }
  const std::string want = testing::ReadFile("gui/models/testdata/fixtures.golden");
  if (got != want) {
    // Point at the first differing line.
    std::istringstream a(got), b(want);
    std::string la, lb;
    int line = 1;
    while (std::getline(a, la) && std::getline(b, lb) && la == lb) ++line;
    FAIL() << "golden mismatch at line " << line << ":\n  got:  " << la << "\n  want: " << lb
           << "\n(refresh with SAFESHARD_UPDATE_GOLDEN, see the top of this file)";
  }
}

}  // namespace
}  // namespace safeshard::gui
