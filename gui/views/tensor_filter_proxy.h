// tensor_filter_proxy.h: the tensor tree's filter — name regex, dtype, only tensors with
// problems. Group rows show when something below them matches.
#ifndef SAFESHARD_GUI_VIEWS_TENSOR_FILTER_PROXY_H_
#define SAFESHARD_GUI_VIEWS_TENSOR_FILTER_PROXY_H_

#include <QCollator>
#include <QColor>
#include <QLocale>
#include <QRegularExpression>
#include <QSortFilterProxyModel>

#include "gui/models/tensor_tree_model.h"

namespace safeshard::gui {

class TensorFilterProxy : public QSortFilterProxyModel {
 public:
  explicit TensorFilterProxy(QObject* parent = nullptr) : QSortFilterProxyModel(parent) {
    setRecursiveFilteringEnabled(true);
  }
  void SetCriteria(const QRegularExpression& name, const QString& dtype, bool problems_only) {
    beginFilterChange();
    name_ = name;
    dtype_ = dtype;
    problems_only_ = problems_only;
    active_ = !name_.pattern().isEmpty() || !dtype_.isEmpty() || problems_only_;
    endFilterChange();
  }
  bool active() const { return active_; }

  // Tensors (and groups) with problems are drawn in red.
  QVariant data(const QModelIndex& index, int role) const override {
    if (role == Qt::ForegroundRole &&
        index.siblingAtColumn(TensorTreeModel::kStatus).data().toString() ==
            QLatin1String("problem")) {
      return QColor(176, 0, 32);
    }
    return QSortFilterProxyModel::data(index, role);
  }

 protected:
  // Names sort naturally ("layers.2" before "layers.10"), numbers by value, not by their text.
  bool lessThan(const QModelIndex& a, const QModelIndex& b) const override {
    const QVariant va = a.data(TensorTreeModel::kValueRole),
                   vb = b.data(TensorTreeModel::kValueRole);
    if (va.isValid() && vb.isValid()) return va.toULongLong() < vb.toULongLong();
    static const QCollator* collator = [] {
      auto* c = new QCollator(QLocale::c());
      c->setNumericMode(true);
      return c;
    }();
    return collator->compare(a.data().toString(), b.data().toString()) < 0;
  }

  bool filterAcceptsRow(int row, const QModelIndex& parent) const override {
    if (!active_) return true;
    const QAbstractItemModel* m = sourceModel();
    const QString name =
        m->data(m->index(row, 0, parent), TensorTreeModel::kTensorNameRole).toString();
    if (name.isEmpty()) return false;  // a group: shown when a descendant matches
    if (!name_.pattern().isEmpty() && !name_.match(name).hasMatch()) return false;
    if (!dtype_.isEmpty() &&
        m->data(m->index(row, TensorTreeModel::kDType, parent)).toString() != dtype_)
      return false;
    if (problems_only_ &&
        m->data(m->index(row, TensorTreeModel::kStatus, parent)).toString() != "problem")
      return false;
    return true;
  }

 private:
  // Qt 6.4 has no beginFilterChange(); invalidateFilter() after the change does the same.
  void beginFilterChange() {}
  void endFilterChange() { invalidateFilter(); }
  QRegularExpression name_;
  QString dtype_;
  bool problems_only_ = false;
  bool active_ = false;
};

}  // namespace safeshard::gui

#endif  // SAFESHARD_GUI_VIEWS_TENSOR_FILTER_PROXY_H_
