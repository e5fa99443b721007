// Widget tests (offscreen): the inspector's main flows driven like a user would — open, filter,
// select a tensor and check the shard map's geometry, problems, values, consolidation to
// completion and cancelled, remap refused on a collision and applied without, the daemon panel
// against a daemon started here — and screenshots kept as test outputs.
#include <unistd.h>
#include <QAbstractItemModelTester>
#include <QAction>
#include <QApplication>
#include <QCheckBox>
#include <QComboBox>
#include <QDir>
#include <QDockWidget>
#include <QElapsedTimer>
#include <QFile>
#include <QInputDialog>
#include <QJsonObject>
#include <QLineEdit>
#include <QMimeData>
#include <QProgressBar>
#include <QPushButton>
#include <QRadioButton>
#include <QSignalSpy>
#include <QTabWidget>
#include <QTableView>
#include <QTableWidget>
#include <QTest>
#include <QThread>
#include <QTimer>
#include <QTreeView>

#include <cmath>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <set>

#include "core/consolidate/consolidate.h"
#include "core/example/example.h"
#include "core/format/filenames.h"
#include "core/format/header.h"
#include "core/format/sharding.h"
#include "core/testing/nginx.h"
#include "core/testing/testing.h"
#include "daemon/daemon.h"
#include "gtest/gtest.h"
#include "gui/models/list_models.h"
#include "gui/stats/tensor_stats.h"
#include "gui/views/consolidate_dialog.h"
#include "gui/views/daemon_panel.h"
#include "gui/views/main_window.h"
#include "gui/views/overview_widgets.h"
#include "gui/views/remap_dialog.h"
#include "gui/views/shard_map_widget.h"
#include "gui/views/tensor_filter_proxy.h"

namespace safeshard::gui {
namespace {

bool WaitUntil(const std::function<bool()>& pred, int ms = 30000) {
  QElapsedTimer t;
  t.start();
  while (!pred()) {
    if (t.elapsed() > ms) return false;
    QCoreApplication::processEvents(QEventLoop::AllEvents, 20);
    QThread::msleep(2);
  }
  return true;
}

std::string MakeCheckpoint(const std::string& name, WriteOptions o = {.ranks = 4},
                           std::vector<ExampleTensor> model = {}) {
  if (model.empty()) model = TransformerLikeModel({.layers = 3, .hidden = 64, .vocab = 256});
  const std::string dir = testing::NewTempDir() + "/" + name;
  EXPECT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), dir, model, o).ok());
  return dir;
}

InspectorOptions Options() {
  InspectorOptions o;
  o.settings_file = QString::fromStdString(testing::NewTempDir() + "/inspector.ini");
  o.stats = [](FileSystem& fs, const CheckpointLayout& l, const TensorLayout& t,
               const std::atomic<bool>* cancel) {
    StatsOptions so;
    so.cancel = cancel;
    return ComputeTensorStats(fs, l, t, so);
  };
  return o;
}

bool Open(MainWindow& w, const std::string& path) {
  QSignalSpy loaded(&w, &MainWindow::layoutLoaded);
  w.OpenPath(QString::fromStdString(path));
  return WaitUntil([&] { return loaded.count() > 0; });
}

// Tensor names visible in the (filtered) tree.
QStringList VisibleTensors(MainWindow& w) {
  QStringList out;
  std::function<void(const QModelIndex&)> walk = [&](const QModelIndex& parent) {
    QAbstractItemModel* m = w.tree_view->model();
    for (int r = 0; r < m->rowCount(parent); ++r) {
      QModelIndex i = m->index(r, 0, parent);
      const QString n = i.data(TensorTreeModel::kTensorNameRole).toString();
      if (!n.isEmpty()) out << n;
      walk(i);
    }
  };
  walk({});
  return out;
}

void SaveScreenshot(QWidget* w, const std::string& name) {
  const char* dir = std::getenv("TEST_UNDECLARED_OUTPUTS_DIR");
  const QString path =
      QString::fromStdString((dir ? std::string(dir) : testing::NewTempDir()) + "/" + name);
  ASSERT_TRUE(w->grab().save(path)) << path.toStdString();
  std::fprintf(stderr, "screenshot: %s\n", path.toStdString().c_str());
}

TEST(InspectorTest, OpensFiltersAndSelects) {
  const std::string ck = MakeCheckpoint("run");
  MainWindow w(Options());
  QAbstractItemModelTester tester(w.tree_proxy,
                                  QAbstractItemModelTester::FailureReportingMode::Fatal);
  w.show();
  ASSERT_TRUE(Open(w, ck));
  EXPECT_TRUE(w.summary_text().contains("dcp_sharded, 4 ranks")) << w.summary_text().toStdString();
  EXPECT_TRUE(w.summary_text().contains("consistent"));
  // No manifest, no global_shape: the summary says completeness is unproven, never "complete".
  EXPECT_TRUE(w.summary_text().contains("completeness unproven")) << w.summary_text().toStdString();
  EXPECT_TRUE(w.banner_text().isEmpty());
  const int all = VisibleTensors(w).size();
  EXPECT_EQ(all, static_cast<int>(w.checkpoint()->tensors().size()));
  EXPECT_EQ(w.recent_paths().value(0).toStdString(), ck);

  // Regex filter, typed.
  QTest::keyClicks(w.filter_edit, "layers\\.[12]\\..*gate");
  QStringList v = VisibleTensors(w);
  EXPECT_EQ(v, (QStringList{"model.layers.1.mlp.gate_proj.weight",
                            "model.layers.2.mlp.gate_proj.weight"}));
  // An invalid regex keeps the last valid filter and marks the field.
  w.filter_edit->setText("([");
  EXPECT_EQ(VisibleTensors(w).size(), 2);
  EXPECT_TRUE(w.filter_edit->styleSheet().contains("border"));
  w.filter_edit->clear();
  EXPECT_EQ(VisibleTensors(w).size(), all);
  // DType filter.
  w.dtype_filter->setCurrentIndex(w.dtype_filter->findData("F32"));
  v = VisibleTensors(w);
  ASSERT_FALSE(v.isEmpty());
  for (const QString& n : v)
    EXPECT_EQ(w.checkpoint()->FindTensor(n.toStdString())->dtype, DType::kF32) << n.toStdString();
  w.dtype_filter->setCurrentIndex(0);
  // Only problems: none here.
  w.problems_only->setChecked(true);
  EXPECT_TRUE(VisibleTensors(w).isEmpty());
  w.problems_only->setChecked(false);
  // Flat mode keeps the selection.
  ASSERT_TRUE(w.SelectTensor("model.layers.0.mlp.gate_proj.weight"));
  w.flat_check->setChecked(true);
  EXPECT_EQ(w.tree_view->model()->rowCount(), all);
  ASSERT_NE(w.selected_tensor(), nullptr);
  EXPECT_EQ(w.selected_tensor()->name, "model.layers.0.mlp.gate_proj.weight");
  // Dropping a directory on the window opens it.
  const std::string other = MakeCheckpoint("dropped", {.ranks = 2});
  {
    QMimeData mime;
    mime.setUrls({QUrl::fromLocalFile(QString::fromStdString(other))});
    QSignalSpy loaded(&w, &MainWindow::layoutLoaded);
    QDragEnterEvent enter(QPoint(10, 10), Qt::CopyAction, &mime, Qt::LeftButton, Qt::NoModifier);
    QApplication::sendEvent(&w, &enter);
    EXPECT_TRUE(enter.isAccepted());
    QDropEvent drop(QPointF(10, 10), Qt::CopyAction, &mime, Qt::LeftButton, Qt::NoModifier);
    QApplication::sendEvent(&w, &drop);
    ASSERT_TRUE(WaitUntil([&] { return loaded.count() > 0; }));
    EXPECT_EQ(w.checkpoint()->root(), other);
    EXPECT_EQ(w.recent_paths().value(0).toStdString(), other);
    EXPECT_EQ(w.recent_paths().value(1).toStdString(), ck);
    ASSERT_TRUE(Open(w, ck));
  }
  // A bad path is an error in place, and the open checkpoint stays.
  QSignalSpy failed(&w, &MainWindow::loadFailed);
  w.OpenPath("/nonexistent/ckpt");
  ASSERT_TRUE(WaitUntil([&] { return failed.count() > 0; }));
  EXPECT_TRUE(w.banner_text().contains("/nonexistent/ckpt")) << w.banner_text().toStdString();
  EXPECT_EQ(w.checkpoint()->root(), ck);
}

