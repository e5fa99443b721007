#include "gui/models/tensor_tree_model.h"

#include <algorithm>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "gui/models/natural_sort.h"

namespace safeshard::gui {

struct TensorTreeModel::Node {
  std::string label;                 // path component (or full name in flat mode)
  const TensorLayout* tensor = nullptr;
  Node* parent = nullptr;
  int row = 0;
  std::vector<std::unique_ptr<Node>> children;
  uint64_t params = 0, bytes = 0;
  bool problem = false;
};

TensorTreeModel::TensorTreeModel(QObject* parent)
    : QAbstractItemModel(parent), root_(std::make_unique<Node>()) {}
TensorTreeModel::~TensorTreeModel() = default;

void TensorTreeModel::SetLayout(std::shared_ptr<const CheckpointLayout> layout) {
  beginResetModel();
  layout_ = std::move(layout);
  Rebuild();
  endResetModel();
}

void TensorTreeModel::SetFlat(bool flat) {
  if (flat == flat_) return;
  beginResetModel();
  flat_ = flat;
  Rebuild();
  endResetModel();
}

void TensorTreeModel::Rebuild() {
  root_ = std::make_unique<Node>();
  if (!layout_) return;
  for (const TensorLayout& t : layout_->tensors()) {
    Node* cur = root_.get();
    std::vector<std::string> parts =
        flat_ ? std::vector<std::string>{t.name} : std::vector<std::string>(absl::StrSplit(t.name, '.'));
    for (size_t i = 0; i < parts.size(); ++i) {
      const bool leaf = i + 1 == parts.size();
      Node* next = nullptr;
      if (!leaf) {
        for (auto& c : cur->children) {
          if (c->tensor == nullptr && c->label == parts[i]) next = c.get();
        }
      }
      if (next == nullptr) {
        auto n = std::make_unique<Node>();
        n->label = parts[i];
        n->parent = cur;
        if (leaf) n->tensor = &t;
        next = n.get();
        cur->children.push_back(std::move(n));
      }
      cur = next;
    }
  }
  // Natural order, sums, rows.
  std::function<void(Node*)> finish = [&](Node* n) {
    std::stable_sort(n->children.begin(), n->children.end(), [](const auto& a, const auto& b) {
      return NaturalLess(a->label, b->label);
    });
    for (size_t i = 0; i < n->children.size(); ++i) {
      Node* c = n->children[i].get();
      c->row = static_cast<int>(i);
      finish(c);
      if (c->tensor != nullptr) {
        c->params = c->tensor->numel();
        c->bytes = c->tensor->bytes();
        c->problem = c->tensor->has_problem;
      }
      n->params += c->params;
      n->bytes += c->bytes;
      n->problem |= c->problem;
    }
  };
  finish(root_.get());
}

const TensorTreeModel::Node* TensorTreeModel::NodeOf(const QModelIndex& index) const {
  return index.isValid() ? static_cast<const Node*>(index.internalPointer()) : root_.get();
}

QModelIndex TensorTreeModel::index(int row, int column, const QModelIndex& parent) const {
  if (column < 0 || column >= kColumnCount || row < 0) return {};
  if (parent.isValid() && parent.column() != 0) return {};
  const Node* p = NodeOf(parent);
  if (row >= static_cast<int>(p->children.size())) return {};
  return createIndex(row, column, p->children[row].get());
}

QModelIndex TensorTreeModel::parent(const QModelIndex& child) const {
  if (!child.isValid()) return {};
  const Node* n = static_cast<const Node*>(child.internalPointer());
  if (n->parent == nullptr || n->parent == root_.get()) return {};
  return createIndex(n->parent->row, 0, n->parent);
}

int TensorTreeModel::rowCount(const QModelIndex& parent) const {
  if (parent.isValid() && parent.column() != 0) return 0;
  return static_cast<int>(NodeOf(parent)->children.size());
}

int TensorTreeModel::columnCount(const QModelIndex&) const { return kColumnCount; }

QVariant TensorTreeModel::data(const QModelIndex& index, int role) const {
  if (!index.isValid()) return {};
  const Node* n = static_cast<const Node*>(index.internalPointer());
  const TensorLayout* t = n->tensor;
  if (role == kTensorNameRole) return t ? QString::fromStdString(t->name) : QString();
  if (role == Qt::TextAlignmentRole && index.column() >= kParameters && index.column() <= kFiles) {
    return QVariant(Qt::AlignRight | Qt::AlignVCenter);
  }
  if (role == Qt::ToolTipRole && t != nullptr) return QString::fromStdString(t->name);
  if (role != Qt::DisplayRole) return {};
  switch (index.column()) {
    case kName: return QString::fromStdString(n->label);
    case kDType: return t ? QString::fromUtf8(DTypeName(t->dtype).data(), DTypeName(t->dtype).size()) : QString();
    case kShape: return t ? QString::fromStdString(absl::StrCat("[", absl::StrJoin(t->shape, ", "), "]")) : QString();
    case kParameters: return QString::number(static_cast<qulonglong>(n->params));
    case kBytes: return QString::number(static_cast<qulonglong>(n->bytes));
    case kChunks: return t ? QVariant(static_cast<int>(t->chunks.size())) : QVariant();
    case kFiles: {
      if (!t) return {};
      std::set<int> files;
      for (const Chunk& c : t->chunks) files.insert(c.file);
      return static_cast<int>(files.size());
    }
    case kStatus: return n->problem ? QStringLiteral("problem") : QStringLiteral("ok");
  }
  return {};
}

QVariant TensorTreeModel::headerData(int section, Qt::Orientation o, int role) const {
  if (o != Qt::Horizontal || role != Qt::DisplayRole) return {};
  static const char* kNames[] = {"Name", "DType", "Shape", "Parameters", "Bytes", "Chunks", "Files", "Status"};
  return section >= 0 && section < kColumnCount ? QString(kNames[section]) : QVariant();
}

std::string TensorTreeModel::Dump() const {
  std::string out;
  std::function<void(const QModelIndex&, int)> walk = [&](const QModelIndex& parent, int depth) {
    for (int r = 0; r < rowCount(parent); ++r) {
      std::vector<std::string> cells;
      for (int c = 0; c < kColumnCount; ++c) cells.push_back(data(index(r, c, parent)).toString().toStdString());
      absl::StrAppend(&out, std::string(2 * depth, ' '), absl::StrJoin(cells, " | "), "\n");
      walk(index(r, 0, parent), depth + 1);
    }
  };
  walk(QModelIndex(), 0);
  return out;
}

}  // namespace safeshard::gui
