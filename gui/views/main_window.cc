#include "gui/views/main_window.h"

#include "absl/strings/str_join.h"

#include <QAction>
#include <QApplication>
#include <QCheckBox>
#include <QClipboard>
#include <QCloseEvent>
#include <QComboBox>
#include <QDockWidget>
#include <QDragEnterEvent>
#include <QDropEvent>
#include <QElapsedTimer>
#include <QFileDialog>
#include <QFileInfo>
#include <QFutureWatcher>
#include <QHBoxLayout>
#include <QHeaderView>
#include <QInputDialog>
#include <QLabel>
#include <QLineEdit>
#include <QMenuBar>
#include <QMessageBox>
#include <QMimeData>
#include <QProgressBar>
#include <QScrollArea>
#include <QSettings>
#include <QSplitter>
#include <QStatusBar>
#include <QTabWidget>
#include <QTableView>
#include <QTimer>
#include <QTreeView>
#include <QVBoxLayout>
#include <QtConcurrent/QtConcurrent>
#include <map>

#include "absl/strings/str_cat.h"
#include "core/diff/diff.h"
#include "core/io/url.h"
#include "core/util/status_macros.h"
#include "gui/models/diff_model.h"
#include "gui/models/list_models.h"
#include "gui/views/consolidate_dialog.h"
#include "gui/views/daemon_panel.h"
#include "gui/views/format_util.h"
#include "gui/views/overview_widgets.h"
#include "gui/views/remap_dialog.h"
#include "gui/views/shard_map_widget.h"
#include "gui/views/tensor_filter_proxy.h"

