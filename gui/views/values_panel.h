// values_panel.h: min/max/mean/std, NaN/Inf/zero counts and a histogram of the selected tensor,
// computed in the background (the statistics function is injected: libtorch in the app, so this
// library stays torch-free). Selecting another tensor cancels the running computation and its
// result, if it still arrives, is dropped.
#ifndef SAFESHARD_GUI_VIEWS_VALUES_PANEL_H_
#define SAFESHARD_GUI_VIEWS_VALUES_PANEL_H_

#include <QFutureWatcher>
#include <QWidget>
#include <atomic>
#include <functional>
#include <memory>
#include <optional>

#include "absl/status/statusor.h"
#include "gui/stats/tensor_stats.h"

class QLabel;
class QPushButton;

namespace safeshard::gui {

using StatsFunction = std::function<absl::StatusOr<TensorStats>(
    FileSystem& fs, const CheckpointLayout& layout, const TensorLayout& tensor,
    const std::atomic<bool>* cancel)>;

class HistogramWidget : public QWidget {
  Q_OBJECT

 public:
  explicit HistogramWidget(QWidget* parent = nullptr);
  void SetStats(const std::optional<TensorStats>& s);
  QSize sizeHint() const override { return {360, 160}; }

 protected:
  void paintEvent(QPaintEvent*) override;
  bool event(QEvent* e) override;

 private:
  QRectF Plot() const;
  std::optional<TensorStats> stats_;
};

class ValuesPanel : public QWidget {
  Q_OBJECT

 public:
  // Tensors up to this many bytes are computed as soon as they are selected; larger ones on click.
  static constexpr uint64_t kAutoBytes = 256ull << 20;

  ValuesPanel(StatsFunction stats, QWidget* parent = nullptr);
  ~ValuesPanel() override;
  // `fs` holds the layout's files (kept alive while statistics run).
  void SetTensor(std::shared_ptr<FileSystem> fs, std::shared_ptr<const CheckpointLayout> layout,
                 const TensorLayout* tensor);
  void Compute();
  bool busy() const { return running_ != nullptr; }
  const std::optional<TensorStats>& stats() const { return stats_; }
  QString message() const;

 signals:
  void finished();  // a result (or error) for the current tensor was shown

 private:
  struct Job;
  void Show();
  StatsFunction fn_;
  std::shared_ptr<FileSystem> fs_;
  std::shared_ptr<const CheckpointLayout> layout_;
  const TensorLayout* tensor_ = nullptr;
  std::shared_ptr<Job> running_;
  std::optional<TensorStats> stats_;
  QLabel* title_;
  QLabel* table_;
  QLabel* message_;
  QPushButton* compute_;
  HistogramWidget* histogram_;
};

}  // namespace safeshard::gui

#endif  // SAFESHARD_GUI_VIEWS_VALUES_PANEL_H_