// One BF16 tensor `name` of `shape`, saved by `ranks` ranks as the chunks `boxes` (offsets,
// sizes) in per-rank DCP files; rank `skip` writes nothing. Files are sparse: headers are real,
// tensor bytes are holes (a 250 MB lm_head costs nothing).
std::string SparseRun(
    const std::string& name, const std::vector<uint64_t>& shape,
    const std::vector<std::pair<std::vector<uint64_t>, std::vector<uint64_t>>>& boxes,
    int skip = -1) {
  const std::string dir = testing::NewTempDir() + "/run";
  EXPECT_TRUE(LocalFileSystem().MakeDirs(dir).ok());
  for (int r = 0; r < static_cast<int>(boxes.size()); ++r) {
    if (r == skip) continue;
    Header h;
    uint64_t n = 2;
    for (uint64_t d : boxes[r].second) n *= d;
    h.tensors.push_back({name, DType::kBF16, boxes[r].second, 0, n});
    h.buffer_size = n;
    ShardingInfo info;
    info.saved_offsets[name] = boxes[r].first;
    info.global_shape[name] = shape;
    h.metadata["format"] = "pt";
    h.metadata[std::string(kShardingInfoKey)] = SerializeShardingInfo(info);
    h.has_metadata = true;
    h.Reindex();
    const std::string path = JoinPath(dir, ShardFileName(r, 1, 1));
    const std::string prefix = SerializeHeader(h);
    testing::WriteFile(path, prefix);
    EXPECT_EQ(truncate(path.c_str(), static_cast<off_t>(prefix.size() + n)), 0);
  }
  return dir;
}

std::vector<std::pair<std::vector<uint64_t>, std::vector<uint64_t>>> Split(
    const std::vector<uint64_t>& shape, const std::vector<int>& ways) {
  std::vector<std::pair<std::vector<uint64_t>, std::vector<uint64_t>>> out;
  std::vector<int> idx(shape.size(), 0);
  while (true) {
    std::vector<uint64_t> off(shape.size()), sz(shape.size());
    for (size_t d = 0; d < shape.size(); ++d) {
      sz[d] = shape[d] / ways[d];
      off[d] = sz[d] * idx[d];
    }
    out.push_back({off, sz});
    size_t d = shape.size();
    while (d-- > 0) {
      if (++idx[d] < ways[d]) break;
      idx[d] = 0;
      if (d == 0) return out;
    }
  }
}

// WCAG 2 contrast, computed here from its definition (not with the widget's code).
double WcagContrast(const QColor& a, const QColor& b) {
  auto lum = [](const QColor& c) {
    auto ch = [](double v) {
      return v <= 0.03928 ? v / 12.92 : std::pow((v + 0.055) / 1.055, 2.4);
    };
    return 0.2126 * ch(c.red() / 255.0) + 0.7152 * ch(c.green() / 255.0) +
           0.0722 * ch(c.blue() / 255.0);
  };
  const double x = lum(a), y = lum(b);
  return (std::max(x, y) + 0.05) / (std::min(x, y) + 0.05);
}

// Every chunk at least 24 px on its smaller side, labelled, and every label >= 4.5:1.
void ExpectLegible(const ShardMapWidget& map, const std::string& what) {
  SCOPED_TRACE(what);
  const TensorLayout* t = map.tensor();
  ASSERT_NE(t, nullptr);
  std::set<int> labelled;
  for (const ShardMapWidget::Label& l : map.labels()) {
    EXPECT_GE(WcagContrast(l.fg, l.bg), 4.5) << l.text.toStdString();
    if (l.chunk >= 0) labelled.insert(l.chunk);
  }
  for (int i = 0; i < static_cast<int>(t->chunks.size()); ++i) {
    const QRectF r = map.ChunkRect(i);
    EXPECT_GE(std::min(r.width(), r.height()), 24.0)
        << "chunk " << i << " is " << r.width() << " x " << r.height();
    EXPECT_TRUE(labelled.count(i)) << "chunk " << i << " has no label";
  }
}