namespace safeshard::gui {
namespace {

constexpr int kMaxRecent = 10;
constexpr int kMaxAutoExpandRows = 2000;
constexpr size_t kImmediateFilterTensors = 5000;

// Rows below `parent` (all levels), counting at most to `limit`.
int VisibleRowsBelow(const QAbstractItemModel& m, const QModelIndex& parent, int limit) {
  int n = 0;
  for (int r = 0; r < m.rowCount(parent) && n < limit; ++r) {
    ++n;
    n += VisibleRowsBelow(m, m.index(r, 0, parent), limit - n);
  }
  return n;
}

// A path or URL scanned with the file system it names (a URL's own, taking the token from
// $HF_TOKEN or the HF token file; `local` for plain paths). Runs off the GUI thread.
struct Scanned {
  std::shared_ptr<FileSystem> fs;
  CheckpointLayout layout;
};
absl::StatusOr<Scanned> ResolveAndScan(FileSystem* local, const QString& path) {
  std::shared_ptr<FileSystem> fs;
  std::string where = path.toStdString();
  if (!UrlScheme(where).empty()) {
    ASSIGN_OR_RETURN(ResolvedPath resolved, ResolveUrl(where));
    fs = resolved.fs;
    where = resolved.path;
  } else {
    fs = std::shared_ptr<FileSystem>(local, [](FileSystem*) {});
  }
  ASSIGN_OR_RETURN(CheckpointLayout layout, CheckpointLayout::Scan(*fs, where));
  return Scanned{std::move(fs), std::move(layout)};
}

struct Loaded {
  absl::Status status;
  std::shared_ptr<FileSystem> fs;
  std::shared_ptr<const CheckpointLayout> layout;
  std::shared_ptr<TensorTreeModel::Prepared> prepared;
  double seconds = 0;
};

QTableView* MakeTable(QWidget* parent) {
  auto* t = new QTableView(parent);
  t->setSelectionBehavior(QAbstractItemView::SelectRows);
  t->setSelectionMode(QAbstractItemView::SingleSelection);
  t->verticalHeader()->setVisible(false);
  t->verticalHeader()->setDefaultSectionSize(t->fontMetrics().height() + 6);
  t->horizontalHeader()->setStretchLastSection(true);
  t->setAlternatingRowColors(true);
  t->setWordWrap(false);
  return t;
}

}  // namespace

MainWindow::MainWindow(InspectorOptions options, QWidget* parent)
    : QMainWindow(parent), options_(std::move(options)) {
  fs_ = options_.fs ? options_.fs : &LocalFileSystem();
  settings_ = options_.settings_file.isEmpty()
                  ? std::make_unique<QSettings>("safeshard", "inspector")
                  : std::make_unique<QSettings>(options_.settings_file, QSettings::IniFormat);
  setWindowTitle("safeshard inspector");
  setAcceptDrops(true);
  resize(1400, 860);

  // --- left: filter bar + tensor tree
  auto* left = new QWidget(this);
  auto* ll = new QVBoxLayout(left);
  ll->setContentsMargins(6, 6, 0, 0);
  auto* bar = new QHBoxLayout;
  filter_edit = new QLineEdit(left);
  filter_edit->setPlaceholderText("Filter tensors (regex, e.g. layers\\.1[0-9]\\..*proj)");
  filter_edit->setClearButtonEnabled(true);
  filter_edit->setToolTip(
      "Regular expression matched anywhere in the full tensor name, case-insensitive (Ctrl+F)");
  dtype_filter = new QComboBox(left);
  dtype_filter->addItem("All dtypes", "");
  dtype_filter->setToolTip("Show only tensors of this dtype");
  problems_only = new QCheckBox("Only problems", left);
  problems_only->setToolTip("Show only tensors with gaps, overlaps or other problems");
  flat_check = new QCheckBox("Flat", left);
  flat_check->setToolTip("A flat list of full names instead of the prefix tree (Ctrl+Shift+L)");
  bar->addWidget(filter_edit, 1);
  bar->addWidget(dtype_filter);
  bar->addWidget(problems_only);
  bar->addWidget(flat_check);
  ll->addLayout(bar);
  tree_model = new TensorTreeModel(this);
  tree_proxy = new TensorFilterProxy(this);
  tree_proxy->setSourceModel(tree_model);
  tree_view = new QTreeView(left);
  tree_view->setModel(tree_proxy);
  tree_view->setUniformRowHeights(true);  // fast with 100k rows
  tree_view->setAlternatingRowColors(true);
  tree_view->setSelectionBehavior(QAbstractItemView::SelectRows);
  tree_view->header()->setStretchLastSection(false);
  // Widths from the font: the longest dtype name fits; the name column takes what is left (and
  // long names are elided in the middle, where they differ least).
  const QFontMetrics tfm(tree_view->font());
  int dtype_w = tfm.horizontalAdvance("DType") + 16;
  for (int d = 0; d < kNumDTypes; ++d) {
    dtype_w = std::max(
        dtype_w,
        tfm.horizontalAdvance(QString::fromUtf8(DTypeName(static_cast<DType>(d)).data())) + 16);
  }
  const int widths[TensorTreeModel::kColumnCount] = {215, dtype_w, 100, 85, 75, 52, 42, 62};
  for (int c = 0; c < TensorTreeModel::kColumnCount; ++c)
    tree_view->header()->resizeSection(c, widths[c]);
  tree_view->header()->setMinimumSectionSize(40);
  // Which file holds a tensor matters more than its counts: Files right after Shape.
  tree_view->header()->moveSection(TensorTreeModel::kFiles, TensorTreeModel::kParameters);
  tree_view->setTextElideMode(Qt::ElideMiddle);
  tree_view->setSortingEnabled(true);
  tree_view->sortByColumn(-1, Qt::AscendingOrder);  // file order until a header is clicked
  tree_view->setContextMenuPolicy(Qt::ActionsContextMenu);
  auto* copy_name = new QAction("Copy Name", tree_view);
  copy_name->setShortcut(QKeySequence::Copy);
  copy_name->setShortcutContext(Qt::WidgetShortcut);
  connect(copy_name, &QAction::triggered, this, [this] {
    if (const TensorLayout* t = selected_tensor()) {
      QGuiApplication::clipboard()->setText(QString::fromStdString(t->name));
    }
  });
  tree_view->addAction(copy_name);
  tree_view->setAccessibleName("Tensors");
  ll->addWidget(tree_view, 1);

  // --- right: shard map + chunks, values
  tabs = new QTabWidget(this);
  auto* map_page = new QWidget(tabs);
  auto* ml = new QVBoxLayout(map_page);
  auto* dims = new QHBoxLayout;
  row_dim_combo = new QComboBox(map_page);
  col_dim_combo = new QComboBox(map_page);
  row_dim_combo->setSizeAdjustPolicy(QComboBox::AdjustToContents);
  col_dim_combo->setSizeAdjustPolicy(QComboBox::AdjustToContents);
  row_dim_combo->setToolTip("Tensor dimension drawn vertically");
  col_dim_combo->setToolTip("Tensor dimension drawn horizontally; other dimensions are folded");
  dims->addWidget(new QLabel("Rows:", map_page));
  dims->addWidget(row_dim_combo);
  dims->addWidget(new QLabel("Columns:", map_page));
  dims->addWidget(col_dim_combo);
  proportional_check = new QCheckBox("True proportions", map_page);
  proportional_check->setToolTip(
      "Draw every slice to scale. Unchecked (the default), each slice between two chunk "
      "boundaries gets an equal share of the panel, so thin shards stay readable");
  dims->addWidget(proportional_check);
  dims->addStretch();
  ml->addLayout(dims);
  auto* map_split = new QSplitter(Qt::Vertical, map_page);
  shard_map = new ShardMapWidget(map_split);
  chunk_model_ = new ChunkModel(this);
  chunk_view = MakeTable(map_split);
  chunk_view->setModel(chunk_model_);
  map_split->addWidget(shard_map);
  map_split->addWidget(chunk_view);
  map_split->setStretchFactor(0, 3);
  map_split->setStretchFactor(1, 1);
  ml->addWidget(map_split, 1);
  tabs->addTab(map_page, "Shard map");
  values = new ValuesPanel(options_.stats, tabs);
  tabs->addTab(values, "Values");
  tabs->setTabEnabled(1, static_cast<bool>(options_.stats));

  main_split_ = new QSplitter(Qt::Horizontal, this);
  main_split_->addWidget(left);
  main_split_->addWidget(tabs);
  main_split_->setStretchFactor(0, 1);
  main_split_->setStretchFactor(1, 1);
  main_split_->setSizes({720, 780});
  auto* central = new QWidget(this);
  auto* cl = new QVBoxLayout(central);
  cl->setContentsMargins(0, 0, 0, 0);
  banner_ = new QLabel(central);
  banner_->setWordWrap(true);
  banner_->setTextInteractionFlags(Qt::TextSelectableByMouse);
  banner_->setContentsMargins(10, 6, 10, 6);
  banner_->hide();
  cl->addWidget(banner_);
  cl->addWidget(main_split_, 1);
  setCentralWidget(central);

  BuildDocks();
  BuildMenus();

  summary_ = new QLabel("Open a checkpoint directory or file (Ctrl+O), or drop one here.", this);
  busy_ = new QProgressBar(this);
  busy_->setRange(0, 0);
  busy_->setMaximumWidth(160);
  busy_->hide();
  statusBar()->addWidget(summary_, 1);
  statusBar()->addPermanentWidget(busy_);

  // --- wiring
  // Typing filters at once in small checkpoints; in large ones (a pass over 100k rows takes
  // ~0.2 s) once the user pauses, so keystrokes never wait for it.
  filter_timer_ = new QTimer(this);
  filter_timer_->setSingleShot(true);
  filter_timer_->setInterval(250);
  connect(filter_timer_, &QTimer::timeout, this, &MainWindow::UpdateFilter);
  connect(filter_edit, &QLineEdit::textChanged, this, [this] {
    if (layout_ && layout_->tensors().size() > kImmediateFilterTensors) {
      filter_timer_->start();
    } else {
      UpdateFilter();
    }
  });
  connect(dtype_filter, &QComboBox::currentIndexChanged, this, &MainWindow::UpdateFilter);
  connect(problems_only, &QCheckBox::toggled, this, &MainWindow::UpdateFilter);
  connect(flat_check, &QCheckBox::toggled, this, [this](bool flat) {
    const QString keep = selected_ ? QString::fromStdString(selected_->name) : QString();
    tree_model->SetFlat(flat);
    if (!flat && !tree_proxy->active()) ExpandSmallTopLevel();
    if (!keep.isEmpty()) SelectTensor(keep);
  });
  connect(tree_view->selectionModel(), &QItemSelectionModel::currentChanged, this,
          &MainWindow::OnTensorChanged);
  connect(shard_map, &ShardMapWidget::chunkClicked, this, &MainWindow::OnChunkClicked);
  connect(proportional_check, &QCheckBox::toggled, shard_map, &ShardMapWidget::SetProportional);
  connect(chunk_view, &QTableView::clicked, this,
          [this](const QModelIndex& i) { OnChunkClicked(i.row()); });
  auto dims_changed = [this] {
    shard_map->SetDims(row_dim_combo->currentData().toInt(), col_dim_combo->currentData().toInt());
  };
  connect(row_dim_combo, &QComboBox::activated, this, dims_changed);
  connect(col_dim_combo, &QComboBox::activated, this, dims_changed);
  connect(heat_map, &RankFileHeatMap::fileClicked, this, &MainWindow::SelectFile);
  connect(byte_map, &ByteMapWidget::fileClicked, this, &MainWindow::SelectFile);
  connect(byte_map, &ByteMapWidget::tensorClicked, this,
          [this](const QString& n) { SelectTensor(n); });
  connect(files_view, &QTableView::clicked, this,
          [this](const QModelIndex& i) { SelectFile(i.row()); });
  connect(problems_view, &QTableView::activated, this, [this](const QModelIndex& i) {
    if (!layout_ || i.row() >= static_cast<int>(layout_->problems().size())) return;
    const Problem& p = layout_->problems()[i.row()];
    if (!p.tensor.empty()) {
      SelectTensor(QString::fromStdString(p.tensor));
    } else {
      for (int f = 0; f < static_cast<int>(layout_->files().size()); ++f) {
        if (layout_->files()[f].name == p.file) SelectFile(f);
      }
    }
  });
  connect(problems_view, &QTableView::clicked, problems_view, &QTableView::activated);
  connect(diff_view, &QTableView::activated, this, [this](const QModelIndex& i) {
    const QString name = diff_model_->data(i, DiffModel::kTensorNameRole).toString();
    if (name.isEmpty()) return;
    if (!diff_model_->data(i, DiffModel::kInARole).toBool()) {
      ShowBanner(QString("<b>%1</b> is only in the other checkpoint.").arg(name.toHtmlEscaped()),
                 false);
      return;
    }
    SelectTensor(name);
  });
  connect(diff_view, &QTableView::clicked, diff_view, &QTableView::activated);
  connect(daemon_panel, &DaemonPanel::openRequested, this, &MainWindow::OpenPath);

  // --- settings
  flat_check->setChecked(settings_->value("flat", false).toBool());
  daemon_panel->address_edit->setText(
      settings_->value("daemon/address", daemon_panel->address_edit->text()).toString());
  daemon_panel->token_file_edit->setText(
      settings_->value("daemon/token_file", daemon_panel->token_file_edit->text()).toString());
  default_state_ = saveState();
  restoreGeometry(settings_->value("geometry").toByteArray());
  restoreState(settings_->value("state").toByteArray());
  main_split_->restoreState(settings_->value("split").toByteArray());
  RebuildRecentMenu();
}

MainWindow::~MainWindow() {
  if (compare_cancel_) compare_cancel_->store(true);  // a comparison still running stops early
}

void MainWindow::BuildDocks() {
  setDockOptions(QMainWindow::AnimatedDocks | QMainWindow::AllowTabbedDocks |
                 QMainWindow::AllowNestedDocks);
  // Files: the table and every file's byte map.
  auto* files_dock = new QDockWidget("Files", this);
  files_dock->setObjectName("files");
  auto* fsplit = new QSplitter(Qt::Horizontal, files_dock);
  file_model_ = new FileModel(this);
  files_view = MakeTable(fsplit);
  files_view->setModel(file_model_);
  files_view->setSortingEnabled(false);
  auto* scroll = new QScrollArea(fsplit);
  byte_map = new ByteMapWidget;
  scroll->setWidget(byte_map);
  scroll->setWidgetResizable(true);
  fsplit->addWidget(files_view);
  fsplit->addWidget(scroll);
  fsplit->setStretchFactor(0, 2);
  fsplit->setStretchFactor(1, 3);
  files_dock->setWidget(fsplit);
  addDockWidget(Qt::BottomDockWidgetArea, files_dock);

  auto* heat_dock = new QDockWidget("Ranks × files", this);
  heat_dock->setObjectName("heatmap");
  auto* hscroll = new QScrollArea(heat_dock);
  heat_map = new RankFileHeatMap;
  hscroll->setWidget(heat_map);
  hscroll->setWidgetResizable(true);
  heat_dock->setWidget(hscroll);
  addDockWidget(Qt::BottomDockWidgetArea, heat_dock);

  auto* problems_dock = new QDockWidget("Problems", this);
  problems_dock->setObjectName("problems");
  problems_model_ = new ProblemsModel(this);
  problems_view = MakeTable(problems_dock);
  problems_view->setModel(problems_model_);
  problems_view->setToolTip("Click a problem to select its tensor");
  problems_dock->setWidget(problems_view);
  addDockWidget(Qt::BottomDockWidgetArea, problems_dock);

  diff_dock_ = new QDockWidget("Differences", this);
  diff_dock_->setObjectName("differences");
  auto* diff_box = new QWidget(diff_dock_);
  auto* diff_layout = new QVBoxLayout(diff_box);
  diff_layout->setContentsMargins(4, 4, 4, 4);
  diff_summary = new QLabel(
      "Tools → Compare With… compares this checkpoint with another, every byte.", diff_box);
  diff_summary->setWordWrap(true);
  diff_summary->setTextInteractionFlags(Qt::TextSelectableByMouse);
  diff_model_ = new DiffModel(this);
  diff_view = MakeTable(diff_box);
  diff_view->setModel(diff_model_);
  diff_view->setToolTip("Click a difference to select its tensor");
  diff_layout->addWidget(diff_summary);
  diff_layout->addWidget(diff_view, 1);
  diff_dock_->setWidget(diff_box);
  addDockWidget(Qt::BottomDockWidgetArea, diff_dock_);

  auto* daemon_dock = new QDockWidget("Daemon", this);
  daemon_dock->setObjectName("daemon");
  daemon_panel = new DaemonPanel(daemon_dock);
  daemon_dock->setWidget(daemon_panel);
  addDockWidget(Qt::BottomDockWidgetArea, daemon_dock);

  tabifyDockWidget(files_dock, heat_dock);
  tabifyDockWidget(heat_dock, problems_dock);
  tabifyDockWidget(problems_dock, diff_dock_);
  tabifyDockWidget(diff_dock_, daemon_dock);
  files_dock->raise();
  resizeDocks({files_dock}, {260}, Qt::Vertical);
}

void MainWindow::BuildMenus() {
  QMenu* file = menuBar()->addMenu("&File");
  QAction* open_dir = file->addAction("&Open Checkpoint Directory…", this, [this] {
    const QString d = QFileDialog::getExistingDirectory(this, "Open checkpoint directory", path_);
    if (!d.isEmpty()) OpenPath(d);
  });
  open_dir->setShortcut(QKeySequence::Open);
  QAction* open_file = file->addAction("Open Safetensors &File…", this, [this] {
    const QString f = QFileDialog::getOpenFileName(this, "Open safetensors file", path_,
                                                   "Safetensors (*.safetensors);;All files (*)");
    if (!f.isEmpty()) OpenPath(f);
  });
  open_file->setShortcut(QKeySequence("Ctrl+Shift+O"));
  QAction* open_url = file->addAction("Open &URL…", this, [this] {
    bool ok = false;
    const QString url = QInputDialog::getText(
        this, "Open URL",
        "Checkpoint URL: http(s)://host/dir (a JSON directory index or "
        "model.safetensors.index.json), "
        "hf://ORG/REPO[@REVISION]/PATH ($HF_ENDPOINT). The token comes from $HF_TOKEN or "
        "~/.cache/huggingface/token.",
        QLineEdit::Normal, path_.contains("://") ? path_ : QString(), &ok);
    if (ok && !url.trimmed().isEmpty()) OpenPath(url.trimmed());
  });
  open_url->setObjectName("open_url");
  open_url->setShortcut(QKeySequence("Ctrl+L"));
  recent_menu_ = file->addMenu("Open &Recent");
  QAction* reload = file->addAction("&Reload", this, [this] {
    if (!path_.isEmpty()) OpenPath(path_);
  });
  reload->setShortcut(QKeySequence::Refresh);
  file->addSeparator();
  QAction* quit = file->addAction("&Quit", this, &QWidget::close);
  quit->setShortcut(QKeySequence::Quit);

  QMenu* tools = menuBar()->addMenu("&Tools");
  QAction* cons = tools->addAction("&Consolidate…", this, [this] { OpenConsolidateDialog(); });
  cons->setShortcut(QKeySequence("Ctrl+Shift+C"));
  cons->setToolTip(
      "Write the standard model-0000i-of-0000N.safetensors layout from this checkpoint");
  QAction* remap = tools->addAction("&Remap Keys…", this, [this] { OpenRemapDialog(); });
  remap->setShortcut(QKeySequence("Ctrl+Shift+R"));
  QAction* compare = tools->addAction("Compare &With…", this, [this] {
    if (!layout_) {
      ShowBanner("Open a checkpoint first, then compare it with another.", true);
      return;
    }
    const QString d =
        QFileDialog::getExistingDirectory(this, "Compare with checkpoint directory", path_);
    if (!d.isEmpty()) CompareWith(d);
  });
  compare->setShortcut(QKeySequence("Ctrl+Shift+D"));
  QAction* compare_url = tools->addAction("Compare With &URL…", this, [this] {
    if (!layout_) {
      ShowBanner("Open a checkpoint first, then compare it with another.", true);
      return;
    }
    bool ok = false;
    const QString url = QInputDialog::getText(
        this, "Compare with URL", "Other checkpoint: a directory, http(s):// or hf:// URL",
        QLineEdit::Normal, QString(), &ok);
    if (ok && !url.trimmed().isEmpty()) CompareWith(url.trimmed());
  });
  compare_url->setObjectName("compare_url");
  compare->setToolTip(
      "Compare this checkpoint with another tensor by tensor: names, dtypes, shapes and every "
      "byte");
  tools->addSeparator();
  tools->addAction("Copy Tensor List as Text", this, [this] {
    QApplication::clipboard()->setText(QString::fromStdString(tree_model->Dump()));
  });

  QMenu* view = menuBar()->addMenu("&View");
  QAction* find = view->addAction("&Find Tensor", this, [this] {
    filter_edit->setFocus();
    filter_edit->selectAll();
  });
  find->setShortcut(QKeySequence::Find);
  QAction* flat = view->addAction("&Flat List", this, [this] { flat_check->toggle(); });
  flat->setShortcut(QKeySequence("Ctrl+Shift+L"));  // Ctrl+L is Open URL
  view->addSeparator();
  for (QDockWidget* d : findChildren<QDockWidget*>()) view->addAction(d->toggleViewAction());
  view->addSeparator();
  view->addAction("Reset Layout", this, [this] { restoreState(default_state_); });

  QMenu* help = menuBar()->addMenu("&Help");
  help->addAction("&About", this, [this] {
    QMessageBox::about(
        this, "safeshard inspector",
        "<b>safeshard inspector</b><p>Which shard holds which slice of which tensor, whether a "
        "checkpoint is complete, and its consolidation and key remapping.</p>");
  });
}

void MainWindow::ShowBanner(const QString& html, bool error) {
  if (html.isEmpty()) {
    banner_->hide();
    return;
  }
  banner_->setText(html);
  banner_->setStyleSheet(
      error ? "background: #fde8e8; color: #8a1111; border-bottom: 1px solid #e0a0a0;"
            : "background: #fff6dc; color: #5c4400; border-bottom: 1px solid #e6d090;");
  banner_->show();
}

QString MainWindow::banner_text() const {
  return banner_->isVisible() ? banner_->text() : QString();
}
QString MainWindow::summary_text() const {
  return summary_->text();
}

QString MainWindow::compare_summary() const {
  return diff_summary->text();
}

void MainWindow::CompareWith(const QString& other) {
  if (!layout_) {
    ShowBanner("Open a checkpoint first, then compare it with another.", true);
    return;
  }
  if (compare_cancel_) compare_cancel_->store(true);  // a newer comparison replaces an older one
  const int generation = ++compare_generation_;
  comparing_ = true;
  compare_cancel_ = std::make_shared<std::atomic<bool>>(false);
  diff_model_->SetReport(nullptr);
  diff_summary->setText(QString("Comparing with %1…").arg(other.toHtmlEscaped()));
  diff_dock_->show();
  diff_dock_->raise();
  struct Compared {
    absl::Status status;
    std::shared_ptr<const DiffReport> report;
    std::string b_desc;
    double seconds = 0;
  };
  auto* watcher = new QFutureWatcher<Compared>(this);
  connect(watcher, &QFutureWatcher<Compared>::finished, this, [this, watcher, generation, other] {
    watcher->deleteLater();
    if (generation != compare_generation_) return;  // replaced, or the open checkpoint changed
    comparing_ = false;
    Compared r = watcher->result();
    if (!r.status.ok()) {
      diff_summary->setText(
          QString("<b>Cannot compare with %1</b>: %2")
              .arg(other.toHtmlEscaped(),
                   QString::fromStdString(std::string(r.status.message())).toHtmlEscaped()));
    } else {
      const DiffReport& d = *r.report;
      const QString verdict =
          d.identical_all() ? QString("<span style='color:#1b5e20'><b>identical</b></span>")
                            : QString("<span style='color:#b00020'><b>%1 difference(s)</b></span>")
                                  .arg(d.diffs.size());
      diff_summary->setText(
          QString("A (open) vs B %1: %2 · %3 tensors in both, %4 identical · %5 compared in %6 s")
              .arg(QString::fromStdString(r.b_desc).toHtmlEscaped(), verdict)
              .arg(d.in_both)
              .arg(d.identical)
              .arg(HumanBytes(d.bytes_compared))
              .arg(r.seconds, 0, 'f', 2));
      diff_model_->SetReport(r.report);
      diff_view->resizeColumnsToContents();
    }
    emit compareFinished();
  });
  std::shared_ptr<FileSystem> fs_a = current_fs_;
  std::shared_ptr<const CheckpointLayout> a = layout_;
  FileSystem* local = fs_;
  std::shared_ptr<std::atomic<bool>> cancel = compare_cancel_;
  watcher->setFuture(QtConcurrent::run([fs_a, a, local, other, cancel]() {
    Compared r;
    QElapsedTimer clock;
    clock.start();
    absl::StatusOr<Scanned> b = ResolveAndScan(local, other);
    if (!b.ok()) {
      r.status = b.status();
      return r;
    }
    const CheckpointLayout& lb = b->layout;
    r.b_desc = absl::StrCat(lb.root(), " (", CheckpointKindName(lb.kind()), ", ", lb.files().size(),
                            " files)");
    DiffOptions o;
    o.cancel = cancel.get();
    absl::StatusOr<DiffReport> d = DiffCheckpoints(*fs_a, *a, *b->fs, lb, o);
    if (!d.ok()) {
      r.status = d.status();
      return r;
    }
    r.report = std::make_shared<const DiffReport>(std::move(*d));
    r.seconds = clock.elapsed() / 1000.0;
    return r;
  }));
}

void MainWindow::OpenPath(const QString& path) {
  const int generation = ++generation_;
  loading_ = true;
  busy_->show();
  summary_->setText(QString("Opening %1…").arg(path));
  FileSystem* fs = fs_;
  const bool flat = flat_check->isChecked();
  auto* watcher = new QFutureWatcher<Loaded>(this);
  connect(watcher, &QFutureWatcher<Loaded>::finished, this, [this, watcher, generation, path] {
    watcher->deleteLater();
    if (generation != generation_) return;  // the user opened something else meanwhile
    loading_ = false;
    busy_->hide();
    Loaded r = watcher->result();
    if (!r.status.ok()) {
      const QString msg = QString::fromStdString(std::string(r.status.message()));
      ShowBanner(
          QString("<b>Cannot open %1</b>: %2").arg(path.toHtmlEscaped(), msg.toHtmlEscaped()),
          true);
      summary_->setText(layout_ ? summary_->text() : QString("Nothing open."));
      emit loadFailed(msg);
      return;
    }
    path_ = path;
    AddRecent(path);
    Install(std::move(r.fs), std::move(r.layout), std::move(r.prepared), r.seconds);
    emit layoutLoaded();
  });
  watcher->setFuture(QtConcurrent::run([fs, path, flat]() {
    Loaded r;
    QElapsedTimer clock;
    clock.start();
    absl::StatusOr<Scanned> ck = ResolveAndScan(fs, path);
    if (!ck.ok()) {
      r.status = ck.status();
      return r;
    }
    r.fs = std::move(ck->fs);
    r.layout = std::make_shared<const CheckpointLayout>(std::move(ck->layout));
    r.prepared = TensorTreeModel::Prepare(r.layout, flat);
    r.seconds = clock.elapsed() / 1000.0;
    return r;
  }));
}

void MainWindow::Install(std::shared_ptr<FileSystem> fs,
                         std::shared_ptr<const CheckpointLayout> layout,
                         std::shared_ptr<TensorTreeModel::Prepared> prepared, double seconds) {
  selected_ = nullptr;
  chunk_model_->SetTensor(nullptr, nullptr);
  shard_map->SetTensor(nullptr, nullptr);
  values->SetTensor(nullptr, nullptr, nullptr);
  // A comparison belongs to the checkpoint it was made from.
  if (compare_cancel_) compare_cancel_->store(true);
  ++compare_generation_;
  comparing_ = false;
  diff_model_->SetReport(nullptr);
  diff_summary->setText("Tools → Compare With… compares this checkpoint with another, every byte.");
  current_fs_ = std::move(fs);
  layout_ = std::move(layout);
  tree_model->SetPrepared(std::move(prepared));
  {
    // Files: a count, or in a checkpoint of several files the name of the one holding a tensor
    // (wide enough for the longest name, up to 320 px).
    const QFontMetrics fm(tree_view->font());
    int files_w = fm.horizontalAdvance("Files") + 16;
    bool chunked = false;  // some tensor in several chunks (else the Chunks column is all 1s)
    for (const TensorLayout& t : layout_->tensors()) {
      if (t.chunks.size() > 1) {
        chunked = true;
        break;
      }
    }
    if (layout_->files().size() > 1) {
      for (size_t f = 0; f < layout_->files().size(); ++f) {
        files_w = std::max(files_w,
                           fm.horizontalAdvance(tree_model->FileLabel(static_cast<int>(f))) + 16);
      }
    }
    tree_view->header()->resizeSection(TensorTreeModel::kFiles, std::min(files_w, 320));
    tree_view->header()->setSectionHidden(TensorTreeModel::kChunks, !chunked);
  }
  {
    // The name column: what the other columns leave, but never less than a readable 260 px
    // (the view scrolls sideways then); the user may resize it.
    int others = 0;
    for (int c = 1; c < TensorTreeModel::kColumnCount; ++c)
      others += tree_view->header()->sectionSize(c);
    tree_view->header()->resizeSection(TensorTreeModel::kName,
                                       std::max(260, tree_view->viewport()->width() - others));
  }
  file_model_->SetLayout(layout_);
  problems_model_->SetLayout(layout_);
  heat_map->SetLayout(layout_);
  byte_map->SetLayout(layout_);
  byte_map->SetSelectedTensor(-1);
  files_view->resizeColumnToContents(FileModel::kName);
  problems_view->resizeColumnsToContents();
  // DType choices and totals.
  std::map<std::string, std::pair<uint64_t, uint64_t>> per_dtype;  // bytes, tensors
  for (const TensorLayout& t : layout_->tensors()) {
    auto& [bytes, n] = per_dtype[std::string(DTypeName(t.dtype))];
    bytes += t.bytes();
    ++n;
  }
  {
    QSignalBlocker block(dtype_filter);
    const QString keep = dtype_filter->currentData().toString();
    dtype_filter->clear();
    dtype_filter->addItem("All dtypes", "");
    for (const auto& [name, v] : per_dtype) {
      dtype_filter->addItem(QString("%1 (%2)").arg(QString::fromStdString(name)).arg(v.second),
                            QString::fromStdString(name));
    }
    const int i = dtype_filter->findData(keep);
    dtype_filter->setCurrentIndex(i < 0 ? 0 : i);
  }
  UpdateFilter();
  QStringList totals;
  for (const auto& [name, v] : per_dtype)
    totals << QString("%1 %2").arg(QString::fromStdString(name), HumanBytes(v.first));
  const size_t problems = layout_->problems().size();
  QString kind = QString::fromUtf8(CheckpointKindName(layout_->kind()).data());
  if (layout_->rank_count() > 0) kind += QString(", %1 ranks").arg(layout_->rank_count());
  summary_->setText(
      QString("%1 · %2 files · %3 tensors · %4 · %5 · opened in %6 ms")
          .arg(kind)
          .arg(layout_->files().size())
          .arg(layout_->tensors().size())
          .arg(totals.join(" · "))
          .arg(
              problems
                  ? QString("<span style='color:#b00020'><b>%1 problem(s)</b></span>").arg(problems)
              : layout_->completeness().proven
                  ? QString("<span style='color:#2e7d32'>consistent, complete</span>")
                  : QString("<span style='color:#2e7d32'>consistent</span> · "
                            "<span style='color:#8a5a00'>completeness unproven</span>"))
          .arg(static_cast<int>(seconds * 1000)));
  summary_->setTextFormat(Qt::RichText);
  // What proves the checkpoint complete, or why nothing does (a lost highest rank leaves no
  // trace in the other ranks' headers).
  const Completeness& comp = layout_->completeness();
  summary_->setToolTip(comp.proven ? QString("Complete: proven by %1")
                                         .arg(QString::fromStdString(absl::StrJoin(comp.by, ", ")))
                                   : QString::fromStdString(comp.unproven));
  if (problems) {
    ShowBanner(QString("<b>%1 problem(s)</b> in %2 — the first: %3. See the Problems panel; "
                       "tensors with problems are marked in the tree.")
                   .arg(problems)
                   .arg(QString::fromStdString(layout_->root()).toHtmlEscaped(),
                        QString::fromStdString(layout_->problems()[0].ToString()).toHtmlEscaped()),
               false);
  } else {
    ShowBanner({}, false);
  }
  setWindowTitle(QString("%1 — safeshard inspector").arg(path_));
  // Something to look at at once: the first tensor with a problem, else the first tensor.
  if (!layout_->tensors().empty()) {
    std::string pick = layout_->tensors()[0].name;
    for (const Problem& p : layout_->problems()) {
      if (!p.tensor.empty() && layout_->FindTensor(p.tensor) != nullptr) {
        pick = p.tensor;
        break;
      }
    }
    SelectTensor(QString::fromStdString(pick));
  }
}

void MainWindow::UpdateFilter() {
  filter_timer_->stop();
  QRegularExpression re(filter_edit->text(), QRegularExpression::CaseInsensitiveOption);
  if (!re.isValid()) {
    filter_edit->setStyleSheet("QLineEdit { border: 1px solid #d32f2f; }");
    filter_edit->setToolTip("Invalid regular expression: " + re.errorString());
    return;  // keep the last valid filter
  }
  filter_edit->setStyleSheet({});
  filter_edit->setToolTip(
      "Regular expression matched anywhere in the full tensor name, case-insensitive (Ctrl+F)");
  tree_proxy->SetCriteria(re, dtype_filter->currentData().toString(), problems_only->isChecked());
  // Filtering shows matches with their groups open; unfiltered, the top level is open.
  if (tree_proxy->active() && tree_proxy->rowCount() > 0) {
    if (VisibleRowsBelow(*tree_proxy, {}, kMaxAutoExpandRows) < kMaxAutoExpandRows)
      tree_view->expandAll();
  } else if (!tree_model->flat()) {
    ExpandSmallTopLevel();
  }
}

void MainWindow::ExpandSmallTopLevel() {
  // Open the top-level groups, except huge ones (laying out 100k rows would stall the window).
  for (int r = 0; r < tree_proxy->rowCount(); ++r) {
    const QModelIndex i = tree_proxy->index(r, 0);
    if (tree_proxy->rowCount(i) <= kMaxAutoExpandRows) tree_view->expand(i);
  }
}

bool MainWindow::SelectTensor(const QString& name) {
  QModelIndex src = tree_model->IndexOfTensor(name.toStdString());
  if (!src.isValid()) return false;
  QModelIndex idx = tree_proxy->mapFromSource(src);
  if (!idx.isValid()) {  // filtered out: clear the filters
    filter_edit->clear();
    dtype_filter->setCurrentIndex(0);
    problems_only->setChecked(false);
    idx = tree_proxy->mapFromSource(src);
  }
  tree_view->setCurrentIndex(idx);
  tree_view->scrollTo(idx);
  return selected_ != nullptr && selected_->name == name.toStdString();
}

void MainWindow::OnTensorChanged() {
  const QModelIndex cur = tree_view->currentIndex();
  const QString name =
      cur.isValid() ? cur.siblingAtColumn(0).data(TensorTreeModel::kTensorNameRole).toString()
                    : QString();
  const TensorLayout* t =
      layout_ && !name.isEmpty() ? layout_->FindTensor(name.toStdString()) : nullptr;
  if (t == selected_) return;
  selected_ = t;
  chunk_model_->SetTensor(layout_, t);
  shard_map->SetTensor(layout_, t);
  byte_map->SetSelectedTensor(t ? static_cast<int>(t - layout_->tensors().data()) : -1);
  UpdateDimCombos();
  values->SetTensor(current_fs_, layout_, t);
  chunk_view->resizeColumnsToContents();
  if (t) emit tensorSelected(name);
}

void MainWindow::UpdateDimCombos() {
  QSignalBlocker a(row_dim_combo), b(col_dim_combo);
  row_dim_combo->clear();
  col_dim_combo->clear();
  row_dim_combo->addItem("(none)", -1);
  col_dim_combo->addItem("(none)", -1);
  if (selected_) {
    for (size_t d = 0; d < selected_->shape.size(); ++d) {
      const QString label =
          QString("dim %1 (%2)").arg(d).arg(static_cast<qulonglong>(selected_->shape[d]));
      row_dim_combo->addItem(label, static_cast<int>(d));
      col_dim_combo->addItem(label, static_cast<int>(d));
    }
    if (selected_->shape.size() >= 3)
      col_dim_combo->addItem("the rest, flattened", ShardMapWidget::kRest);
  }
  row_dim_combo->setCurrentIndex(row_dim_combo->findData(shard_map->row_dim()));
  col_dim_combo->setCurrentIndex(col_dim_combo->findData(shard_map->col_dim()));
  row_dim_combo->setEnabled(selected_ && selected_->shape.size() >= 2);
  col_dim_combo->setEnabled(selected_ && selected_->shape.size() >= 2);
}

void MainWindow::OnChunkClicked(int chunk) {
  if (!selected_ || chunk < 0 || chunk >= static_cast<int>(selected_->chunks.size())) return;
  shard_map->SelectChunk(chunk);
  chunk_view->selectRow(chunk);
  SelectFile(selected_->chunks[chunk].file);
}

void MainWindow::SelectFile(int file) {
  if (!layout_ || file < 0 || file >= static_cast<int>(layout_->files().size())) return;
  files_view->selectRow(file);
  files_view->scrollTo(file_model_->index(file, 0));
  byte_map->SetSelectedFile(file);
  if (auto* scroll = qobject_cast<QScrollArea*>(byte_map->parentWidget()->parentWidget())) {
    scroll->ensureVisible(0, static_cast<int>(byte_map->RowRect(file).center().y()), 0, 40);
  }
}

template <typename Dialog>
Dialog* MainWindow::OpenToolDialog() {
  if (!layout_) {
    ShowBanner("Open a checkpoint first.", true);
    return nullptr;
  }
  auto* d = new Dialog(layout_, current_fs_, this);
  d->setAttribute(Qt::WA_DeleteOnClose);
  d->open();
  return d;
}

ConsolidateDialog* MainWindow::OpenConsolidateDialog() {
  ConsolidateDialog* d = OpenToolDialog<ConsolidateDialog>();
  if (d != nullptr) {
    connect(d, &ConsolidateDialog::consolidated, this, [this, d](const QString& out) {
      OpenPath(out);
      d->close();
    });
  }
  return d;
}

RemapDialog* MainWindow::OpenRemapDialog() {
  RemapDialog* d = OpenToolDialog<RemapDialog>();
  if (d != nullptr) connect(d, &RemapDialog::remapped, this, &MainWindow::OpenPath);
  return d;
}

QStringList MainWindow::recent_paths() const {
  return settings_->value("recent").toStringList();
}

void MainWindow::AddRecent(const QString& path) {
  QStringList r = recent_paths();
  r.removeAll(path);
  r.prepend(path);
  while (r.size() > kMaxRecent) r.removeLast();
  settings_->setValue("recent", r);
  RebuildRecentMenu();
}

void MainWindow::RebuildRecentMenu() {
  recent_menu_->clear();
  const QStringList r = recent_paths();
  for (const QString& p : r) recent_menu_->addAction(p, this, [this, p] { OpenPath(p); });
  if (r.isEmpty())
    recent_menu_->addAction("(none)")->setEnabled(false);
  else {
    recent_menu_->addSeparator();
    recent_menu_->addAction("Clear", this, [this] {
      settings_->remove("recent");
      RebuildRecentMenu();
    });
  }
}

void MainWindow::SaveSettings() {
  settings_->setValue("geometry", saveGeometry());
  settings_->setValue("state", saveState());
  settings_->setValue("split", main_split_->saveState());
  settings_->setValue("flat", flat_check->isChecked());
  settings_->setValue("daemon/address", daemon_panel->address_edit->text());
  settings_->setValue("daemon/token_file", daemon_panel->token_file_edit->text());
  settings_->sync();
}

void MainWindow::closeEvent(QCloseEvent* e) {
  SaveSettings();
  QMainWindow::closeEvent(e);
}

void MainWindow::dragEnterEvent(QDragEnterEvent* e) {
  for (const QUrl& u : e->mimeData()->urls()) {
    if (u.isLocalFile()) return e->acceptProposedAction();
  }
}

void MainWindow::dropEvent(QDropEvent* e) {
  for (const QUrl& u : e->mimeData()->urls()) {
    if (u.isLocalFile()) {
      OpenPath(u.toLocalFile());
      e->acceptProposedAction();
      return;
    }
  }
}

}  // namespace safeshard::gui
