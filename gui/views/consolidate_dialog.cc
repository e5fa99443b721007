#include "gui/views/consolidate_dialog.h"

#include <QCheckBox>
#include <QCloseEvent>
#include <QComboBox>
#include <QDialogButtonBox>
#include <QDir>
#include <QFileDialog>
#include <QFormLayout>
#include <QFutureWatcher>
#include <QGroupBox>
#include <QHBoxLayout>
#include <QLabel>
#include <QLineEdit>
#include <QProgressBar>
#include <QPushButton>
#include <QRadioButton>
#include <QSpinBox>
#include <QThread>
#include <QTimer>
#include <QVBoxLayout>
#include <QtConcurrent/QtConcurrent>

#include "core/consolidate/consolidate.h"
#include "core/consolidate/spec.h"
#include "core/io/url.h"
#include "gui/views/format_util.h"

namespace safeshard::gui {

struct ConsolidateDialog::Run {
  std::atomic<bool> cancel{false};
  std::atomic<uint64_t> done{0}, total{0};
  QElapsedTimer clock;
  std::string output;
};
using ResultWatcher = QFutureWatcher<absl::StatusOr<ConsolidateResult>>;

namespace {
QWidget* WithBrowse(QLineEdit* edit, QWidget* parent, bool directory, const QString& title) {
  auto* w = new QWidget(parent);
  auto* l = new QHBoxLayout(w);
  l->setContentsMargins(0, 0, 0, 0);
  auto* b = new QPushButton("Browse…", w);
  l->addWidget(edit, 1);
  l->addWidget(b);
  QObject::connect(b, &QPushButton::clicked, w, [edit, parent, directory, title] {
    QString p = directory ? QFileDialog::getExistingDirectory(parent, title, edit->text())
                          : QFileDialog::getOpenFileName(parent, title, edit->text());
    if (!p.isEmpty()) edit->setText(p);
  });
  return w;
}
}  // namespace

ConsolidateDialog::ConsolidateDialog(std::shared_ptr<const CheckpointLayout> layout,
                                     std::shared_ptr<FileSystem> fs, QWidget* parent)
    : QDialog(parent), layout_(std::move(layout)), fs_(fs) {
  setWindowTitle("Consolidate checkpoint");
  auto* l = new QVBoxLayout(this);
  const QString root = QString::fromStdString(layout_->root());
  const bool remote = !UrlScheme(layout_->root()).empty();
  summary_ = new QLabel(
      QString("<b>%1</b><br>%2 · %3 files · %4 tensors · %5")
          .arg(root.toHtmlEscaped(), QString::fromUtf8(CheckpointKindName(layout_->kind()).data()))
          .arg(layout_->files().size())
          .arg(layout_->tensors().size())
          .arg(HumanBytes(layout_->total_tensor_bytes())),
      this);
  summary_->setWordWrap(true);
  l->addWidget(summary_);

  auto* form = new QFormLayout;
  output_edit = new QLineEdit(
      remote ? QDir::homePath() + "/" + QString::fromStdString(BaseName(layout_->root())) + "-hf"
             : root + "-hf",
      this);
  output_edit->setToolTip(
      "A new directory; model-0000i-of-0000N.safetensors and the index json are published there");
  form->addRow("Output directory:", WithBrowse(output_edit, this, true, "Output directory"));
  l->addLayout(form);

  auto* files = new QGroupBox("Output files", this);
  auto* fl = new QFormLayout(files);
  single_radio =
      new QRadioButton("One file (model-00001-of-00001.safetensors + index json)", files);
  single_radio->setToolTip(
      "Named as PyTorch's consolidator names it; transformers loads it like model.safetensors. The "
      "index json is published last: its presence is what tells readers, verify and safeshardd "
      "that the output is complete.");
  max_size_radio = new QRadioButton("At most", files);
  max_size_edit = new QLineEdit("5GB", files);
  max_size_edit->setToolTip(
      "Like save_pretrained(max_shard_size=...), with a unit: 5GB = 5*10^9 bytes, 500MiB = "
      "500*2^20 bytes, 123B = 123 bytes");
  reference_radio = new QRadioButton("Like the reference model", files);
  reference_edit = new QLineEdit(files);
  reference_edit->setPlaceholderText(
      "HF model directory whose index json or files give the mapping");
  single_radio->setChecked(true);
  fl->addRow(single_radio);
  fl->addRow(max_size_radio, max_size_edit);
  fl->addRow(reference_radio, WithBrowse(reference_edit, this, true, "Reference model"));
  l->addWidget(files);

  auto* opts = new QFormLayout;
  threads_spin = new QSpinBox(this);
  threads_spin->setRange(0, 256);
  threads_spin->setSpecialValueText("automatic");
  threads_spin->setValue(0);
  dtype_combo = new QComboBox(this);
  dtype_combo->addItem("Keep the stored dtypes", "");
  dtype_combo->addItem("Cast floating point to BF16", "BF16");
  dtype_combo->addItem("Cast floating point to F16", "F16");
  dtype_combo->addItem("Cast floating point to F32", "F32");
  dtype_combo->addItem("Restore the reference model's dtypes", "reference");
  dtype_combo->setToolTip("Casts round to nearest even; FP8 and integer tensors are never cast");
  dequantize_combo = new QComboBox(this);
  dequantize_combo->addItem("Keep them as stored (codes and scales)", "");
  dequantize_combo->addItem("Dequantize to BF16", "bf16");
  dequantize_combo->addItem("Dequantize to F16", "f16");
  dequantize_combo->addItem("Dequantize to F32", "f32");
  const size_t n_quant = layout_->quantized().size();
  dequantize_combo->setEnabled(n_quant > 0);
  dequantize_combo->setToolTip(
      n_quant > 0
          ? QString("%1 block-quantized weight%2 (%3): dequantizing writes each as one plain "
                    "tensor, drops the scales and removes quantization_config from config.json")
                .arg(n_quant)
                .arg(n_quant == 1 ? "" : "s")
                .arg(QString::fromStdString(layout_->quantized()[0].Describe()))
          : QString("No block-quantized weights (FP8 + _scale_inv, MXFP4 _blocks + _scales)"));
  verify_check = new QCheckBox("Verify the output after writing (reads it back)", this);
  overwrite_check = new QCheckBox("Replace an existing result in the output directory", this);
  opts->addRow("Threads:", threads_spin);
  opts->addRow("DTypes:", dtype_combo);
  opts->addRow("Quantized weights:", dequantize_combo);
  opts->addRow(verify_check);
  opts->addRow(overwrite_check);
  l->addLayout(opts);

  progress_bar = new QProgressBar(this);
  progress_bar->setRange(0, 1000);
  progress_bar->setValue(0);
  progress_bar->setFormat("%p%");
  status_ = new QLabel(this);
  error_ = new QLabel(this);
  error_->setWordWrap(true);
  error_->setTextInteractionFlags(Qt::TextSelectableByMouse);
  error_->setStyleSheet("color: #b00020;");
  l->addWidget(progress_bar);
  l->addWidget(status_);
  l->addWidget(error_);

  auto* buttons = new QDialogButtonBox(this);
  start_button = buttons->addButton("Consolidate", QDialogButtonBox::AcceptRole);
  cancel_button = buttons->addButton(QDialogButtonBox::Cancel);
  start_button->setDefault(true);
  l->addWidget(buttons);
  connect(start_button, &QPushButton::clicked, this, &ConsolidateDialog::Start);
  connect(cancel_button, &QPushButton::clicked, this, [this] {
    if (running_)
      CancelRun();
    else
      QDialog::reject();
  });
  timer_ = new QTimer(this);
  timer_->setInterval(100);
  connect(timer_, &QTimer::timeout, this, &ConsolidateDialog::Tick);
  if (!layout_->problems().empty()) {
    error_->setText(
        QString("This checkpoint has %1 problem(s); consolidation will refuse gaps, overlaps and "
                "dtype disagreements before writing anything.")
            .arg(layout_->problems().size()));
  }
}

ConsolidateDialog::~ConsolidateDialog() {
  if (running_) running_->cancel = true;
}

QString ConsolidateDialog::error_text() const {
  return error_->text();
}
QString ConsolidateDialog::status_text() const {
  return status_->text();
}

void ConsolidateDialog::SetRunning(bool on) {
  for (QWidget* w : std::initializer_list<QWidget*>{output_edit, single_radio, max_size_radio,
                                                    max_size_edit, reference_radio, reference_edit,
                                                    threads_spin, dtype_combo, dequantize_combo,
                                                    verify_check, overwrite_check, start_button}) {
    w->setEnabled(!on);
  }
  if (!on) dequantize_combo->setEnabled(!layout_->quantized().empty());
  cancel_button->setText(on ? "Cancel" : "Close");
  if (on)
    timer_->start();
  else
    timer_->stop();
}

void ConsolidateDialog::Start() {
  if (running_) return;
  error_->clear();
  const std::string output = output_edit->text().trimmed().toStdString();
  if (output.empty()) return error_->setText("Choose an output directory.");
  // The same typed spec the CLI and safeshardd build, validated and resolved in one place.
  ConsolidateSpec spec;
  spec.threads = threads_spin->value();
  spec.verify = verify_check->isChecked();
  spec.overwrite = overwrite_check->isChecked();
  if (max_size_radio->isChecked()) {
    spec.max_shard_size = max_size_edit->text().trimmed().toStdString();
  } else if (reference_radio->isChecked()) {
    spec.reference = reference_edit->text().trimmed().toStdString();
    if (spec.reference.empty()) return error_->setText("Choose the reference model directory.");
    spec.unmapped = "own-file";
  }
  const QString dtype = dtype_combo->currentData().toString();
  if (dtype == "reference") {
    if (!reference_radio->isChecked()) {
      return error_->setText(
          "Restoring dtypes reads them from the reference model: choose "
          "\"Like the reference model\" and its directory.");
    }
    spec.restore_dtypes = true;
  } else if (!dtype.isEmpty()) {
    spec.cast_dtype = dtype.toStdString();
  }
  spec.dequantize = dequantize_combo->currentData().toString().toStdString();
  absl::StatusOr<std::unique_ptr<ResolvedConsolidation>> resolved =
      ResolveConsolidateSpec(LocalFileSystem(), spec);
  if (!resolved.ok())
    return error_->setText(QString::fromStdString(std::string(resolved.status().message())));
  ConsolidateOptions o = (*resolved)->options;
  const std::vector<std::string> warnings = (*resolved)->warnings;
  auto run = std::make_shared<Run>();
  run->output = output;
  run->total = layout_->total_tensor_bytes();
  run->clock.start();
  o.cancel = &run->cancel;
  if (!UrlScheme(layout_->root()).empty())
    o.output_fs = &LocalFileSystem();  // remote input, local output
  o.progress = [run](uint64_t done, uint64_t total) {
    run->done = done;
    run->total = total;
  };
  running_ = run;
  progress_bar->setValue(0);
  status_->setText("Planning…");
  SetRunning(true);
  auto* watcher = new ResultWatcher(this);
  connect(watcher, &ResultWatcher::finished, this, [this, watcher, run, warnings] {
    watcher->deleteLater();
    absl::StatusOr<ConsolidateResult> r = watcher->result();
    running_ = nullptr;
    SetRunning(false);
    if (r.ok()) {
      progress_bar->setValue(progress_bar->maximum());
      QString text = QString("Published %1 file(s), %2, in %3.")
                         .arg(r->files.size())
                         .arg(HumanBytes(r->bytes), HumanDuration(r->seconds));
      if (r->verify) text += QString(" Verified %1.").arg(HumanBytes(r->verify->bytes_checked));
      std::vector<std::string> all = warnings;
      all.insert(all.end(), r->warnings.begin(), r->warnings.end());
      for (const std::string& w : all) text += "\n" + QString::fromStdString(w);
      status_->setText(text);
      emit runFinished(true);
      emit consolidated(QString::fromStdString(r->output_dir));
      if (close_when_done_) close();
    } else if (absl::IsCancelled(r.status())) {
      status_->setText("Cancelled: nothing was published (temporary files were removed).");
      emit runFinished(false);
      if (close_when_done_) close();
    } else {
      status_->clear();
      error_->setText(QString::fromStdString(std::string(r.status().message())));
      emit runFinished(false);
    }
  });
  std::shared_ptr<FileSystem> fs = fs_;
  std::shared_ptr<const CheckpointLayout> layout = layout_;
  watcher->setFuture(QtConcurrent::run(
      [fs, layout, output, o, run]() { return Consolidate(*fs, layout->root(), output, o); }));
}

void ConsolidateDialog::CancelRun() {
  if (!running_) return;
  running_->cancel = true;
  status_->setText("Cancelling…");
  cancel_button->setEnabled(false);
}

void ConsolidateDialog::Tick() {
  if (!running_) return;
  cancel_button->setEnabled(!running_->cancel.load());
  const uint64_t done = running_->done, total = std::max<uint64_t>(1, running_->total);
  progress_bar->setValue(static_cast<int>(1000.0 * done / total));
  const double secs = running_->clock.elapsed() / 1000.0;
  const double rate = secs > 0 ? done / secs : 0;
  if (running_->cancel) return;
  status_->setText(QString("%1 of %2 · %3/s · ETA %4")
                       .arg(HumanBytes(done), HumanBytes(total),
                            HumanBytes(static_cast<uint64_t>(rate)),
                            rate > 0 ? HumanDuration((total - done) / rate) : QString("…")));
}

void ConsolidateDialog::closeEvent(QCloseEvent* e) {
  if (running_) {
    // Closing while running cancels; the dialog closes once nothing is left half-written.
    close_when_done_ = true;
    CancelRun();
    e->ignore();
    return;
  }
  QDialog::closeEvent(e);
}

void ConsolidateDialog::reject() {
  if (running_) {
    close_when_done_ = true;
    CancelRun();
    return;
  }
  QDialog::reject();
}

}  // namespace safeshard::gui