TEST(InspectorTest, ShardMapGivesEveryChunkRoomAndReadableLabels) {
  struct Case {
    std::string what, name;
    std::vector<uint64_t> shape;
    std::vector<int> ways;
    int skip = -1;
  };
  const std::vector<Case> cases = {
      {"lm_head row-sharded 8 ways", "lm_head.weight", {32000, 4096}, {8, 1}},
      {"lm_head column-sharded 8 ways", "lm_head.weight", {32000, 4096}, {1, 8}},
      {"2x4 mesh", "model.layers.0.mlp.up_proj.weight", {11008, 4096}, {2, 4}},
      {"3-D experts 8 ways", "model.layers.0.mlp.experts.w1", {64, 1408, 2048}, {8, 1, 1}},
      {"row-sharded with rank 5 lost", "lm_head.weight", {32000, 4096}, {8, 1}, 5},
  };
  MainWindow w(Options());  // the default window size
  w.show();
  for (const Case& c : cases) {
    const std::string dir = SparseRun(c.name, c.shape, Split(c.shape, c.ways), c.skip);
    ASSERT_TRUE(Open(w, dir)) << c.what;
    ASSERT_TRUE(w.SelectTensor(QString::fromStdString(c.name))) << c.what;
    QCoreApplication::processEvents();
    ExpectLegible(*w.shard_map, c.what + " (main window)");
    ShardMapWidget map;  // alone, at its preferred size
    map.SetTensor(w.checkpoint(), w.selected_tensor());
    map.resize(map.sizeHint());
    ExpectLegible(map, c.what + " (alone)");
    // The split dimension runs horizontally; the longer one when there are two.
    if (c.ways[0] > 1 && c.ways.size() == 3) {
      EXPECT_EQ(map.col_dim(), 0) << c.what;
    }
    if (c.skip >= 0) {
      ASSERT_EQ(map.gaps().size(), 1u);
      ASSERT_EQ(map.gap_notes().size(), 1u);
      EXPECT_TRUE(map.gap_notes()[0].contains(
          "probably rank 5 (file shard-00006-model-00001-of-00001.safetensors, which is not in the "
          "checkpoint)"))
          << map.gap_notes()[0].toStdString();
      bool gap_label = false;
      for (const ShardMapWidget::Label& l : map.labels())
        gap_label |= l.chunk < 0 && l.text == "GAP";
      EXPECT_TRUE(gap_label);
      SaveScreenshot(&map, "inspector_shard_map_lost_rank.png");
    }
  }
  // True proportions on request: the row-sharded lm_head is then 8 thin bands of equal width.
  const std::string dir = SparseRun("lm_head.weight", {32000, 4096}, Split({32000, 4096}, {8, 1}));
  ASSERT_TRUE(Open(w, dir));
  ASSERT_TRUE(w.SelectTensor("lm_head.weight"));
  w.shard_map->SetProportional(true);
  const QRectF T = w.shard_map->TensorRect();
  EXPECT_NEAR(w.shard_map->ChunkRect(0).width(), T.width() / 8, 1e-6);
  w.shard_map->SetProportional(false);
}

TEST(InspectorTest, NoTwoActionsShareAShortcutAndWrongInputsGetGuidance) {
  MainWindow w(Options());
  w.show();
  std::map<QString, QString> seen;
  for (QAction* a : w.findChildren<QAction*>()) {
    for (const QKeySequence& k : a->shortcuts()) {
      if (a->shortcutContext() == Qt::WidgetShortcut) continue;  // local to one widget
      const QString key = k.toString();
      EXPECT_FALSE(seen.count(key))
          << key.toStdString() << " is bound to both \"" << seen[key].toStdString() << "\" and \""
          << a->text().toStdString() << "\"";
      seen[key] = a->text();
    }
  }
  // A directory of torch .distcp files is not "consistent": it is explained.
  const std::string distcp = testing::NewTempDir();
  testing::WriteFile(distcp + "/__0_0.distcp", "x");
  ASSERT_TRUE(Open(w, distcp));
  EXPECT_TRUE(w.banner_text().contains("torch.distributed.checkpoint"))
      << w.banner_text().toStdString();
  // A checkpoint opens with a tensor selected: its first problem's, else the first.
  ASSERT_TRUE(Open(w, MakeCheckpoint("first")));
  ASSERT_NE(w.selected_tensor(), nullptr);
  EXPECT_EQ(w.selected_tensor()->name, w.checkpoint()->tensors()[0].name);
  // The byte map outlines the selected tensor.
  ASSERT_TRUE(w.SelectTensor("lm_head.weight"));
  EXPECT_EQ(w.byte_map->selected_tensor(),
            static_cast<int>(w.selected_tensor() - w.checkpoint()->tensors().data()));
  // One colour per dtype, none of them a rank's colour.
  std::set<QRgb> dtype_colours;
  for (int d = 0; d < kNumDTypes; ++d)
    dtype_colours.insert(DTypeColor(static_cast<DType>(d)).rgb());
  EXPECT_EQ(dtype_colours.size(), static_cast<size_t>(kNumDTypes));
  for (int r = 0; r < 30; ++r)
    EXPECT_FALSE(dtype_colours.count(RankColor(r).rgb())) << "rank " << r;
}

TEST(InspectorTest, ShardMapGeometryOfAMeshShardedTensor) {
  const std::string ck = MakeCheckpoint("mesh");
  MainWindow w(Options());
  w.resize(1400, 900);
  w.show();
  ASSERT_TRUE(Open(w, ck));
  ASSERT_TRUE(w.SelectTensor("model.layers.0.mlp.gate_proj.weight"));  // [256, 64] on a 2x2 mesh
  ShardMapWidget* map = w.shard_map;
  const TensorLayout* t = w.selected_tensor();
  ASSERT_EQ(t->chunks.size(), 4u);
  map->SetDims(0, 1);
  map->SetProportional(true);  // this test checks true proportions
  const QRectF T = map->TensorRect();
  ASSERT_GT(T.width(), 50);
  double area = 0;
  for (int i = 0; i < 4; ++i) {
    const Chunk& c = t->chunks[i];
    const QRectF r = map->ChunkRect(i);
    EXPECT_NEAR(r.left(), T.left() + T.width() * c.offsets[1] / t->shape[1], 1e-6);
    EXPECT_NEAR(r.top(), T.top() + T.height() * c.offsets[0] / t->shape[0], 1e-6);
    EXPECT_NEAR(r.width(), T.width() * c.sizes[1] / t->shape[1], 1e-6);
    EXPECT_NEAR(r.height(), T.height() * c.sizes[0] / t->shape[0], 1e-6);
    area += r.width() * r.height();
  }
  EXPECT_NEAR(area, T.width() * T.height(), 1e-3);  // a 2x2 tiling: no gap, no overlap
  EXPECT_TRUE(map->gaps().empty());
  EXPECT_TRUE(map->overlaps().empty());
  // [256 rows, 64 columns]: drawn taller than wide, to scale.
  EXPECT_NEAR(T.width() / T.height(), 64.0 / 256.0, 1e-6);
  // Clicking a chunk selects it in the chunk table, and its file in the files table and byte map.
  const int pick = 3;
  QTest::mouseClick(map, Qt::LeftButton, {}, map->ChunkRect(pick).center().toPoint());
  EXPECT_EQ(map->selected_chunk(), pick);
  EXPECT_EQ(w.chunk_view->selectionModel()->selectedRows().value(0).row(), pick);
  EXPECT_EQ(w.files_view->selectionModel()->selectedRows().value(0).row(), t->chunks[pick].file);
  EXPECT_EQ(w.byte_map->selected_file(), t->chunks[pick].file);
  const QString tip = map->ChunkDescription(pick);
  EXPECT_TRUE(
      tip.contains(QString::fromStdString(w.checkpoint()->files()[t->chunks[pick].file].name)));
  EXPECT_TRUE(tip.contains(QString::number(t->chunks[pick].begin)));
  // Keyboard: Right moves to the next chunk.
  map->setFocus();
  QTest::keyClick(map, Qt::Key_Right);
  EXPECT_EQ(map->selected_chunk(), 0);
  // Transposed: columns become dim 0.
  w.row_dim_combo->setCurrentIndex(w.row_dim_combo->findData(1));
  w.col_dim_combo->setCurrentIndex(w.col_dim_combo->findData(0));
  map->SetDims(1, 0);
  const QRectF T2 = map->TensorRect();
  EXPECT_NEAR(T2.width() / T2.height(), 256.0 / 64.0, 1e-6);
  EXPECT_NEAR(map->ChunkRect(pick).left(),
              T2.left() + T2.width() * t->chunks[pick].offsets[0] / 256.0, 1e-6);
  // Heat map: 4 ranks x 1 model file, bytes of each rank's file.
  ASSERT_EQ(w.heat_map->row_count(), 4);
  ASSERT_EQ(w.heat_map->column_count(), 1);
  for (int r = 0; r < 4; ++r) {
    ASSERT_EQ(w.heat_map->CellFiles(r, 0).size(), 1u);
    const FileInfo& f = w.checkpoint()->files()[w.heat_map->CellFiles(r, 0)[0]];
    EXPECT_EQ(*f.shard, r + 1);
    EXPECT_EQ(w.heat_map->CellBytes(r, 0), f.header->buffer_size);
  }
  // Byte map: a file's segments are its header then its chunks, in order, without overlap.
  const auto& segs = w.byte_map->Segments(0);
  ASSERT_FALSE(segs.empty());
  EXPECT_EQ(segs[0].tensor, -1);
  for (size_t i = 1; i < segs.size(); ++i) EXPECT_LE(segs[i - 1].end, segs[i].begin);
  // Clicking a heat-map cell selects its file.
  QTest::mouseClick(w.heat_map, Qt::LeftButton, {}, w.heat_map->CellRect(2, 0).center().toPoint());
  EXPECT_EQ(w.files_view->selectionModel()->selectedRows().value(0).row(),
            w.heat_map->CellFiles(2, 0)[0]);
}

