// safeshard-inspector: browse a checkpoint's shards, check it, consolidate or remap it.
#include <QApplication>
#include <QCommandLineParser>
#include <QDir>
#include <cstdlib>
#include <cstring>
#include <iostream>

#include "core/util/rlimit.h"
#include "gui/stats/tensor_stats.h"
#include "gui/views/main_window.h"

namespace {

void Describe(QCommandLineParser& parser, QCommandLineOption& tensor) {
  parser.setApplicationDescription(
      "safeshard-inspector: see which shard holds which slice of which tensor of a safetensors\n"
      "checkpoint (per-rank DCP shards, HF-sharded or single file), check it for gaps and "
      "overlaps,\n"
      "look at tensor values, and consolidate it or remap its keys.");
  parser.addHelpOption();
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
  window.show();
  if (!shot.isEmpty()) {
    const QString select = parser.value(tensor);
    QObject::connect(&window, &safeshard::gui::MainWindow::loadFailed, &app,
                     [](const QString& msg) {
                       std::cerr << "safeshard-inspector: " << msg.toStdString() << "\n";
                       QCoreApplication::exit(1);
                     });
    QObject::connect(
        &window, &safeshard::gui::MainWindow::layoutLoaded, &app, [&window, select, shot] {
          const QString name = select.isEmpty() ? DefaultTensor(*window.checkpoint()) : select;
          if (!name.isEmpty() && !window.SelectTensor(name)) {
            std::cerr << "safeshard-inspector: no tensor \"" << name.toStdString() << "\"\n";
            QCoreApplication::exit(1);
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
