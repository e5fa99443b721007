// safeshard-inspector: browse a checkpoint's shards, check it, consolidate or remap it.
#include <QApplication>
#include <QCommandLineParser>
#include <QDir>
#include <QDockWidget>
#include <QTabWidget>
#include <cstdlib>
#include <cstring>
#include <iostream>

#include "core/util/rlimit.h"
#include "core/util/version.h"
#include "gui/stats/tensor_stats.h"
#include "gui/views/main_window.h"
#include "gui/views/shard_map_widget.h"

namespace {

void Describe(QCommandLineParser& parser, QCommandLineOption& tensor) {
  parser.setApplicationDescription(
      "safeshard-inspector: see which shard holds which slice of which tensor of a safetensors\n"
      "checkpoint (per-rank DCP shards, HF-sharded or single file), check it for gaps and "
      "overlaps,\n"
      "look at tensor values, and consolidate it or remap its keys.");
  parser.addHelpOption();
  parser.addVersionOption();
  parser.addPositionalArgument(
      "path",
      "Checkpoint directory or .safetensors file to open, or a URL: http(s)://... or "
      "hf://ORG/REPO[@REVISION]/PATH (token from $HF_TOKEN or ~/.cache/huggingface/token).",
      "[path]");
  parser.addOption(tensor);
  parser.addOption(QCommandLineOption(
      "screenshot",
      "Open the path, select the tensor (default: the first with a problem, else the one in most "
      "chunks), save the window as a PNG and exit. Works without a display.",
      "file.png"));
  parser.addOption(
      QCommandLineOption("size", "Screenshot: the window's size (default 1500x940).", "WxH"));
  parser.addOption(
      QCommandLineOption("tab", "Screenshot: the tab to show: map (default) or values.", "tab"));
  parser.addOption(QCommandLineOption(
      "dock", "Screenshot: the dock to bring up: files, heatmap, problems, differences or daemon.",
      "name"));
  parser.addOption(QCommandLineOption(
      "dims",
      "Screenshot: the shard map's dimensions as ROW,COL (-1 for none, 'rest' for every "
      "other dimension flattened), instead of the ones it picks.",
      "row,col"));
  parser.addOption(QCommandLineOption(
      "proportional", "Screenshot: the shard map in true proportions instead of schematic."));
}

// The tensor a screenshot shows when none is named.
QString DefaultTensor(const safeshard::CheckpointLayout& ck) {
  const safeshard::TensorLayout* best = nullptr;
  for (const safeshard::TensorLayout& t : ck.tensors()) {
    if (t.has_problem) return QString::fromStdString(t.name);
    if (best == nullptr || t.chunks.size() > best->chunks.size()) best = &t;
  }
  return best ? QString::fromStdString(best->name) : QString();
}

// The screenshot options: tab, dock, shard-map dimensions and proportions. False (with a
// message) for a value that names nothing.
bool Arrange(safeshard::gui::MainWindow& window, const QCommandLineParser& parser) {
  if (parser.isSet("tab")) {
    const QString tab = parser.value("tab");
    if (tab != "map" && tab != "values") {
      std::cerr << "safeshard-inspector: --tab is map or values\n";
      return false;
    }
    window.tabs->setCurrentIndex(tab == "map" ? 0 : 1);
  }
  if (parser.isSet("dock")) {
    bool found = false;
    for (QDockWidget* d : window.findChildren<QDockWidget*>()) {
      if (d->objectName() == parser.value("dock")) {
        d->show();
        d->raise();
        found = true;
      }
    }
    if (!found) {
      std::cerr << "safeshard-inspector: no dock \"" << parser.value("dock").toStdString()
                << "\" (files, heatmap, problems, differences, daemon)\n";
      return false;
    }
  }
  if (parser.isSet("dims")) {
    const QStringList rc = parser.value("dims").split(',');
    auto dim = [](const QString& s, bool* ok) {
      if (s == "rest") {
        *ok = true;
        return safeshard::gui::ShardMapWidget::kRest;
      }
      return s.toInt(ok);
    };
    bool okr = false, okc = false;
    const int r = rc.size() == 2 ? dim(rc[0], &okr) : 0, c = rc.size() == 2 ? dim(rc[1], &okc) : 0;
    if (!okr || !okc) {
      std::cerr << "safeshard-inspector: --dims wants ROW,COL, e.g. 0,1 or 1,rest\n";
      return false;
    }
    window.shard_map->SetDims(r, c);
    if (window.shard_map->row_dim() != r || window.shard_map->col_dim() != c) {
      std::cerr << "safeshard-inspector: --dims " << parser.value("dims").toStdString()
                << " does not fit the selected tensor\n";
      return false;
    }
  }
  if (parser.isSet("proportional")) window.shard_map->SetProportional(true);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  safeshard::RaiseOpenFileLimit();  // 1,000+ rank files
  QCommandLineOption tensor({"t", "tensor"}, "Select this tensor once the checkpoint is open.",
                            "name");
  // --help works without a display.
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "-h") || !std::strcmp(argv[i], "--help") ||
        !std::strcmp(argv[i], "--help-all")) {
      QCommandLineParser parser;
      Describe(parser, tensor);
      std::cout
          << parser.helpText().replace("<executable_name>", "safeshard-inspector").toStdString();
      return 0;
    }
  }
  bool screenshot = false;
  for (int i = 1; i < argc; ++i) screenshot |= !std::strncmp(argv[i], "--screenshot", 12);
  if (screenshot && !std::getenv("QT_QPA_PLATFORM")) setenv("QT_QPA_PLATFORM", "offscreen", 1);
  if (screenshot) {
    // The offscreen platform's notes about itself are noise in scripts; real warnings still show.
    qInstallMessageHandler([](QtMsgType type, const QMessageLogContext&, const QString& msg) {
      if (msg.contains("propagateSizeHints") || msg.contains("XDG_RUNTIME_DIR")) return;
      if (type != QtDebugMsg && type != QtInfoMsg) std::cerr << msg.toStdString() << "\n";
    });
  }
  if (!std::getenv("DISPLAY") && !std::getenv("WAYLAND_DISPLAY") &&
      !std::getenv("QT_QPA_PLATFORM")) {
    std::cerr
        << "safeshard-inspector: no display (DISPLAY and WAYLAND_DISPLAY are unset). Run it in a "
           "desktop "
           "session, over ssh -X, or under xvfb-run; for scripts use the safeshard command.\n";
    return 2;
  }
  QApplication app(argc, argv);
  QApplication::setOrganizationName("safeshard");
  QApplication::setApplicationName("safeshard-inspector");
  QApplication::setApplicationVersion(safeshard::kVersion);
  QCommandLineParser parser;
  Describe(parser, tensor);
  parser.process(app);

  safeshard::FileSystem& fs = safeshard::LocalFileSystem();
  safeshard::gui::InspectorOptions options;
  options.fs = &fs;
  options.stats = [](safeshard::FileSystem& files, const safeshard::CheckpointLayout& layout,
                     const safeshard::TensorLayout& t, const std::atomic<bool>* cancel) {
    safeshard::StatsOptions o;
    o.cancel = cancel;
    return safeshard::ComputeTensorStats(files, layout, t, o);
  };
  const QString shot = parser.value("screenshot");
  if (!shot.isEmpty()) {
    options.settings_file =
        QDir::tempPath() + "/safeshard-inspector-screenshot.ini";  // leave the user's alone
    if (parser.positionalArguments().isEmpty()) {
      std::cerr << "safeshard-inspector: --screenshot needs a checkpoint path\n";
      return 2;
    }
  }
  safeshard::gui::MainWindow window(options);
  window.resize(1500, 940);
  if (parser.isSet("size")) {
    const QStringList wh = parser.value("size").split('x');
    bool okw = false, okh = false;
    const int w = wh.size() == 2 ? wh[0].toInt(&okw) : 0,
              h = wh.size() == 2 ? wh[1].toInt(&okh) : 0;
    if (!okw || !okh || w < 320 || h < 240 || w > 8000 || h > 8000) {
      std::cerr << "safeshard-inspector: --size wants WxH, e.g. 1500x940 (320x240 to 8000x8000)\n";
      return 2;
    }
    window.resize(w, h);
  }
  window.show();
  if (!shot.isEmpty()) {
    const QString select = parser.value(tensor);
    QObject::connect(&window, &safeshard::gui::MainWindow::loadFailed, &app,
                     [](const QString& msg) {
                       std::cerr << "safeshard-inspector: " << msg.toStdString() << "\n";
                       QCoreApplication::exit(1);
                     });
    QObject::connect(
        &window, &safeshard::gui::MainWindow::layoutLoaded, &app,
        [&window, select, shot, parser_for_shot = &parser] {
          const QString name = select.isEmpty() ? DefaultTensor(*window.checkpoint()) : select;
          if (!name.isEmpty() && !window.SelectTensor(name)) {
            std::cerr << "safeshard-inspector: no tensor \"" << name.toStdString() << "\"\n";
            QCoreApplication::exit(1);
            return;
          }
          if (!Arrange(window, *parser_for_shot)) {
            QCoreApplication::exit(2);
            return;
          }
          QCoreApplication::processEvents();
          if (!window.grab().save(shot)) {
            std::cerr << "safeshard-inspector: cannot write " << shot.toStdString() << "\n";
            QCoreApplication::exit(1);
            return;
          }
          std::cout << "wrote " << shot.toStdString() << "\n";
          QCoreApplication::exit(0);
        });
    window.OpenPath(parser.positionalArguments().first());
    return app.exec();
  }
  if (!parser.positionalArguments().isEmpty()) {
    const QString select = parser.value(tensor);
    if (!select.isEmpty()) {
      QObject::connect(&window, &safeshard::gui::MainWindow::layoutLoaded, &window,
                       [&window, select] { window.SelectTensor(select); });
    }
    window.OpenPath(parser.positionalArguments().first());
  }
  return app.exec();
}
