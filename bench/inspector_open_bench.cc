// Benchmark: safeshard-inspector opening a generated 100,000-tensor, 64-file checkpoint until the
// tensor tree is populated and painted, as a ratio to the scan alone in the same process; and
// `safeshard inspect --json` as a ratio to `safeshard verify` (the scan as a process) of the same
// checkpoint, all measured in this run. Also reports the longest the GUI thread was busy
// without handling events while opening (the window must not freeze).
//
// Usage: inspector_open_bench SAFESHARD_BINARY [--tensors N] [--files F] [--reps R]
// (runs offscreen unless QT_QPA_PLATFORM says otherwise)
#include <QApplication>
#include <QElapsedTimer>
#include <QLineEdit>
#include <QSignalSpy>
#include <QTimer>
#include <QTreeView>
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "bench/proc_util.h"
#include "core/example/example.h"
#include "core/io/filesystem.h"
#include "core/layout/layout.h"
#include "gui/models/tensor_tree_model.h"
#include "gui/views/main_window.h"

namespace {

using Clock = std::chrono::steady_clock;

}  // namespace

using safeshard::bench::Median;
using safeshard::bench::TimeCommand;

int main(int argc, char** argv) {
  if (std::getenv("QT_QPA_PLATFORM") == nullptr) setenv("QT_QPA_PLATFORM", "offscreen", 1);
  QApplication app(argc, argv);
  if (argc < 2) {
    std::cerr
        << "usage: inspector_open_bench SAFESHARD_BINARY [--tensors N] [--files F] [--reps R]\n";
    return 2;
  }
  const std::string bin = argv[1];
  int tensors = 100000, files = 64, reps = 5;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    const int v = std::atoi(argv[i + 1]);
    if (k == "--tensors") tensors = v;
    if (k == "--files") files = v;
    if (k == "--reps") reps = v;
  }
  char tmpl[] = "/tmp/safeshard-inspector-bench-XXXXXX";
  const std::string base = mkdtemp(tmpl);
  const std::string dir = base + "/ckpt";
  absl::Status s = safeshard::WriteDcpCheckpoint(
      safeshard::LocalFileSystem(), dir, safeshard::ManySmallTensors(tensors), {.ranks = files});
  if (!s.ok()) {
    std::cerr << s << "\n";
    return 1;
  }
  std::cout << absl::StrFormat("checkpoint: %d tensors in %d files (%s)\n", tensors, files, dir);

  std::vector<double> cli, verify, scan, prepare, gui, stall, filter, clear;
  const std::string settings = base + "/inspector.ini";
  for (int r = 0; r < reps; ++r) {
    cli.push_back(TimeCommand(absl::StrFormat("'%s' inspect --json '%s' > /dev/null", bin, dir)));
    // The baselines: the scan alone, as a process (verify) and in this process.
    verify.push_back(TimeCommand(absl::StrFormat("'%s' verify '%s' > /dev/null", bin, dir)));
    {
      auto s0 = Clock::now();
      absl::StatusOr<safeshard::CheckpointLayout> ck =
          safeshard::CheckpointLayout::Scan(safeshard::LocalFileSystem(), dir);
      scan.push_back(std::chrono::duration<double>(Clock::now() - s0).count());
      if (!ck.ok() || static_cast<int>(ck->tensors().size()) != tensors) {
        std::cerr << "the scan returned a wrong result\n";
        return 1;
      }
      // The tree's preparation alone (the inspector does it after the scan, off the GUI thread).
      auto layout = std::make_shared<const safeshard::CheckpointLayout>(std::move(*ck));
      auto p0 = Clock::now();
      auto prepared = safeshard::gui::TensorTreeModel::Prepare(layout, false);
      prepare.push_back(std::chrono::duration<double>(Clock::now() - p0).count());
    }

    safeshard::gui::InspectorOptions o;
    o.settings_file = QString::fromStdString(settings);
    safeshard::gui::MainWindow w(o);
    w.resize(1400, 900);
    w.show();
    QCoreApplication::processEvents();
    // The event loop's longest silence while opening: a 5 ms timer notes every gap.
    QElapsedTimer since;
    double longest = 0;
    QTimer probe;
    probe.setInterval(5);
    QObject::connect(&probe, &QTimer::timeout, [&] {
      longest = std::max(longest, since.nsecsElapsed() / 1e9);
      since.restart();
    });
    QSignalSpy loaded(&w, &safeshard::gui::MainWindow::layoutLoaded);
    auto t0 = Clock::now();
    since.start();
    probe.start();
    w.OpenPath(QString::fromStdString(dir));
    while (loaded.count() == 0) QCoreApplication::processEvents(QEventLoop::WaitForMoreEvents, 50);
    w.tree_view->viewport()->repaint();  // populated and painted
    const double t = std::chrono::duration<double>(Clock::now() - t0).count();
    probe.stop();
    longest = std::max(longest, since.nsecsElapsed() / 1e9);
    if (static_cast<int>(w.checkpoint()->tensors().size()) != tensors ||
        w.tree_model->rowCount() == 0) {
      std::cerr << "the tree is not populated\n";
      return 1;
    }
    gui.push_back(t);
    stall.push_back(longest);
    // Filtering 100k rows: one regex edit and clearing it.
    // (typing is debounced by 250 ms in large checkpoints; the pass itself is what is timed)
    w.filter_edit->setText("blocks\\.9999[0-9]\\.");
    auto f0 = Clock::now();
    w.UpdateFilter();
    QCoreApplication::processEvents();
    filter.push_back(std::chrono::duration<double>(Clock::now() - f0).count());
    w.filter_edit->clear();
    auto c0 = Clock::now();
    w.UpdateFilter();
    QCoreApplication::processEvents();
    clear.push_back(std::chrono::duration<double>(Clock::now() - c0).count());
  }
  const double c = Median(cli), g = Median(gui), v = Median(verify), sc = Median(scan);
  std::cout << absl::StrFormat("safeshard inspect --json : %.3f s (median of %d)\n", c, reps);
  std::cout << absl::StrFormat("safeshard verify         : %.3f s (the scan, as a process)\n", v);
  std::cout << absl::StrFormat("scan in this process     : %.3f s\n", sc);
  std::cout << absl::StrFormat(
      "tree preparation alone   : %.3f s (TensorTreeModel::Prepare, after the scan)\n",
      Median(prepare));
  std::cout << absl::StrFormat("inspector open -> tree   : %.3f s (median of %d)\n", g, reps);
  std::cout << absl::StrFormat(
      "ratios: inspect --json / verify = %.2fx, inspector / scan = %.2fx\n", c / v, g / sc);
  std::cout << std::flush;
  safeshard::bench::Result(absl::StrFormat("`inspect --json`, %d tensors (process)", tensors),
                           absl::StrFormat("%.3f s", c),
                           absl::StrFormat("`safeshard verify` (the scan, a process) %.3f s", v),
                           absl::StrFormat("%.2fx the scan", c / v));
  safeshard::bench::Result(absl::StrFormat("inspector open -> tree, %d tensors", tensors),
                           absl::StrFormat("%.3f s", g),
                           absl::StrFormat("the scan in the same process %.3f s", sc),
                           absl::StrFormat("%.2fx the scan", g / sc));
  std::cout << absl::StrFormat("longest GUI-thread stall while opening: %.0f ms (median)\n",
                               Median(stall) * 1000);
  std::cout << absl::StrFormat("apply a regex filter: %.0f ms, clear it: %.0f ms (medians)\n",
                               Median(filter) * 1000, Median(clear) * 1000);
  std::system(absl::StrFormat("rm -rf '%s'", base).c_str());
  return 0;
}
