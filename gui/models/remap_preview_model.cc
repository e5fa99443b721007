#include "gui/models/remap_preview_model.h"

#include <map>

namespace safeshard::gui {

void RemapPreviewModel::SetKeys(std::vector<std::string> keys) {
  beginResetModel();
  keys_ = std::move(keys);
  Recompute(key_map_);
  endResetModel();
}

absl::Status RemapPreviewModel::SetRules(std::vector<KeyMap::Rule> rules) {
  absl::StatusOr<KeyMap> km = KeyMap::Create(std::move(rules));
  if (!km.ok()) return km.status();
  beginResetModel();
  key_map_ = std::move(*km);
  Recompute(key_map_);
  endResetModel();
  return absl::OkStatus();
}

void RemapPreviewModel::Recompute(const KeyMap& km) {
  rows_.clear();
  std::map<std::string, int> count;
  for (const std::string& k : keys_) {
    Row r{k, km.Apply(k), false};
    ++count[r.new_name];
    rows_.push_back(std::move(r));
  }
  collisions_ = changed_ = 0;
  for (Row& r : rows_) {
    r.collides = count[r.new_name] > 1;
    collisions_ += r.collides;
    changed_ += r.old_name != r.new_name;
  }
}

int RemapPreviewModel::rowCount(const QModelIndex& p) const {
  return p.isValid() ? 0 : static_cast<int>(rows_.size());
}
int RemapPreviewModel::columnCount(const QModelIndex& p) const {
  return p.isValid() ? 0 : kColumnCount;
}

QVariant RemapPreviewModel::data(const QModelIndex& index, int role) const {
  if (!index.isValid()) return {};
  const Row& r = rows_[index.row()];
  if (role == kCollisionRole) return r.collides;  // views colour these rows
  if (role == Qt::ToolTipRole && r.collides) {
    return QStringLiteral("another key maps to the same name: Apply is refused");
  }
  if (role != Qt::DisplayRole) return {};
  switch (index.column()) {
    case kOld: return QString::fromStdString(r.old_name);
    case kNew: return QString::fromStdString(r.new_name);
    case kState:
      return r.collides ? QStringLiteral("collision")
                        : (r.old_name == r.new_name ? QStringLiteral("unchanged")
                                                    : QStringLiteral("renamed"));
  }
  return {};
}

QVariant RemapPreviewModel::headerData(int s, Qt::Orientation o, int role) const {
  if (o != Qt::Horizontal || role != Qt::DisplayRole) return {};
  switch (s) {
    case kOld: return QStringLiteral("Old name");
    case kNew: return QStringLiteral("New name");
    case kState: return QStringLiteral("");
  }
  return {};
}

}  // namespace safeshard::gui
