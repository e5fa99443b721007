// diff_model.h: the differences between the open checkpoint (A) and another (B), one row each:
// kind ("values", "only in A", ...), tensor, and what differs (see core/diff).
#ifndef SAFESHARD_GUI_MODELS_DIFF_MODEL_H_
#define SAFESHARD_GUI_MODELS_DIFF_MODEL_H_

#include <QAbstractTableModel>
#include <memory>

#include "core/diff/diff.h"

namespace safeshard::gui {

class DiffModel : public QAbstractTableModel {
  Q_OBJECT

 public:
  enum Column { kKind, kTensor, kDetail, kColumnCount };
  static constexpr int kTensorNameRole = Qt::UserRole + 1;  // the tensor's full name
  static constexpr int kInARole = Qt::UserRole + 2;         // whether A has the tensor

  explicit DiffModel(QObject* parent = nullptr) : QAbstractTableModel(parent) {}
  void SetReport(std::shared_ptr<const DiffReport> report);
  const DiffReport* report() const { return report_.get(); }

  int rowCount(const QModelIndex& parent = {}) const override;
  int columnCount(const QModelIndex& parent = {}) const override;
  QVariant data(const QModelIndex& index, int role = Qt::DisplayRole) const override;
  QVariant headerData(int section, Qt::Orientation o, int role = Qt::DisplayRole) const override;

 private:
  std::shared_ptr<const DiffReport> report_;
};

}  // namespace safeshard::gui

#endif  // SAFESHARD_GUI_MODELS_DIFF_MODEL_H_
