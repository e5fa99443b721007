// remap_preview_model.h: live old -> new preview of a key remap, collisions flagged
// (QtCore only). Backs the inspector's "Remap keys..." dialog.
//
//   RemapPreviewModel m;
//   m.SetKeys({"model.a", "model.b"});
//   absl::Status s = m.SetRules({{"^model\\.", ""}});   // invalid regex: error, preview unchanged
//   m.collisions() == 0 -> Apply is allowed
#ifndef SAFESHARD_GUI_MODELS_REMAP_PREVIEW_MODEL_H_
#define SAFESHARD_GUI_MODELS_REMAP_PREVIEW_MODEL_H_

#include <QAbstractTableModel>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "core/remap/keymap.h"

namespace safeshard::gui {

class RemapPreviewModel : public QAbstractTableModel {
  Q_OBJECT

 public:
  enum Column { kOld, kNew, kState, kColumnCount };
  static constexpr int kCollisionRole = Qt::UserRole + 1;  // bool; QtCore only, views colour
  explicit RemapPreviewModel(QObject* parent = nullptr) : QAbstractTableModel(parent) {}

  void SetKeys(std::vector<std::string> keys);
  // Recomputes the preview; on a bad rule returns the error and keeps the previous preview.
  absl::Status SetRules(std::vector<KeyMap::Rule> rules);
  int collisions() const { return collisions_; }
  int changed() const { return changed_; }

  int rowCount(const QModelIndex& parent = {}) const override;
  int columnCount(const QModelIndex& parent = {}) const override;
  QVariant data(const QModelIndex& index, int role = Qt::DisplayRole) const override;
  QVariant headerData(int section, Qt::Orientation o, int role = Qt::DisplayRole) const override;

 private:
  struct Row {
    std::string old_name, new_name;
    bool collides = false;
  };
  void Recompute(const KeyMap& km);
  std::vector<std::string> keys_;
  std::vector<Row> rows_;
  KeyMap key_map_;
  int collisions_ = 0, changed_ = 0;
};

}  // namespace safeshard::gui

#endif  // SAFESHARD_GUI_MODELS_REMAP_PREVIEW_MODEL_H_