// A 3-D tensor [8, 4, 6] split along its last dimension into three per-rank files; `drop`
// leaves one rank's file out (its rank number stays taken by an empty file).
std::string InnerSplitCheckpoint(int drop = -1) {
  const std::string dir = testing::NewTempDir() + "/inner";
  std::filesystem::create_directories(dir);
  for (int r = 0; r < 3; ++r) {
    ShardingInfo info;
    std::vector<TensorSpec> specs;
    if (r != drop) {
      info.saved_offsets["t"] = {0, 0, static_cast<uint64_t>(2 * r)};
      specs.push_back({"t", DType::kF32, {8, 4, 2}});
    }
    testing::WriteFile(
        dir + "/shard-0000" + std::to_string(r + 1) + "-model-00001-of-00001.safetensors",
        testing::BuildSafetensors(specs, ShardedFileMetadata(info)));
  }
  return dir;
}

TEST(InspectorTest, NewestPyTorchLayoutShowsLogicalTensorsWithEachChunksKey) {
  WriteOptions o{.ranks = 4, .mesh_rows = 2};
  o.logical_fqn = true;
  o.global_shape = true;
  o.manifest = true;
  const std::string ck = MakeCheckpoint(
      "newest", o,
      {{"model.layers.0.mlp.up_proj.weight", DType::kBF16, {64, 32}, Sharding::kStridedMesh},
       {"model.layers.0.attn.q_proj.weight", DType::kBF16, {32, 32}, Sharding::kStrided},
       {"model.norm.weight", DType::kF32, {32}, Sharding::kReplicated}});
  MainWindow w(Options());
  w.show();
  ASSERT_TRUE(Open(w, ck));
  EXPECT_TRUE(w.summary_text().contains("consistent, complete")) << w.summary_text().toStdString();
  const QStringList v = VisibleTensors(w);
  EXPECT_EQ(v.size(), 3);
  for (const QString& n : v) EXPECT_FALSE(n.contains("__dcp_shard_")) << n.toStdString();
  const TensorLayout* t = w.checkpoint()->FindTensor("model.layers.0.mlp.up_proj.weight");
  ASSERT_NE(t, nullptr);
  ASSERT_EQ(t->chunks.size(), 8u);  // 4 ranks x 2 strided row blocks
  ASSERT_TRUE(w.SelectTensor("model.layers.0.mlp.up_proj.weight"));
  EXPECT_EQ(w.chunk_view->model()->rowCount(), 8);
  const QString tip = w.shard_map->ChunkDescription(0);
  EXPECT_TRUE(tip.contains("stored as <b>model.layers.0.mlp.up_proj.weight.__dcp_shard_"))
      << tip.toStdString();
  EXPECT_TRUE(w.shard_map->gaps().empty());
  SaveScreenshot(&w, "inspector-newest-strided.png");
}

TEST(InspectorTest, ThreeDimensionalTensorsShowDim0ByTheRestFlattened) {
  MainWindow w(Options());
  w.resize(1400, 900);
  w.show();
  ASSERT_TRUE(Open(w, InnerSplitCheckpoint()));
  ASSERT_TRUE(w.SelectTensor("t"));
  ShardMapWidget* map = w.shard_map;
  // By itself the map shows the split dimension (2, three pieces) across, the longer other one
  // (0) down; "dim 0 x the rest flattened" on request, here in true proportions.
  EXPECT_EQ(map->col_dim(), 2);
  EXPECT_EQ(map->row_dim(), 0);
  EXPECT_EQ(w.col_dim_combo->currentData().toInt(), 2);
  map->SetDims(0, ShardMapWidget::kRest);
  map->SetProportional(true);
  // Each chunk is 4 stripes of 2 columns in the 24 flattened columns (dim 1 x dim 2).
  const QRectF T = map->TensorRect();
  ASSERT_EQ(w.selected_tensor()->chunks.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    const int off = static_cast<int>(w.selected_tensor()->chunks[i].offsets[2]);
    std::vector<QRectF> stripes = map->ChunkRects(i);
    ASSERT_EQ(stripes.size(), 4u);
    for (int b = 0; b < 4; ++b) {
      EXPECT_NEAR(stripes[b].left(), T.left() + T.width() * (b * 6 + off) / 24.0, 1e-6);
      EXPECT_NEAR(stripes[b].width(), T.width() * 2 / 24.0, 1e-6);
      EXPECT_NEAR(stripes[b].height(), T.height(), 1e-6);
    }
    EXPECT_EQ(map->ChunkAt(stripes[2].center()), i);
  }
  EXPECT_TRUE(map->gaps().empty());
  EXPECT_TRUE(map->overlaps().empty());
  // Folding instead (dim 0 x dim 1): the chunks cover the same rectangle, yet no overlap is
  // reported because they are disjoint in the folded dimension.
  map->SetDims(0, 1);
  EXPECT_EQ(map->ChunkRect(0), map->ChunkRect(1));
  EXPECT_TRUE(map->overlaps().empty());
  EXPECT_TRUE(map->gaps().empty());

  // The middle file's chunk missing: the gap is the middle stripe of every dim-1 index.
  ASSERT_TRUE(Open(w, InnerSplitCheckpoint(1)));
  ASSERT_TRUE(w.SelectTensor("t"));
  ASSERT_EQ(w.selected_tensor()->shape, (std::vector<uint64_t>{8, 4, 6}));
  map->SetDims(0, ShardMapWidget::kRest);
  ASSERT_EQ(map->gaps().size(), 4u);
  for (int b = 0; b < 4; ++b) {
    EXPECT_EQ(map->gaps()[b].r0, 0u);
    EXPECT_EQ(map->gaps()[b].r1, 8u);
    EXPECT_EQ(map->gaps()[b].c0, static_cast<uint64_t>(b * 6 + 2));
    EXPECT_EQ(map->gaps()[b].c1, static_cast<uint64_t>(b * 6 + 4));
  }
  QCoreApplication::processEvents();
  SaveScreenshot(map, "inspector_shard_map_3d_rest.png");
  // Folded, the same gap is one region (the hidden-volume check).
  map->SetDims(0, 1);
  EXPECT_EQ(map->gaps().size(), 1u);
}

