// main_window.h: safeshard-inspector's window.
//
// Central: the tensor tree (filter bar: regex, dtype, only problems; tree or flat) beside tabs
// for the selected tensor — its shard map with chunk table, and its values. Docks: files with
// byte maps, bytes per rank x file, problems, and the daemon panel. Opening a checkpoint scans
// and builds the tree off the GUI thread; a newer open drops the older result.
//
//   MainWindow w({.stats = ComputeTensorStatsFn()});
//   w.show();
//   w.OpenPath("/ckpt/step-100");   // layoutLoaded() or loadFailed(message) follows
#ifndef SAFESHARD_GUI_VIEWS_MAIN_WINDOW_H_
#define SAFESHARD_GUI_VIEWS_MAIN_WINDOW_H_

#include <QMainWindow>
#include <QString>
#include <atomic>
#include <memory>

#include "core/io/filesystem.h"
#include "core/layout/layout.h"
#include "gui/models/tensor_tree_model.h"
#include "gui/views/values_panel.h"

class QCheckBox;
class QComboBox;
class QDockWidget;
class QLabel;
class QLineEdit;
class QMenu;
class QProgressBar;
class QSettings;
class QSplitter;
class QTabWidget;
class QTimer;
class QTableView;
class QTreeView;

namespace safeshard::gui {

class ByteMapWidget;
class ChunkModel;
class ConsolidateDialog;
class DaemonPanel;
class DiffModel;
class FileModel;
class ProblemsModel;
class RankFileHeatMap;
class RemapDialog;
class ShardMapWidget;
class TensorFilterProxy;

struct InspectorOptions {
  FileSystem* fs = nullptr;  // for plain paths; default: the local file system. URLs
                             // (http(s)://, hf://) get their own (token from the environment)
  StatsFunction stats;       // the values tab is disabled without one
  QString settings_file;     // default: QSettings("safeshard", "inspector")
};

class MainWindow : public QMainWindow {
  Q_OBJECT

 public:
  explicit MainWindow(InspectorOptions options, QWidget* parent = nullptr);
  ~MainWindow() override;

  void OpenPath(const QString& path);
  bool loading() const { return loading_; }
  const std::shared_ptr<const CheckpointLayout>& checkpoint() const { return layout_; }
  // Selects a tensor in the tree (clearing filters that hide it); false if there is none.
  bool SelectTensor(const QString& name);
  const TensorLayout* selected_tensor() const { return selected_; }
  // Applies the filter bar now (typing applies it by itself, after a pause in large checkpoints).
  void UpdateFilter();
  QString banner_text() const;
  QString summary_text() const;  // the status bar's permanent text
  QStringList recent_paths() const;

  ConsolidateDialog* OpenConsolidateDialog();
  RemapDialog* OpenRemapDialog();
  // Compares the open checkpoint (A) with another (B: a directory, file or URL) in the
  // background, every byte; the differences fill the Differences dock (compareFinished).
  void CompareWith(const QString& other);
  bool comparing() const { return comparing_; }
  QString compare_summary() const;

  // The views (tests drive and inspect them like a user would).
  QTreeView* tree_view;
  QLineEdit* filter_edit;
  QComboBox* dtype_filter;
  QCheckBox* problems_only;
  QCheckBox* flat_check;
  QTabWidget* tabs;
  ShardMapWidget* shard_map;
  QCheckBox* proportional_check = nullptr;  // shard map: true proportions
  QComboBox* row_dim_combo;
  QComboBox* col_dim_combo;
  QTableView* chunk_view;
  ValuesPanel* values;
  QTableView* files_view;
  ByteMapWidget* byte_map;
  RankFileHeatMap* heat_map;
  QTableView* problems_view;
  QTableView* diff_view;
  QLabel* diff_summary;
  DaemonPanel* daemon_panel;
  TensorTreeModel* tree_model;
  TensorFilterProxy* tree_proxy;

 signals:
  void layoutLoaded();
  void loadFailed(const QString& message);
  void tensorSelected(const QString& name);
  void compareFinished();

 protected:
  void closeEvent(QCloseEvent* e) override;
  void dragEnterEvent(QDragEnterEvent* e) override;
  void dropEvent(QDropEvent* e) override;

 private:
  void BuildMenus();
  void BuildDocks();
  void Install(std::shared_ptr<FileSystem> fs, std::shared_ptr<const CheckpointLayout> layout,
               std::shared_ptr<TensorTreeModel::Prepared> prepared, double seconds);
  void ShowBanner(const QString& html, bool error);
  void OnTensorChanged();
  void OnChunkClicked(int chunk);
  void SelectFile(int file);
  void UpdateDimCombos();
  void ExpandSmallTopLevel();
  // A Consolidate or Remap dialog on the open checkpoint (banner and nullptr when none is open).
  template <typename Dialog>
  Dialog* OpenToolDialog();
  void AddRecent(const QString& path);
  void RebuildRecentMenu();
  void SaveSettings();

  InspectorOptions options_;
  FileSystem* fs_;
  std::shared_ptr<FileSystem> current_fs_;  // the open checkpoint's (local or remote)
  std::unique_ptr<QSettings> settings_;
  std::shared_ptr<const CheckpointLayout> layout_;
  const TensorLayout* selected_ = nullptr;
  QString path_;
  bool loading_ = false;
  int generation_ = 0;
  ChunkModel* chunk_model_;
  FileModel* file_model_;
  ProblemsModel* problems_model_;
  DiffModel* diff_model_;
  QDockWidget* diff_dock_ = nullptr;
  bool comparing_ = false;
  int compare_generation_ = 0;
  std::shared_ptr<std::atomic<bool>> compare_cancel_;
  QLabel* banner_;
  QLabel* summary_;
  QProgressBar* busy_;
  QSplitter* main_split_;
  QMenu* recent_menu_;
  QTimer* filter_timer_;
  QByteArray default_state_;
};

}  // namespace safeshard::gui

#endif  // SAFESHARD_GUI_VIEWS_MAIN_WINDOW_H_
