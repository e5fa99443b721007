// tensor_tree_model.h: the inspector's tensor list as a Qt item model (QtCore only, no widgets).
//
// Tensors of a CheckpointLayout grouped by name prefix ("model" > "layers" > "0" > ...), siblings
// in natural order (layers.2 before layers.10), or flat. Columns: name, dtype, shape, parameters,
// bytes, chunks, files (the file's name, short, when a tensor lives in one file of several, as in
// an HF-sharded checkpoint; otherwise a count), status. Group rows sum parameters and bytes of
// everything below them.
//
//   TensorTreeModel model;
//   model.SetLayout(std::make_shared<const CheckpointLayout>(std::move(layout)));
//   view->setModel(&model);
#ifndef SAFESHARD_GUI_MODELS_TENSOR_TREE_MODEL_H_
#define SAFESHARD_GUI_MODELS_TENSOR_TREE_MODEL_H_

#include <QAbstractItemModel>
#include <memory>
#include <string>
#include <vector>

#include "core/layout/layout.h"

namespace safeshard::gui {

class TensorTreeModel : public QAbstractItemModel {
  Q_OBJECT

 public:
  enum Column {
    kName,
    kDType,
    kShape,
    kParameters,
    kBytes,
    kChunks,
    kFiles,
    kStatus,
    kColumnCount
  };
  // The full tensor name of a row (empty for group rows).
  static constexpr int kTensorNameRole = Qt::UserRole + 1;
  // The number behind parameters, bytes, chunks and files (qulonglong); their display text is
  // formatted ("1,234,567", "2.00 MiB"). Invalid for a Files cell showing a file name.
  static constexpr int kValueRole = Qt::UserRole + 2;

  explicit TensorTreeModel(QObject* parent = nullptr);
  ~TensorTreeModel() override;

  // The row tree of a layout, built anywhere (e.g. off the GUI thread), installed by SetPrepared.
  struct Prepared;
  static std::shared_ptr<Prepared> Prepare(std::shared_ptr<const CheckpointLayout> layout,
                                           bool flat);

  void SetLayout(std::shared_ptr<const CheckpointLayout> layout);  // Prepare + SetPrepared
  void SetPrepared(std::shared_ptr<Prepared> prepared);
  void SetFlat(bool flat);
  const std::shared_ptr<const CheckpointLayout>& layout() const { return layout_; }
  // The row of a tensor (column 0), invalid when the layout has no such tensor.
  QModelIndex IndexOfTensor(const std::string& name) const;
  bool flat() const { return flat_; }
  // How the Files column names file `file` of the layout: a per-rank shard as "rank r", another
  // file without the prefix all file names share (cut back to a '-', '_', '.' or '/') and without
  // ".safetensors" ("00002-of-00004"). Cells show it when a tensor lives in one file of several
  // (else the number of files); their tooltip has the full names.
  QString FileLabel(int file) const;

  QModelIndex index(int row, int column, const QModelIndex& parent = {}) const override;
  QModelIndex parent(const QModelIndex& child) const override;
  int rowCount(const QModelIndex& parent = {}) const override;
  int columnCount(const QModelIndex& parent = {}) const override;
  QVariant data(const QModelIndex& index, int role = Qt::DisplayRole) const override;
  QVariant headerData(int section, Qt::Orientation o, int role = Qt::DisplayRole) const override;

  // A plain-text dump of the whole tree (golden tests and copy-to-clipboard).
  std::string Dump() const;

 private:
  struct Node;
  const Node* NodeOf(const QModelIndex& index) const;
  QVariant FilesText(const TensorLayout& t) const;

  std::shared_ptr<const CheckpointLayout> layout_;
  bool flat_ = false;
  size_t files_prefix_ = 0;  // shared by every file name, not shown in the Files column
  std::shared_ptr<Prepared> prepared_;
  const Node* root_ = nullptr;
};

}  // namespace safeshard::gui

#endif  // SAFESHARD_GUI_MODELS_TENSOR_TREE_MODEL_H_
