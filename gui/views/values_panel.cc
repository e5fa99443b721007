#include "gui/views/values_panel.h"

#include <QHelpEvent>
#include <QLabel>
#include <QPainter>
#include <QPushButton>
#include <QToolTip>
#include <QVBoxLayout>
#include <QtConcurrent/QtConcurrent>
#include <algorithm>

#include "gui/views/format_util.h"

namespace safeshard::gui {

struct ValuesPanel::Job {
  std::atomic<bool> cancel{false};
};
using StatsWatcher = QFutureWatcher<absl::StatusOr<TensorStats>>;

HistogramWidget::HistogramWidget(QWidget* parent) : QWidget(parent) {
  setMouseTracking(true);
  setMinimumHeight(120);
}

void HistogramWidget::SetStats(const std::optional<TensorStats>& s) {
  stats_ = s;
  update();
}

QRectF HistogramWidget::Plot() const {
  return QRectF(8, 8, width() - 16, height() - 30);
}

void HistogramWidget::paintEvent(QPaintEvent*) {
  QPainter p(this);
  p.fillRect(rect(), palette().base());
  if (!stats_ || stats_->finite == 0) return;
  const QRectF plot = Plot();
  const auto& h = stats_->histogram;
  const uint64_t peak = std::max<uint64_t>(1, *std::max_element(h.begin(), h.end()));
  const double w = plot.width() / h.size();
  for (size_t i = 0; i < h.size(); ++i) {
    // Square-root scale keeps small bins visible next to a dominant one.
    const double frac = std::sqrt(static_cast<double>(h[i]) / peak);
    const QRectF bar(plot.left() + i * w, plot.bottom() - frac * plot.height(),
                     std::max(1.0, w - 1), frac * plot.height());
    p.fillRect(bar, QColor(0x4e79a7));
  }
  p.setPen(palette().color(QPalette::Text));
  p.drawLine(plot.bottomLeft(), plot.bottomRight());
  p.drawText(QRectF(plot.left(), plot.bottom() + 4, plot.width(), 18), Qt::AlignLeft,
             QString::number(stats_->hist_lo, 'g', 5));
  p.drawText(QRectF(plot.left(), plot.bottom() + 4, plot.width(), 18), Qt::AlignRight,
             QString::number(stats_->hist_hi, 'g', 5));
  p.drawText(QRectF(plot.left(), plot.bottom() + 4, plot.width(), 18), Qt::AlignHCenter,
             "finite values (square-root count scale)");
}

bool HistogramWidget::event(QEvent* e) {
  if (e->type() == QEvent::ToolTip && stats_ && stats_->finite > 0) {
    auto* he = static_cast<QHelpEvent*>(e);
    const QRectF plot = Plot();
    const auto& h = stats_->histogram;
    const int i = static_cast<int>((he->pos().x() - plot.left()) / plot.width() * h.size());
    if (i >= 0 && i < static_cast<int>(h.size())) {
      const double bw = (stats_->hist_hi - stats_->hist_lo) / h.size();
      QToolTip::showText(he->globalPos(),
                         QString("[%1, %2): %3 values")
                             .arg(stats_->hist_lo + i * bw, 0, 'g', 6)
                             .arg(stats_->hist_lo + (i + 1) * bw, 0, 'g', 6)
                             .arg(static_cast<qulonglong>(h[i])),
                         this);
      return true;
    }
  }
  return QWidget::event(e);
}

ValuesPanel::ValuesPanel(StatsFunction stats, QWidget* parent)
    : QWidget(parent), fn_(std::move(stats)) {
  auto* l = new QVBoxLayout(this);
  title_ = new QLabel(this);
  title_->setTextFormat(Qt::RichText);
  table_ = new QLabel(this);
  table_->setTextFormat(Qt::RichText);
  table_->setTextInteractionFlags(Qt::TextSelectableByMouse);
  message_ = new QLabel(this);
  message_->setWordWrap(true);
  compute_ = new QPushButton("Compute statistics", this);
  compute_->setToolTip(
      "Reads every chunk of the tensor (memory stays bounded) and computes its statistics");
  histogram_ = new HistogramWidget(this);
  l->addWidget(title_);
  l->addWidget(table_);
  l->addWidget(histogram_, 1);
  l->addWidget(message_);
  l->addWidget(compute_, 0, Qt::AlignLeft);
  connect(compute_, &QPushButton::clicked, this, &ValuesPanel::Compute);
  SetTensor(nullptr, nullptr, nullptr);
}

ValuesPanel::~ValuesPanel() {
  if (running_) running_->cancel = true;  // the task owns copies of everything it reads
}

QString ValuesPanel::message() const {
  return message_->text();
}

void ValuesPanel::SetTensor(std::shared_ptr<FileSystem> fs,
                            std::shared_ptr<const CheckpointLayout> layout,
                            const TensorLayout* tensor) {
  if (running_) {
    running_->cancel = true;  // its result will be dropped
    running_ = nullptr;
  }
  fs_ = std::move(fs);
  layout_ = std::move(layout);
  tensor_ = tensor;
  stats_.reset();
  compute_->setText("Compute statistics");
  Show();
  if (tensor_ == nullptr) return;
  if (tensor_->bytes() <= kAutoBytes) {
    Compute();
  } else {
    message_->setText(
        QString("%1 of data: press Compute to read it.").arg(HumanBytes(tensor_->bytes())));
  }
}

void ValuesPanel::Compute() {
  if (tensor_ == nullptr || running_ || !fn_ || !fs_) return;
  auto job = std::make_shared<Job>();
  running_ = job;
  message_->setText(QString("Reading %1…").arg(HumanBytes(tensor_->bytes())));
  compute_->setEnabled(false);
  std::shared_ptr<FileSystem> fs = fs_;
  std::shared_ptr<const CheckpointLayout> layout = layout_;
  const TensorLayout* tensor = tensor_;
  StatsFunction fn = fn_;
  auto* watcher = new StatsWatcher(this);
  connect(watcher, &StatsWatcher::finished, this, [this, job, watcher] {
    watcher->deleteLater();
    if (running_ != job) return;  // stale: the user moved on
    running_ = nullptr;
    absl::StatusOr<TensorStats> r = watcher->result();
    compute_->setEnabled(true);
    if (r.ok()) {
      compute_->setText("Recompute");
      stats_ = *r;
      Show();
    } else {
      stats_.reset();
      Show();
      message_->setText(QString::fromStdString(std::string(r.status().message())));
    }
    emit finished();
  });
  watcher->setFuture(
      QtConcurrent::run([fn, fs, layout, tensor, job]() -> absl::StatusOr<TensorStats> {
        return fn(*fs, *layout, *tensor, &job->cancel);
      }));
}

void ValuesPanel::Show() {
  histogram_->SetStats(stats_);
  compute_->setVisible(tensor_ != nullptr);
  compute_->setEnabled(running_ == nullptr);
  if (tensor_ == nullptr) {
    title_->setText("<i>Select a tensor to see its values</i>");
    table_->clear();
    message_->clear();
    return;
  }
  title_->setText(QString("<b>%1</b> &nbsp; %2 %3")
                      .arg(QString::fromStdString(tensor_->name).toHtmlEscaped(),
                           QString::fromUtf8(DTypeName(tensor_->dtype).data()),
                           DimsText(tensor_->shape)));
  if (!stats_) {
    table_->clear();
    return;
  }
  const TensorStats& s = *stats_;
  auto row = [](const QString& k, const QString& v) {
    return QString("<tr><td>%1&nbsp;&nbsp;</td><td align=right>%2</td></tr>").arg(k, v);
  };
  auto num = [](double v) { return QString::number(v, 'g', 7); };
  auto count = [&](uint64_t n) {
    return QString("%1 (%2%)")
        .arg(static_cast<qulonglong>(n))
        .arg(s.elements ? 100.0 * n / s.elements : 0, 0, 'f', 2);
  };
  table_->setText("<table>" +
                  row("elements", QString::number(static_cast<qulonglong>(s.elements))) +
                  row("min", num(s.min)) + row("max", num(s.max)) + row("mean", num(s.mean)) +
                  row("std", num(s.std)) + row("NaN", count(s.nan)) + row("Inf", count(s.inf)) +
                  row("zeros", count(s.zeros)) + "</table>");
  message_->setText(s.note.empty() ? QString("Read %1.").arg(HumanBytes(s.bytes_read))
                                   : QString::fromStdString(s.note));
}

}  // namespace safeshard::gui