TEST(InspectorTest, GapIsHatchedAndProblemsSelectTheTensor) {
  WriteOptions o{.ranks = 4};
  o.drop_chunk = std::make_pair(std::string("model.layers.1.mlp.down_proj.weight"), 2);
  const std::string ck = MakeCheckpoint("gap", o);
  MainWindow w(Options());
  w.show();
  ASSERT_TRUE(Open(w, ck));
  EXPECT_TRUE(w.banner_text().contains("problem")) << w.banner_text().toStdString();
  w.problems_only->setChecked(true);
  EXPECT_EQ(VisibleTensors(w), QStringList{"model.layers.1.mlp.down_proj.weight"});
  w.problems_only->setChecked(false);
  ASSERT_GT(w.problems_view->model()->rowCount(), 0);
  QTest::mouseClick(w.problems_view->viewport(), Qt::LeftButton, {},
                    w.problems_view->visualRect(w.problems_view->model()->index(0, 0)).center());
  ASSERT_NE(w.selected_tensor(), nullptr);
  EXPECT_EQ(w.selected_tensor()->name, "model.layers.1.mlp.down_proj.weight");
  // The missing chunk is exactly the hatched region: column-sharded [64, 256], rank 2 of 4.
  const std::vector<uint64_t> shape = w.selected_tensor()->shape;
  ASSERT_EQ(shape, (std::vector<uint64_t>{64, 256}));
  ASSERT_EQ(w.shard_map->gaps().size(), 1u);
  const ShardMapWidget::Cell g = w.shard_map->gaps()[0];
  EXPECT_EQ(g.r0, 0u);
  EXPECT_EQ(g.r1, 64u);
  EXPECT_EQ(g.c0, 128u);
  EXPECT_EQ(g.c1, 192u);
}

TEST(InspectorTest, ValuesAreComputedInTheBackground) {
  const std::string ck = MakeCheckpoint("values");
  MainWindow w(Options());
  w.show();
  ASSERT_TRUE(Open(w, ck));
  QSignalSpy done(w.values, &ValuesPanel::finished);
  // Selecting two tensors quickly: only the last one's result is shown.
  ASSERT_TRUE(w.SelectTensor("model.embed_tokens.weight"));
  ASSERT_TRUE(w.SelectTensor("model.layers.0.input_layernorm.weight"));
  ASSERT_TRUE(WaitUntil([&] { return !w.values->busy() && done.count() > 0; }));
  ASSERT_TRUE(w.values->stats().has_value()) << w.values->message().toStdString();
  EXPECT_EQ(w.values->stats()->elements, w.selected_tensor()->numel());
}

