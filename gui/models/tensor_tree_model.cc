#include "gui/models/tensor_tree_model.h"

#include <algorithm>
#include <functional>
#include <map>
#include <set>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "gui/models/format.h"
#include "gui/models/natural_sort.h"

namespace safeshard::gui {

namespace {

// The length of the prefix every file name shares, cut back to just after a separator.
size_t SharedFilePrefix(const CheckpointLayout& l) {
  if (l.files().size() < 2) return 0;
  std::string_view first = l.files()[0].name;
  size_t n = first.size();
  for (const FileInfo& f : l.files()) {
    size_t i = 0;
    while (i < n && i < f.name.size() && f.name[i] == first[i]) ++i;
    n = i;
  }
  while (n > 0 && first[n - 1] != '-' && first[n - 1] != '_' && first[n - 1] != '.' &&
         first[n - 1] != '/')
    --n;
  return n;
}

}  // namespace

struct TensorTreeModel::Node {
  std::string label;  // path component (or full name in flat mode)
  const TensorLayout* tensor = nullptr;
  Node* parent = nullptr;
  int row = 0;
  std::vector<std::unique_ptr<Node>> children;
  uint64_t params = 0, bytes = 0;
  bool problem = false;
};

struct TensorTreeModel::Prepared {
  std::shared_ptr<const CheckpointLayout> layout;
  bool flat = false;
  Node root;
  absl::flat_hash_map<absl::string_view, const Node*> by_name;  // views of layout's names
};

TensorTreeModel::TensorTreeModel(QObject* parent) : QAbstractItemModel(parent) {
  prepared_ = Prepare(nullptr, false);
  root_ = &prepared_->root;
}
TensorTreeModel::~TensorTreeModel() = default;

std::shared_ptr<TensorTreeModel::Prepared> TensorTreeModel::Prepare(
    std::shared_ptr<const CheckpointLayout> layout, bool flat) {
  auto p = std::make_shared<Prepared>();
  p->layout = std::move(layout);
  p->flat = flat;
  if (!p->layout) return p;
  // Group children by label while building (a layer of 100k siblings must not be quadratic).
  // Labels are viewed in the layout's names (kept alive by `p`) until a node copies its own.
  absl::flat_hash_map<std::pair<const Node*, absl::string_view>, Node*> groups;
  std::vector<absl::string_view> parts;
  for (const TensorLayout& t : p->layout->tensors()) {
    Node* cur = &p->root;
    parts.clear();
    if (flat) {
      parts.push_back(t.name);
    } else {
      for (absl::string_view part : absl::StrSplit(t.name, '.')) parts.push_back(part);
    }
    for (size_t i = 0; i < parts.size(); ++i) {
      const bool leaf = i + 1 == parts.size();
      Node* next = nullptr;
      if (!leaf) {
        auto it = groups.find(std::make_pair(static_cast<const Node*>(cur), parts[i]));
        if (it != groups.end()) next = it->second;
      }
      if (next == nullptr) {
        auto n = std::make_unique<Node>();
        n->label = std::string(parts[i]);
        n->parent = cur;
        if (leaf) {
          n->tensor = &t;
          p->by_name[t.name] = n.get();
        } else {
          groups[std::make_pair(static_cast<const Node*>(cur), parts[i])] = n.get();
        }
        next = n.get();
        cur->children.push_back(std::move(n));
      }
      cur = next;
    }
  }
  // Natural order, sums, rows. A label of digits only (a layer or expert index) sorts by its
  // value, which is what NaturalLess decides for two such labels (leading zeros do not count,
  // equal values are equal): integers compare without walking the characters.
  std::function<void(Node*)> finish = [&](Node* n) {
    struct Key {
      bool numeric;
      uint64_t value;
    };
    auto key_of = [](const std::string& label) {
      if (label.empty() || label.size() > 19) return Key{false, 0};
      uint64_t v = 0;
      for (char ch : label) {
        if (ch < '0' || ch > '9') return Key{false, 0};
        v = v * 10 + static_cast<uint64_t>(ch - '0');
      }
      return Key{true, v};
    };
    std::vector<std::pair<Key, std::unique_ptr<Node>>> keyed;
    keyed.reserve(n->children.size());
    for (auto& c : n->children) {
      const Key k = key_of(c->label);
      keyed.emplace_back(k, std::move(c));
    }
    std::stable_sort(keyed.begin(), keyed.end(), [](const auto& a, const auto& b) {
      if (a.first.numeric && b.first.numeric) return a.first.value < b.first.value;
      return NaturalLess(a.second->label, b.second->label);
    });
    for (size_t i = 0; i < keyed.size(); ++i) n->children[i] = std::move(keyed[i].second);
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
  finish(&p->root);
  return p;
}

void TensorTreeModel::SetLayout(std::shared_ptr<const CheckpointLayout> layout) {
  SetPrepared(Prepare(std::move(layout), flat_));
}

QString TensorTreeModel::FileLabel(int file) const {
  const FileInfo& f = layout_->files()[file];
  if (f.shard) return QStringLiteral("rank %1").arg(*f.shard - 1);  // a per-rank shard
  std::string_view name = f.name;
  name.remove_prefix(std::min(files_prefix_, name.size()));
  if (name.size() > 12 && name.substr(name.size() - 12) == ".safetensors") name.remove_suffix(12);
  return QString::fromUtf8(name.data(), static_cast<int>(name.size()));
}

QVariant TensorTreeModel::FilesText(const TensorLayout& t) const {
  std::set<int> files;
  for (const Chunk& c : t.chunks) files.insert(c.file);
  if (files.size() == 1 && layout_->files().size() > 1) return FileLabel(*files.begin());
  return static_cast<int>(files.size());
}

void TensorTreeModel::SetPrepared(std::shared_ptr<Prepared> prepared) {
  beginResetModel();
  prepared_ = std::move(prepared);
  layout_ = prepared_->layout;
  files_prefix_ = SharedFilePrefix(*layout_);
  flat_ = prepared_->flat;
  root_ = &prepared_->root;
  endResetModel();
}

void TensorTreeModel::SetFlat(bool flat) {
  if (flat == flat_) return;
  SetPrepared(Prepare(layout_, flat));
}

QModelIndex TensorTreeModel::IndexOfTensor(const std::string& name) const {
  auto it = prepared_->by_name.find(name);
  if (it == prepared_->by_name.end()) return {};
  return createIndex(it->second->row, 0, const_cast<Node*>(it->second));
}

const TensorTreeModel::Node* TensorTreeModel::NodeOf(const QModelIndex& index) const {
  return index.isValid() ? static_cast<const Node*>(index.internalPointer()) : root_;
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
  if (n->parent == nullptr || n->parent == root_) return {};
  return createIndex(n->parent->row, 0, n->parent);
}

int TensorTreeModel::rowCount(const QModelIndex& parent) const {
  if (parent.isValid() && parent.column() != 0) return 0;
  return static_cast<int>(NodeOf(parent)->children.size());
}

int TensorTreeModel::columnCount(const QModelIndex&) const {
  return kColumnCount;
}

QVariant TensorTreeModel::data(const QModelIndex& index, int role) const {
  if (!index.isValid()) return {};
  const Node* n = static_cast<const Node*>(index.internalPointer());
  const TensorLayout* t = n->tensor;
  if (role == kTensorNameRole) return t ? QString::fromStdString(t->name) : QString();
  if (role == Qt::TextAlignmentRole && index.column() >= kParameters && index.column() <= kFiles) {
    return QVariant(Qt::AlignRight | Qt::AlignVCenter);
  }
  auto file_count = [t] {
    std::set<int> files;
    for (const Chunk& c : t->chunks) files.insert(c.file);
    return static_cast<qulonglong>(files.size());
  };
  if (role == kValueRole) {
    switch (index.column()) {
      case kParameters: return static_cast<qulonglong>(n->params);
      case kBytes: return static_cast<qulonglong>(n->bytes);
      case kChunks: return t ? QVariant(static_cast<qulonglong>(t->chunks.size())) : QVariant();
      case kFiles: {
        // A file name sorts by name (naturally), a count by value.
        if (t == nullptr) return {};
        const QVariant v = FilesText(*t);
        return v.typeId() == QMetaType::QString ? QVariant() : QVariant(file_count());
      }
    }
    return {};
  }
  if (role == Qt::ToolTipRole) {
    if (index.column() == kBytes) return QString::fromStdString(Grouped(n->bytes) + " bytes");
    if (index.column() == kFiles && t != nullptr) {
      std::set<int> files;
      for (const Chunk& c : t->chunks) files.insert(c.file);
      std::vector<std::string> names;
      for (int f : files) names.push_back(layout_->files()[f].name);
      std::sort(names.begin(), names.end(), NaturalLess);
      return QString::fromStdString(absl::StrJoin(names, "\n"));
    }
    if (t == nullptr) return {};
    if (const quant::QuantPair* q = layout_->QuantPairOf(t->name)) {
      return QString::fromStdString(
          q->weight == t->name
              ? absl::StrCat(t->name, "\nquantized: ", q->Describe(), "; scale ", q->scale)
              : absl::StrCat(t->name, "\nblock scales of ", q->weight));
    }
    return QString::fromStdString(t->name);
  }
  if (role != Qt::DisplayRole) return {};
  switch (index.column()) {
    case kName: return QString::fromStdString(n->label);
    case kDType:
      return t ? QString::fromUtf8(DTypeName(t->dtype).data(), DTypeName(t->dtype).size())
               : QString();
    case kShape:
      return t ? QString::fromStdString(absl::StrCat("[", absl::StrJoin(t->shape, ", "), "]"))
               : QString();
    case kParameters: return QString::fromStdString(Grouped(n->params));
    case kBytes: return QString::fromStdString(FormatBytes(n->bytes));
    case kChunks: return t ? QVariant(static_cast<int>(t->chunks.size())) : QVariant();
    case kFiles: return t ? FilesText(*t) : QVariant();
    case kStatus: return n->problem ? QStringLiteral("problem") : QStringLiteral("ok");
  }
  return {};
}

QVariant TensorTreeModel::headerData(int section, Qt::Orientation o, int role) const {
  if (o != Qt::Horizontal || role != Qt::DisplayRole) return {};
  static const char* kNames[] = {"Name",  "DType",  "Shape", "Parameters",
                                 "Bytes", "Chunks", "Files", "Status"};
  return section >= 0 && section < kColumnCount ? QString(kNames[section]) : QVariant();
}

std::string TensorTreeModel::Dump() const {
  std::string out;
  std::function<void(const QModelIndex&, int)> walk = [&](const QModelIndex& parent, int depth) {
    for (int r = 0; r < rowCount(parent); ++r) {
      std::vector<std::string> cells;
      for (int c = 0; c < kColumnCount; ++c)
        cells.push_back(data(index(r, c, parent)).toString().toStdString());
      absl::StrAppend(&out, std::string(2 * depth, ' '), absl::StrJoin(cells, " | "), "\n");
      walk(index(r, 0, parent), depth + 1);
    }
  };
  walk(QModelIndex(), 0);
  return out;
}

}  // namespace safeshard::gui
