// list_models.h: flat item models of the inspector (QtCore only).
//
//   ChunkModel     the chunks of one tensor: file, rank, offsets, sizes, byte range
//   ProblemsModel  the verification report: kind, file, tensor, message
//   FileModel      the files: name, rank, size, header bytes, tensors, kind/error
#ifndef SAFESHARD_GUI_MODELS_LIST_MODELS_H_
#define SAFESHARD_GUI_MODELS_LIST_MODELS_H_

#include <QAbstractTableModel>
#include <memory>
#include <string>

#include "core/layout/layout.h"

namespace safeshard::gui {

class ChunkModel : public QAbstractTableModel {
  Q_OBJECT

 public:
  // kKey: the chunk's key in its file, which differs from the tensor's (logical) name when
  // PyTorch's newest writer stored several chunks of it in one rank file ("w.__dcp_shard_1").
  enum Column { kFile, kRank, kOffsets, kSizes, kByteRange, kKey, kColumnCount };
  explicit ChunkModel(QObject* parent = nullptr) : QAbstractTableModel(parent) {}
  // Shows the chunks of `tensor` (nullptr: none).
  void SetTensor(std::shared_ptr<const CheckpointLayout> layout, const TensorLayout* tensor);
  int rowCount(const QModelIndex& parent = {}) const override;
  int columnCount(const QModelIndex& parent = {}) const override;
  QVariant data(const QModelIndex& index, int role = Qt::DisplayRole) const override;
  QVariant headerData(int section, Qt::Orientation o, int role = Qt::DisplayRole) const override;

 private:
  std::shared_ptr<const CheckpointLayout> layout_;
  const TensorLayout* tensor_ = nullptr;
};

// The shared part of the tables over a whole layout: holds it, resets on SetLayout, and has a
// fixed number of columns; subclasses say how many rows a layout gives.
class LayoutTableModel : public QAbstractTableModel {
 public:
  void SetLayout(std::shared_ptr<const CheckpointLayout> layout);
  int rowCount(const QModelIndex& parent = {}) const override;
  int columnCount(const QModelIndex& parent = {}) const override;

 protected:
  LayoutTableModel(int columns, QObject* parent) : QAbstractTableModel(parent), columns_(columns) {}
  virtual int Rows(const CheckpointLayout& layout) const = 0;
  std::shared_ptr<const CheckpointLayout> layout_;

 private:
  int columns_;
};

class ProblemsModel : public LayoutTableModel {
  Q_OBJECT

 public:
  enum Column { kKind, kFile, kTensor, kMessage, kColumnCount };
  explicit ProblemsModel(QObject* parent = nullptr) : LayoutTableModel(kColumnCount, parent) {}
  QVariant data(const QModelIndex& index, int role = Qt::DisplayRole) const override;
  QVariant headerData(int section, Qt::Orientation o, int role = Qt::DisplayRole) const override;

 private:
  int Rows(const CheckpointLayout& layout) const override;
};

class FileModel : public LayoutTableModel {
  Q_OBJECT

 public:
  enum Column { kName, kRank, kSize, kHeaderBytes, kTensors, kState, kColumnCount };
  explicit FileModel(QObject* parent = nullptr) : LayoutTableModel(kColumnCount, parent) {}
  QVariant data(const QModelIndex& index, int role = Qt::DisplayRole) const override;
  QVariant headerData(int section, Qt::Orientation o, int role = Qt::DisplayRole) const override;

 private:
  int Rows(const CheckpointLayout& layout) const override;
};

}  // namespace safeshard::gui

#endif  // SAFESHARD_GUI_MODELS_LIST_MODELS_H_