// Holds every Create() until released, so a test can cancel while consolidation is under way.
class GateFileSystem : public testing::ForwardingFileSystem {
 public:
  using ForwardingFileSystem::ForwardingFileSystem;
  absl::StatusOr<std::unique_ptr<WritableFile>> Create(const std::string& p) override {
    std::unique_lock<std::mutex> l(mu_);
    reached_ = true;
    cv_.wait(l, [this] { return open_; });
    return base_->Create(p);
  }
  bool reached() {
    std::lock_guard<std::mutex> l(mu_);
    return reached_;
  }
  void Release() {
    std::lock_guard<std::mutex> l(mu_);
    open_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool reached_ = false, open_ = false;
};

TEST(InspectorTest, ConsolidationRunsToCompletionAndTheResultOpens) {
  const std::string ck = MakeCheckpoint("cons");
  MainWindow w(Options());
  w.show();
  ASSERT_TRUE(Open(w, ck));
  const size_t tensors = w.checkpoint()->tensors().size();
  ConsolidateDialog* d = w.OpenConsolidateDialog();
  ASSERT_NE(d, nullptr);
  const std::string out = testing::NewTempDir() + "/hf";
  d->output_edit->setText(QString::fromStdString(out));
  d->max_size_radio->setChecked(true);
  d->max_size_edit->setText("64KiB");
  QSignalSpy loaded(&w, &MainWindow::layoutLoaded);
  QTest::mouseClick(d->start_button, Qt::LeftButton);
  ASSERT_TRUE(WaitUntil([&] { return loaded.count() > 0; }));
  EXPECT_EQ(w.checkpoint()->root(), out);
  EXPECT_EQ(w.checkpoint()->kind(), CheckpointKind::kHfSharded);
  EXPECT_EQ(w.checkpoint()->tensors().size(), tensors);
  EXPECT_TRUE(w.checkpoint()->problems().empty());
  EXPECT_FALSE(w.checkpoint()->index_file().empty());
  EXPECT_GT(w.checkpoint()->files().size(), 1u);
}

TEST(InspectorTest, CompareWithAnotherCheckpointListsDifferencesAndSelectsTheTensor) {
  const std::string ck = MakeCheckpoint("cmp");
  // B: the consolidation of A with one element of one tensor changed, and one tensor more.
  const std::string b = testing::NewTempDir() + "/b";
  ASSERT_TRUE(Consolidate(LocalFileSystem(), ck, b, {}).ok());
  testing::FlipTensorByte(b, "model.layers.1.mlp.up_proj.weight", 2 * (3 * 64 + 5),
                          0x10);  // [256, 64] F16: [3, 5]
  testing::WriteFile(b + "/extra.safetensors",
                     testing::BuildSafetensors({{"extra.bias", DType::kF32, {8}}}));

  MainWindow w(Options());
  w.resize(1500, 940);
  w.show();
  ASSERT_TRUE(Open(w, ck));
  QSignalSpy done(&w, &MainWindow::compareFinished);
  w.CompareWith(QString::fromStdString(b));
  EXPECT_TRUE(w.comparing());
  ASSERT_TRUE(WaitUntil([&] { return done.count() > 0; }));
  EXPECT_FALSE(w.comparing());
  QAbstractItemModel* m = w.diff_view->model();
  ASSERT_EQ(m->rowCount(), 2) << w.compare_summary().toStdString();
  EXPECT_EQ(m->index(0, 0).data().toString(), "only in B");
  EXPECT_EQ(m->index(0, 1).data().toString(), "extra.bias");
  EXPECT_EQ(m->index(1, 0).data().toString(), "values");
  EXPECT_EQ(m->index(1, 1).data().toString(), "model.layers.1.mlp.up_proj.weight");
  EXPECT_TRUE(m->index(1, 2).data().toString().contains("first at [3, 5]"))
      << m->index(1, 2).data().toString().toStdString();
  EXPECT_TRUE(w.compare_summary().contains("2 difference(s)")) << w.compare_summary().toStdString();
  // Clicking the difference selects its tensor; the one only in B says so instead.
  QTest::mouseClick(w.diff_view->viewport(), Qt::LeftButton, {},
                    w.diff_view->visualRect(m->index(1, 1)).center());
  ASSERT_NE(w.selected_tensor(), nullptr);
  EXPECT_EQ(w.selected_tensor()->name, "model.layers.1.mlp.up_proj.weight");
  QTest::mouseClick(w.diff_view->viewport(), Qt::LeftButton, {},
                    w.diff_view->visualRect(m->index(0, 1)).center());
  EXPECT_TRUE(w.banner_text().contains("only in the other checkpoint"))
      << w.banner_text().toStdString();
  SaveScreenshot(&w, "inspector_compare.png");

  // Compared with itself: identical. Opening another checkpoint clears the comparison.
  w.CompareWith(QString::fromStdString(ck));
  ASSERT_TRUE(WaitUntil([&] { return done.count() > 1; }));
  EXPECT_EQ(m->rowCount(), 0);
  EXPECT_TRUE(w.compare_summary().contains("identical")) << w.compare_summary().toStdString();
  w.CompareWith(QString::fromStdString(b));
  ASSERT_TRUE(Open(w, b));  // the comparison may or may not have finished first
  EXPECT_EQ(m->rowCount(), 0);
  EXPECT_FALSE(w.comparing());
  int before = done.count();
  // Tools > Compare With URL... takes what is typed (here a plain directory).
  QAction* compare_url = w.findChild<QAction*>("compare_url");
  ASSERT_NE(compare_url, nullptr);
  QTimer::singleShot(0, [&] {
    auto* dialog = qobject_cast<QInputDialog*>(QApplication::activeModalWidget());
    ASSERT_NE(dialog, nullptr);
    dialog->setTextValue(QString::fromStdString(ck));
    dialog->accept();
  });
  compare_url->trigger();
  ASSERT_TRUE(WaitUntil([&] { return done.count() > before; }));
  EXPECT_EQ(m->rowCount(), 2)
      << w.compare_summary().toStdString();  // B is open now: A's extra is missing
  // A missing other checkpoint: said in place.
  before = done.count();
  w.CompareWith("/nonexistent/checkpoint");
  ASSERT_TRUE(WaitUntil([&] { return done.count() > before; }));
  EXPECT_TRUE(w.compare_summary().contains("Cannot compare with"))
      << w.compare_summary().toStdString();
}

TEST(InspectorTest, ConsolidationCanBeCancelledAndLeavesNothing) {
  const std::string ck = MakeCheckpoint("cancel");
  GateFileSystem gate(&LocalFileSystem());
  InspectorOptions opts = Options();
  opts.fs = &gate;
  MainWindow w(opts);
  w.show();
  ASSERT_TRUE(Open(w, ck));
  ConsolidateDialog* d = w.OpenConsolidateDialog();
  ASSERT_NE(d, nullptr);
  const std::string out = testing::NewTempDir() + "/hf";
  d->output_edit->setText(QString::fromStdString(out));
  QSignalSpy finished(d, &ConsolidateDialog::runFinished);
  QTest::mouseClick(d->start_button, Qt::LeftButton);
  ASSERT_TRUE(d->running());
  ASSERT_TRUE(WaitUntil([&] { return gate.reached(); }));
  EXPECT_EQ(d->cancel_button->text(), "Cancel");
  QTest::mouseClick(d->cancel_button, Qt::LeftButton);
  gate.Release();
  ASSERT_TRUE(WaitUntil([&] { return finished.count() > 0; }));
  EXPECT_FALSE(finished[0][0].toBool());
  EXPECT_TRUE(d->status_text().contains("Cancelled")) << d->status_text().toStdString();
  // Nothing a user could take for a result.
  if (std::filesystem::exists(out)) {
    for (const auto& e : std::filesystem::directory_iterator(out)) {
      ADD_FAILURE() << "left behind: " << e.path();
    }
  }
  EXPECT_EQ(w.checkpoint()->root(), ck);
}

TEST(InspectorTest, RemapRefusesCollisionsAndAppliesOtherwise) {
  const std::string ck = MakeCheckpoint("remap");
  MainWindow w(Options());
  w.show();
  ASSERT_TRUE(Open(w, ck));
  RemapDialog* d = w.OpenRemapDialog();
  ASSERT_NE(d, nullptr);
  const std::string out = testing::NewTempDir() + "/remapped";
  d->output_edit->setText(QString::fromStdString(out));
  // Dropping the layer number makes every layer's tensors collide.
  d->SetRules({{"layers\\.[0-9]+\\.", ""}});
  EXPECT_GT(d->preview_model->collisions(), 0);
  EXPECT_FALSE(d->apply_button->isEnabled());
  EXPECT_FALSE(d->Apply());
  EXPECT_TRUE(d->status_text().contains("collide")) << d->status_text().toStdString();
  EXPECT_FALSE(std::filesystem::exists(out));
  // The colliding rows are highlighted.
  QAbstractItemModel* pm = d->preview_view->model();
  bool highlighted = false;
  for (int r = 0; r < pm->rowCount(); ++r)
    highlighted |= pm->index(r, 0).data(Qt::BackgroundRole).isValid();
  EXPECT_TRUE(highlighted);
  // A bad regex is reported and keeps Apply off.
  d->SetRules({{"(", "x"}});
  EXPECT_FALSE(d->apply_button->isEnabled());
  // Without collisions: applied, and the result opens.
  d->SetRules({{"^model\\.", "backbone."}});
  EXPECT_EQ(d->preview_model->collisions(), 0);
  ASSERT_TRUE(d->apply_button->isEnabled());
  QSignalSpy loaded(&w, &MainWindow::layoutLoaded);
  QTest::mouseClick(d->apply_button, Qt::LeftButton);
  ASSERT_TRUE(WaitUntil([&] { return loaded.count() > 0; }));
  EXPECT_EQ(w.checkpoint()->root(), out);
  ASSERT_NE(w.checkpoint()->FindTensor("backbone.embed_tokens.weight"), nullptr);
  EXPECT_EQ(w.checkpoint()->FindTensor("model.embed_tokens.weight"), nullptr);
  EXPECT_TRUE(w.checkpoint()->problems().empty());
}

TEST(InspectorTest, DaemonPanelListsRunsTriggersConsolidationAndOpensTheResult) {
  const std::string root = testing::NewTempDir() + "/runs";
  const std::string run = root + "/step-100";
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), run,
                                 TransformerLikeModel({.layers = 1, .hidden = 32, .vocab = 64}),
                                 {.ranks = 2})
                  .ok());
  daemon::Config c;
  c.watch_roots = {root};
  c.api_port = 0;
  c.quiet_period_seconds = 3600;  // never on its own: the panel triggers it
  c.rescan_interval_seconds = 3600;
  c.token_file = testing::NewTempDir() + "/token";
  c.state_db = testing::NewTempDir() + "/state.db";
  auto d = daemon::Daemon::Create(c);
  ASSERT_TRUE(d.ok()) << d.status();
  ASSERT_TRUE((*d)->Start().ok());

  MainWindow w(Options());
  w.show();
  DaemonPanel* p = w.daemon_panel;
  p->address_edit->setText(QString("http://127.0.0.1:%1").arg((*d)->port()));
  // A wrong token is refused with the daemon's message, and the token is not shown.
  const std::string bad = testing::NewTempDir() + "/bad-token";
  testing::WriteFile(bad, "not-the-token");
  p->token_file_edit->setText(QString::fromStdString(bad));
  QTest::mouseClick(p->connect_button, Qt::LeftButton);
  ASSERT_TRUE(WaitUntil([&] { return p->runs().size() == 1; })) << p->status_text().toStdString();
  EXPECT_EQ(p->runs_table->item(0, 0)->text().toStdString(), run);  // runs by their paths
  p->runs_table->selectRow(0);
  QSignalSpy action(p, &DaemonPanel::actionDone);
  QTest::mouseClick(p->consolidate_button, Qt::LeftButton);
  ASSERT_TRUE(WaitUntil([&] { return action.count() == 1; }));
  EXPECT_FALSE(action[0][0].toBool());
  EXPECT_TRUE(p->status_text().contains("401")) << p->status_text().toStdString();
  EXPECT_FALSE(p->status_text().contains("not-the-token"));
  // The right token: queued, then published (the table refreshes by itself).
  p->token_file_edit->setText(QString::fromStdString(c.token_file));
  QTest::mouseClick(p->consolidate_button, Qt::LeftButton);
  ASSERT_TRUE(WaitUntil([&] { return action.count() == 2; }));
  EXPECT_TRUE(action[1][0].toBool()) << action[1][1].toString().toStdString();
  ASSERT_TRUE(WaitUntil(
      [&] {
        return p->runs().size() == 1 && p->runs()[0].toObject()["state"].toString() == "published";
      },
      60000))
      << p->status_text().toStdString();
  ASSERT_TRUE(WaitUntil([&] { return p->jobs_table->rowCount() == 1; }));
  EXPECT_EQ(p->jobs_table->item(0, 3)->text(), "published");
  EXPECT_EQ(p->jobs_table->item(0, 1)->text().toStdString(), run);  // the run's path, not its id
  EXPECT_TRUE(p->runs_table->item(0, 3)->text().startsWith("published into"))
      << p->runs_table->item(0, 3)->text().toStdString();
  // Open: the consolidated output opens in the inspector.
  p->runs_table->selectRow(0);
  QSignalSpy loaded(&w, &MainWindow::layoutLoaded);
  QTest::mouseClick(p->open_button, Qt::LeftButton);
  ASSERT_TRUE(WaitUntil([&] { return loaded.count() > 0; }));
  EXPECT_EQ(w.checkpoint()->kind(), CheckpointKind::kSingleFile);
  EXPECT_TRUE(w.checkpoint()->problems().empty());
  p->Disconnect();
  (*d)->Stop();
  // Nothing listening: the button stays "Connect" and says why.
  p->address_edit->setText(QString("http://127.0.0.1:%1").arg(testing::FreePort()));
  QTest::mouseClick(p->connect_button, Qt::LeftButton);
  ASSERT_TRUE(WaitUntil([&] { return !p->connected(); })) << p->status_text().toStdString();
  EXPECT_EQ(p->connect_button->text(), "Connect");
  EXPECT_TRUE(p->status_text().startsWith("Could not connect")) << p->status_text().toStdString();
}

