#include "gui/models/list_models.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gui/models/format.h"

namespace safeshard::gui {
namespace {

QString Q(const std::string& s) {
  return QString::fromStdString(s);
}

QString Header(int section, std::initializer_list<const char*> names) {
  int i = 0;
  for (const char* n : names) {
    if (i++ == section) return QString(n);
  }
  return {};
}

}  // namespace

void ChunkModel::SetTensor(std::shared_ptr<const CheckpointLayout> layout, const TensorLayout* t) {
  beginResetModel();
  layout_ = std::move(layout);
  tensor_ = t;
  endResetModel();
}

int ChunkModel::rowCount(const QModelIndex& p) const {
  return p.isValid() || tensor_ == nullptr ? 0 : static_cast<int>(tensor_->chunks.size());
}
int ChunkModel::columnCount(const QModelIndex& p) const {
  return p.isValid() ? 0 : kColumnCount;
}

QVariant ChunkModel::data(const QModelIndex& index, int role) const {
  if (!index.isValid() || tensor_ == nullptr || role != Qt::DisplayRole) return {};
  const Chunk& c = tensor_->chunks[index.row()];
  const FileInfo& f = layout_->files()[c.file];
  switch (index.column()) {
    case kFile: return Q(f.name);
    case kRank: return f.shard ? QVariant(*f.shard - 1) : QVariant();
    case kOffsets: return Q(absl::StrCat("[", absl::StrJoin(c.offsets, ", "), "]"));
    case kSizes: return Q(absl::StrCat("[", absl::StrJoin(c.sizes, ", "), "]"));
    case kByteRange: return Q(absl::StrCat("[", c.begin, ", ", c.end, ")"));
    case kKey: return Q(c.key.empty() ? tensor_->name : c.key);
  }
  return {};
}

QVariant ChunkModel::headerData(int s, Qt::Orientation o, int role) const {
  if (o != Qt::Horizontal || role != Qt::DisplayRole) return {};
  return Header(s, {"File", "Rank", "Offsets", "Sizes", "Bytes", "Key in file"});
}

void LayoutTableModel::SetLayout(std::shared_ptr<const CheckpointLayout> layout) {
  beginResetModel();
  layout_ = std::move(layout);
  endResetModel();
}

int LayoutTableModel::rowCount(const QModelIndex& p) const {
  return p.isValid() || !layout_ ? 0 : Rows(*layout_);
}
int LayoutTableModel::columnCount(const QModelIndex& p) const {
  return p.isValid() ? 0 : columns_;
}

int ProblemsModel::Rows(const CheckpointLayout& l) const {
  return static_cast<int>(l.problems().size());
}

QVariant ProblemsModel::data(const QModelIndex& index, int role) const {
  if (!index.isValid() || !layout_) return {};
  const Problem& p = layout_->problems()[index.row()];
  if (role == Qt::ToolTipRole) return Q(p.ToString());
  if (role != Qt::DisplayRole) return {};
  switch (index.column()) {
    case kKind: return Q(std::string(ProblemKindName(p.kind)));
    case kFile: return Q(p.file);
    case kTensor: return Q(p.tensor);
    case kMessage: return Q(p.message);
  }
  return {};
}

QVariant ProblemsModel::headerData(int s, Qt::Orientation o, int role) const {
  if (o != Qt::Horizontal || role != Qt::DisplayRole) return {};
  return Header(s, {"Kind", "File", "Tensor", "Problem"});
}

int FileModel::Rows(const CheckpointLayout& l) const {
  return static_cast<int>(l.files().size());
}

QVariant FileModel::data(const QModelIndex& index, int role) const {
  if (!index.isValid() || !layout_) return {};
  const FileInfo& f = layout_->files()[index.row()];
  if (role == Qt::ToolTipRole) {
    if (index.column() == kSize) return Q(Grouped(f.size) + " bytes");
    if (index.column() == kHeaderBytes && f.header) {
      return Q(Grouped(f.header->data_start()) + " bytes: the 8-byte length and the JSON header");
    }
    if (index.column() == kState && f.error) return Q(*f.error);
    return {};
  }
  if (role != Qt::DisplayRole) return {};
  switch (index.column()) {
    case kName: return Q(f.name);
    case kRank: return f.shard ? QVariant(*f.shard - 1) : QVariant();
    case kSize: return Q(FormatBytes(f.size));
    case kHeaderBytes:
      return f.header ? QVariant(Q(FormatBytes(f.header->data_start()))) : QVariant();
    case kTensors:
      return f.header ? QVariant(static_cast<int>(f.header->tensors.size())) : QVariant();
    case kState: return f.error ? Q(*f.error) : QString(f.dcp ? "DCP shard" : "plain");
  }
  return {};
}

QVariant FileModel::headerData(int s, Qt::Orientation o, int role) const {
  if (o != Qt::Horizontal || role != Qt::DisplayRole) return {};
  return Header(s, {"File", "Rank", "Size", "Header", "Tensors", "State"});
}

}  // namespace safeshard::gui
