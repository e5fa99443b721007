// safeshard-inspector: browse a checkpoint's shards, check it, consolidate or remap it.
#include <QApplication>
#include <QCommandLineParser>
#include <QTimer>

#include "gui/stats/tensor_stats.h"
#include "gui/views/main_window.h"

int main(int argc, char** argv) {
  QApplication app(argc, argv);
  QApplication::setOrganizationName("safeshard");
  QApplication::setApplicationName("safeshard-inspector");
  QCommandLineParser parser;
  parser.setApplicationDescription(
      "safeshard-inspector: see which shard holds which slice of which tensor of a safetensors\n"
      "checkpoint (per-rank DCP shards, HF-sharded or single file), check it for gaps and overlaps,\n"
      "look at tensor values, and consolidate it or remap its keys.");
  parser.addHelpOption();
  parser.addPositionalArgument("path", "Checkpoint directory or .safetensors file to open.", "[path]");
  QCommandLineOption tensor({"t", "tensor"}, "Select this tensor once the checkpoint is open.", "name");
  parser.addOption(tensor);
  parser.process(app);

  safeshard::FileSystem& fs = safeshard::LocalFileSystem();
  safeshard::gui::InspectorOptions options;
  options.fs = &fs;
  options.stats = [&fs](const safeshard::CheckpointLayout& layout, const safeshard::TensorLayout& t,
                        const std::atomic<bool>* cancel) {
    safeshard::StatsOptions o;
    o.cancel = cancel;
    return safeshard::ComputeTensorStats(fs, layout, t, o);
  };
  safeshard::gui::MainWindow window(options);
  window.show();
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