TEST(InspectorTest, OpensAnHttpUrlComputesValuesAndConsolidatesLocally) {
  const std::string root = testing::NewTempDir() + "/www";
  const std::string ck = root + "/runs/step-5";
  ASSERT_TRUE(WriteDcpCheckpoint(LocalFileSystem(), ck,
                                 TransformerLikeModel({.layers = 1, .hidden = 32, .vocab = 64}),
                                 {.ranks = 2})
                  .ok());
  auto server = testing::NginxServer::Start(root, "gui-token");
  ASSERT_TRUE(server.ok()) << server.status();
  setenv("HF_TOKEN", "gui-token", 1);
  MainWindow w(Options());
  w.show();
  const std::string url = (*server)->url() + "/runs/step-5";
  // File > Open URL... with the URL typed in.
  QAction* open_url = w.findChild<QAction*>("open_url");
  ASSERT_NE(open_url, nullptr);
  QSignalSpy loaded_url(&w, &MainWindow::layoutLoaded);
  QTimer::singleShot(0, [&] {
    auto* dialog = qobject_cast<QInputDialog*>(QApplication::activeModalWidget());
    ASSERT_NE(dialog, nullptr);
    dialog->setTextValue(QString::fromStdString(" " + url + " "));
    dialog->accept();
  });
  open_url->trigger();
  ASSERT_TRUE(WaitUntil([&] { return loaded_url.count() > 0; })) << w.banner_text().toStdString();
  EXPECT_EQ(w.checkpoint()->root(), url);
  EXPECT_TRUE(w.checkpoint()->problems().empty());
  // Values read over HTTP.
  QSignalSpy done(w.values, &ValuesPanel::finished);
  ASSERT_TRUE(w.SelectTensor("model.embed_tokens.weight"));
  ASSERT_TRUE(WaitUntil([&] { return done.count() > 0; }));
  ASSERT_TRUE(w.values->stats().has_value()) << w.values->message().toStdString();
  EXPECT_EQ(w.values->stats()->elements, w.selected_tensor()->numel());
  // Consolidate into a local directory; the result opens.
  ConsolidateDialog* d = w.OpenConsolidateDialog();
  ASSERT_NE(d, nullptr);
  const std::string out = testing::NewTempDir() + "/hf";
  d->output_edit->setText(QString::fromStdString(out));
  QSignalSpy loaded(&w, &MainWindow::layoutLoaded);
  QTest::mouseClick(d->start_button, Qt::LeftButton);
  ASSERT_TRUE(WaitUntil([&] { return loaded.count() > 0; })) << d->error_text().toStdString();
  EXPECT_EQ(w.checkpoint()->root(), out);
  EXPECT_EQ(w.checkpoint()->kind(), CheckpointKind::kSingleFile);
  // A wrong token is an error in place.
  setenv("HF_TOKEN", "wrong", 1);
  QSignalSpy failed(&w, &MainWindow::loadFailed);
  w.OpenPath(QString::fromStdString(url));
  ASSERT_TRUE(WaitUntil([&] { return failed.count() > 0; }));
  EXPECT_TRUE(w.banner_text().contains("401")) << w.banner_text().toStdString();
  unsetenv("HF_TOKEN");
}

