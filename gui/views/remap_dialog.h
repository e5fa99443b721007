// remap_dialog.h: "Remap keys..." — ordered regex => replacement rules, a live old -> new
// preview of every key with collisions highlighted, and Apply (refused while any two keys
// collide) which writes a new checkpoint in the background and emits remapped(dir).
#ifndef SAFESHARD_GUI_VIEWS_REMAP_DIALOG_H_
#define SAFESHARD_GUI_VIEWS_REMAP_DIALOG_H_

#include <QDialog>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/io/filesystem.h"
#include "core/layout/layout.h"
#include "gui/models/remap_preview_model.h"

class QLabel;
class QLineEdit;
class QPushButton;
class QTableView;
class QTableWidget;

namespace safeshard::gui {

class RemapDialog : public QDialog {
  Q_OBJECT

 public:
  // `fs` holds the layout's files; outputs are written to local directories.
  RemapDialog(std::shared_ptr<const CheckpointLayout> layout, std::shared_ptr<FileSystem> fs,
              QWidget* parent = nullptr);

  // Replaces the rules in the editor (tests; also "load rules").
  void SetRules(const std::vector<std::pair<QString, QString>>& rules);
  // Applies; returns false (with the reason shown) when refused.
  bool Apply();
  QString status_text() const;
  bool running() const { return running_; }

  QTableWidget* rules_table;
  QTableView* preview_view;
  QLineEdit* output_edit;
  QPushButton* apply_button;
  RemapPreviewModel* preview_model;

 signals:
  void remapped(const QString& output_dir);
  void runFinished(bool ok);

 private:
  void UpdatePreview();
  std::vector<KeyMap::Rule> Rules() const;
  std::shared_ptr<const CheckpointLayout> layout_;
  std::shared_ptr<FileSystem> fs_;
  QLabel* status_;
  bool rules_ok_ = true;
  bool running_ = false;
};

}  // namespace safeshard::gui

#endif  // SAFESHARD_GUI_VIEWS_REMAP_DIALOG_H_
