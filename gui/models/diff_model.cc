#include "gui/models/diff_model.h"

namespace safeshard::gui {

void DiffModel::SetReport(std::shared_ptr<const DiffReport> report) {
  beginResetModel();
  report_ = std::move(report);
  endResetModel();
}

int DiffModel::rowCount(const QModelIndex& parent) const {
  return parent.isValid() || !report_ ? 0 : static_cast<int>(report_->diffs.size());
}

int DiffModel::columnCount(const QModelIndex& parent) const {
  return parent.isValid() ? 0 : kColumnCount;
}

QVariant DiffModel::data(const QModelIndex& index, int role) const {
  if (!index.isValid() || !report_ || index.row() >= rowCount()) return {};
  const TensorDiff& d = report_->diffs[static_cast<size_t>(index.row())];
  switch (role) {
    case kTensorNameRole: return QString::fromStdString(d.name);
    case kInARole: return d.kind != DiffKind::kOnlyInB;
    case Qt::ToolTipRole:
      return QString::fromStdString(d.name + ": " + d.detail) +
             (d.kind == DiffKind::kOnlyInB ? QString("\n(not in the open checkpoint)")
                                           : QString("\nClick to select it"));
    case Qt::DisplayRole:
      switch (index.column()) {
        case kKind: return QString(DiffKindName(d.kind));
        case kTensor: return QString::fromStdString(d.name);
        case kDetail: return QString::fromStdString(d.detail);
      }
      return {};
  }
  return {};
}

QVariant DiffModel::headerData(int section, Qt::Orientation o, int role) const {
  if (o != Qt::Horizontal || role != Qt::DisplayRole) return {};
  switch (section) {
    case kKind: return QString("Kind");
    case kTensor: return QString("Tensor");
    case kDetail: return QString("Difference");
  }
  return {};
}

}  // namespace safeshard::gui