TEST(InspectorTest, Screenshots) {
  const std::string ck = MakeCheckpoint("step-1200");
  MainWindow w(Options());
  w.resize(1500, 940);
  w.show();
  ASSERT_TRUE(Open(w, ck));
  ASSERT_TRUE(w.SelectTensor("model.layers.1.mlp.gate_proj.weight"));
  w.shard_map->SelectChunk(1);
  w.files_view->selectRow(w.selected_tensor()->chunks[1].file);
  QCoreApplication::processEvents();
  SaveScreenshot(&w, "inspector_main_window.png");
  // Values tab.
  QSignalSpy done(w.values, &ValuesPanel::finished);
  w.tabs->setCurrentIndex(1);
  ASSERT_TRUE(WaitUntil([&] { return !w.values->busy(); }));
  QCoreApplication::processEvents();
  SaveScreenshot(&w, "inspector_values.png");
  w.tabs->setCurrentIndex(0);
  // Ranks x files, and the problems panel of the broken run below.
  for (QDockWidget* d : w.findChildren<QDockWidget*>()) {
    if (d->objectName() == "heatmap") d->raise();
  }
  QCoreApplication::processEvents();
  SaveScreenshot(&w, "inspector_heat_map.png");
  for (QDockWidget* d : w.findChildren<QDockWidget*>()) {
    if (d->objectName() == "problems") d->raise();
  }

  // The shard map with a gap (8 ranks on a 2x4 mesh, one chunk missing).
  WriteOptions o{.ranks = 8, .mesh_rows = 2};
  o.drop_chunk = std::make_pair(std::string("model.layers.0.mlp.gate_proj.weight"), 5);
  const std::string gap = MakeCheckpoint("step-1300-broken", o);
  ASSERT_TRUE(Open(w, gap));
  ASSERT_TRUE(w.SelectTensor("model.layers.0.mlp.gate_proj.weight"));
  ASSERT_EQ(w.shard_map->gaps().size(), 1u);
  QCoreApplication::processEvents();
  SaveScreenshot(&w, "inspector_main_window_gap.png");
  // The map alone, larger, transposed so the 2x4 mesh reads left to right.
  ShardMapWidget map;
  map.SetTensor(w.checkpoint(), w.selected_tensor());
  map.SetDims(1, 0);
  map.resize(960, 420);
  ASSERT_EQ(map.gaps().size(), 1u);
  SaveScreenshot(&map, "inspector_shard_map_gap.png");
  w.tabs->setCurrentIndex(0);
}

// Issue 14: the Consolidate dialog offers dequantization only for a quantized checkpoint, and
// a run with it writes plain BF16 weights without their scales.
TEST(InspectorTest, ConsolidateDialogDequantizesAQuantizedCheckpoint) {
  const std::string plain = MakeCheckpoint("plain");
  {
    MainWindow w(Options());
    ASSERT_TRUE(Open(w, plain));
    ConsolidateDialog* d = w.OpenConsolidateDialog();
    ASSERT_NE(d, nullptr);
    EXPECT_FALSE(d->dequantize_combo->isEnabled());
  }
  const std::string dir = testing::NewTempDir() + "/fp8";
  ASSERT_TRUE(LocalFileSystem().MakeDirs(dir).ok());
  testing::WriteFile(dir + "/model.safetensors",
                     testing::BuildSafetensors({{"l.weight", DType::kF8_E4M3, {130, 64}},
                                                {"l.weight_scale_inv", DType::kF32, {2, 1}}}));
  MainWindow w(Options());
  w.show();
  ASSERT_TRUE(Open(w, dir));
  ConsolidateDialog* d = w.OpenConsolidateDialog();
  ASSERT_NE(d, nullptr);
  ASSERT_TRUE(d->dequantize_combo->isEnabled());
  // The shard map says what the selected weight is, before anything else on its caption line.
  w.shard_map->SetTensor(w.checkpoint(), w.checkpoint()->FindTensor("l.weight"));
  EXPECT_TRUE(w.shard_map->Subtitle().startsWith(
      "quantized: fp8 128x128 blocks (F8_E4M3 codes, F32 scales), scales in l.weight_scale_inv"))
      << w.shard_map->Subtitle().toStdString();
  EXPECT_TRUE(d->dequantize_combo->toolTip().contains("fp8 128x128 blocks"));
  d->dequantize_combo->setCurrentIndex(d->dequantize_combo->findData("bf16"));
  const std::string out = testing::NewTempDir() + "/hf";
  d->output_edit->setText(QString::fromStdString(out));
  QSignalSpy finished(d, &ConsolidateDialog::runFinished);
  QTest::mouseClick(d->start_button, Qt::LeftButton);
  ASSERT_TRUE(WaitUntil([&] { return finished.count() > 0; }));
  ASSERT_TRUE(finished[0][0].toBool()) << d->error_text().toStdString();
  auto ck = CheckpointLayout::Scan(LocalFileSystem(), out);
  ASSERT_TRUE(ck.ok());
  ASSERT_EQ(ck->tensors().size(), 1u);
  EXPECT_EQ(ck->tensors()[0].name, "l.weight");
  EXPECT_EQ(ck->tensors()[0].dtype, DType::kBF16);
}

}  // namespace
}  // namespace safeshard::gui

int main(int argc, char** argv) {
  QApplication app(argc, argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
