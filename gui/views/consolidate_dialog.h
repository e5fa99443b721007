// consolidate_dialog.h: "Consolidate..." — output directory, output files (single file, max shard
// size, like a reference model), threads, dtype policy; runs in the background with a progress
// bar, rate, ETA and Cancel; emits consolidated(dir) when the result is published.
#ifndef SAFESHARD_GUI_VIEWS_CONSOLIDATE_DIALOG_H_
#define SAFESHARD_GUI_VIEWS_CONSOLIDATE_DIALOG_H_

#include <QDialog>
#include <QElapsedTimer>
#include <atomic>
#include <memory>

#include "core/io/filesystem.h"
#include "core/layout/layout.h"

class QCheckBox;
class QComboBox;
class QLabel;
class QLineEdit;
class QProgressBar;
class QPushButton;
class QRadioButton;
class QSpinBox;
class QTimer;

namespace safeshard::gui {

class ConsolidateDialog : public QDialog {
  Q_OBJECT

 public:
  // `fs` holds the layout's files; outputs are written to local directories.
  ConsolidateDialog(std::shared_ptr<const CheckpointLayout> layout, std::shared_ptr<FileSystem> fs,
                    QWidget* parent = nullptr);
  ~ConsolidateDialog() override;

  // Starts consolidating with the current choices; invalid choices are shown in the dialog.
  void Start();
  void CancelRun();
  bool running() const { return running_ != nullptr; }
  QString error_text() const;
  QString status_text() const;

  // The controls (tests drive them like a user would).
  QLineEdit* output_edit;
  QRadioButton* single_radio;
  QRadioButton* max_size_radio;
  QLineEdit* max_size_edit;
  QRadioButton* reference_radio;
  QLineEdit* reference_edit;
  QSpinBox* threads_spin;
  QComboBox* dtype_combo;
  QComboBox* dequantize_combo;  // enabled when the checkpoint has quantized weights
  QCheckBox* verify_check;
  QCheckBox* overwrite_check;
  QProgressBar* progress_bar;
  QPushButton* start_button;
  QPushButton* cancel_button;

 signals:
  void consolidated(const QString& output_dir);
  void runFinished(bool ok);

 protected:
  void closeEvent(QCloseEvent* e) override;
  void reject() override;

 private:
  struct Run;
  void Tick();
  void SetRunning(bool on);
  std::shared_ptr<const CheckpointLayout> layout_;
  std::shared_ptr<FileSystem> fs_;
  std::shared_ptr<Run> running_;
  QLabel* summary_;
  QLabel* status_;
  QLabel* error_;
  QTimer* timer_;
  bool close_when_done_ = false;
};

}  // namespace safeshard::gui

#endif  // SAFESHARD_GUI_VIEWS_CONSOLIDATE_DIALOG_H_
