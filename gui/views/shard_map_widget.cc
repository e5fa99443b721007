#include "gui/views/shard_map_widget.h"

#include <QHelpEvent>
#include <QKeyEvent>
#include <QMouseEvent>
#include <QPainter>
#include <QPainterPath>
#include <QToolTip>
#include <algorithm>
#include <cmath>
#include <set>
#include <tuple>

#include "core/format/filenames.h"
#include "gui/views/format_util.h"

namespace safeshard::gui {
namespace {

constexpr double kMaxAspect = 4.0;      // proportional mode: longer side at most 4x the shorter
constexpr size_t kMaxGridLines = 512;   // per axis, for drawing gaps and overlaps exactly
constexpr uint64_t kMaxStripes = 1024;  // per chunk in "rest" mode
constexpr double kLeft = 64, kTop = 48, kRight = 16, kBottom = 30;

QString Slice(uint64_t off, uint64_t size) {
  return QString("%1:%2")
      .arg(static_cast<qulonglong>(off))
      .arg(static_cast<qulonglong>(off + size));
}

// WCAG 2 relative luminance and contrast ratio.
double Luminance(const QColor& c) {
  auto lin = [](double v) { return v <= 0.03928 ? v / 12.92 : std::pow((v + 0.055) / 1.055, 2.4); };
  return 0.2126 * lin(c.redF()) + 0.7152 * lin(c.greenF()) + 0.0722 * lin(c.blueF());
}
double Contrast(const QColor& a, const QColor& b) {
  const double la = Luminance(a), lb = Luminance(b);
  return (std::max(la, lb) + 0.05) / (std::min(la, lb) + 0.05);
}

// `bounds` (sorted, first 0, last the extent) as equal bands: v -> [0, 1].
double Band(uint64_t v, const std::vector<uint64_t>& bounds) {
  const size_t n = bounds.size() - 1;
  size_t i =
      static_cast<size_t>(std::upper_bound(bounds.begin(), bounds.end(), v) - bounds.begin());
  i = i == 0 ? 0 : std::min(i - 1, n - 1);
  const double span = static_cast<double>(bounds[i + 1] - bounds[i]);
  const double frac = span > 0 ? static_cast<double>(v - bounds[i]) / span : 0;
  return (static_cast<double>(i) + std::min(1.0, frac)) / static_cast<double>(n);
}

constexpr double kLegendHeight = 22;

}  // namespace

QColor RankColor(int rank) {
  // Distinct, colour-blind-friendlier hues (Tableau 10 then shifted variants).
  static const QRgb kBase[] = {0x4e79a7, 0xf28e2b, 0x59a14f, 0xb07aa1, 0x76b7b2,
                               0xedc948, 0xff9da7, 0x9c755f, 0xbab0ac, 0x86bcb6};
  QColor c(kBase[rank % 10]);
  if (int round = rank / 10; round > 0) c = c.darker(100 + 25 * (round % 3));
  return c;
}

int RankOfFile(const CheckpointLayout& layout, int file) {
  const FileInfo& f = layout.files()[file];
  return f.shard ? *f.shard - 1 : file;
}

ShardMapWidget::ShardMapWidget(QWidget* parent) : QWidget(parent) {
  setMouseTracking(true);
  setFocusPolicy(Qt::StrongFocus);
  setAccessibleName("Shard map");
}

void ShardMapWidget::SetTensor(std::shared_ptr<const CheckpointLayout> layout,
                               const TensorLayout* tensor) {
  layout_ = std::move(layout);
  tensor_ = tensor;
  selected_ = -1;
  std::tie(row_dim_, col_dim_) = tensor_ ? AutoDims(*tensor_) : std::pair<int, int>{-1, -1};
  ComputeCoverage();
  Relayout();
  update();
}

std::pair<int, int> ShardMapWidget::AutoDims(const TensorLayout& t) {
  const int rank = static_cast<int>(t.shape.size());
  if (rank == 0) return {-1, -1};
  if (rank == 1) return {-1, 0};
  // Pieces along each dimension: the intervals between the chunks' boundaries there.
  std::vector<size_t> pieces(rank, 1);
  for (int d = 0; d < rank; ++d) {
    std::set<uint64_t> b = {0, t.shape[d]};
    for (const Chunk& c : t.chunks) {
      if (c.offsets.size() != t.shape.size()) continue;
      b.insert(std::min(c.offsets[d], t.shape[d]));
      b.insert(std::min(c.offsets[d] + c.sizes[d], t.shape[d]));
    }
    pieces[d] = b.size() - 1;
  }
  std::vector<int> order(rank);
  for (int d = 0; d < rank; ++d) order[d] = d;
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    if (pieces[a] != pieces[b]) return pieces[a] > pieces[b];
    return t.shape[a] > t.shape[b];
  });
  return {order[1], order[0]};  // rows, columns: the first choice runs horizontally
}

void ShardMapWidget::SetProportional(bool on) {
  if (on == proportional_) return;
  proportional_ = on;
  Relayout();
  update();
}

QColor ShardMapWidget::ChunkFill(int chunk) const {
  if (tensor_ == nullptr || layout_ == nullptr || chunk < 0 ||
      chunk >= static_cast<int>(tensor_->chunks.size()))
    return {};
  const QColor c = RankColor(RankOfFile(*layout_, tensor_->chunks[chunk].file));
  const QColor bg = palette().color(QPalette::AlternateBase);
  const double a = 0.78;  // the rank colour, a little of the background through it
  return QColor::fromRgbF(a * c.redF() + (1 - a) * bg.redF(),
                          a * c.greenF() + (1 - a) * bg.greenF(),
                          a * c.blueF() + (1 - a) * bg.blueF());
}

void ShardMapWidget::SetDims(int row_dim, int col_dim) {
  const int rank = tensor_ ? static_cast<int>(tensor_->shape.size()) : 0;
  if (row_dim >= rank || col_dim >= rank || (row_dim >= 0 && row_dim == col_dim)) return;
  if (col_dim == kRest && rank < 2) return;
  row_dim_ = row_dim;
  col_dim_ = col_dim;
  ComputeCoverage();
  Relayout();
  update();
}

uint64_t ShardMapWidget::Extent(int dim) const {
  if (tensor_ == nullptr) return 1;
  if (dim == kRest) {
    uint64_t n = 1;
    for (int d = 0; d < static_cast<int>(tensor_->shape.size()); ++d) {
      if (d != row_dim_) n *= tensor_->shape[d];
    }
    return n;
  }
  return dim < 0 ? 1 : tensor_->shape[dim];
}

std::vector<std::pair<uint64_t, uint64_t>> ShardMapWidget::ColIntervals(int chunk) const {
  if (col_dim_ != kRest) return {Span(chunk, col_dim_)};
  const Chunk& c = tensor_->chunks[chunk];
  std::vector<int> dims;
  for (int d = 0; d < static_cast<int>(tensor_->shape.size()); ++d) {
    if (d != row_dim_) dims.push_back(d);
  }
  if (c.offsets.size() != tensor_->shape.size() || dims.empty()) return {{0, Extent(kRest)}};
  // Dimensions after k are covered in full: each combination of indices in dims[0..k) is one
  // contiguous run of sizes[dims[k]] * inner flattened columns.
  size_t k = dims.size() - 1;
  while (k > 0 && c.offsets[dims[k]] == 0 && c.sizes[dims[k]] == tensor_->shape[dims[k]]) --k;
  uint64_t inner = 1;
  for (size_t j = k + 1; j < dims.size(); ++j) inner *= tensor_->shape[dims[j]];
  uint64_t runs = 1;
  for (size_t j = 0; j < k; ++j) runs *= c.sizes[dims[j]];
  std::vector<uint64_t> stride(dims.size(), 1);  // flattened strides of dims
  for (size_t j = dims.size() - 1; j-- > 0;)
    stride[j] = stride[j + 1] * tensor_->shape[dims[j + 1]];
  const uint64_t run_len = c.sizes[dims[k]] * inner;
  if (runs == 0 || run_len == 0) return {};
  if (runs > kMaxStripes) {  // too many to draw: the bounding interval
    uint64_t lo = 0, hi = 0;
    for (size_t j = 0; j < dims.size(); ++j) {
      lo += c.offsets[dims[j]] * stride[j];
      hi += (c.offsets[dims[j]] + c.sizes[dims[j]] - 1) * stride[j];
    }
    return {{lo, hi + 1}};
  }
  std::vector<std::pair<uint64_t, uint64_t>> out;
  std::vector<uint64_t> idx(k, 0);
  for (uint64_t r = 0; r < runs; ++r) {
    uint64_t start = c.offsets[dims[k]] * stride[k];
    for (size_t j = 0; j < k; ++j) start += (c.offsets[dims[j]] + idx[j]) * stride[j];
    out.push_back({start, start + run_len});
    for (size_t j = k; j-- > 0;) {  // odometer over dims[0..k)
      if (++idx[j] < c.sizes[dims[j]]) break;
      idx[j] = 0;
    }
  }
  return out;
}

std::pair<uint64_t, uint64_t> ShardMapWidget::Span(int chunk, int dim) const {
  if (dim < 0) return {0, 1};
  const Chunk& c = tensor_->chunks[chunk];
  if (static_cast<size_t>(dim) >= c.offsets.size()) return {0, Extent(dim)};
  return {c.offsets[dim], c.offsets[dim] + c.sizes[dim]};
}

void ShardMapWidget::ComputeCoverage() {
  gaps_.clear();
  overlaps_.clear();
  row_bounds_.clear();
  col_bounds_.clear();
  gap_notes_.clear();
  coverage_exact_ = true;
  if (tensor_ == nullptr) return;
  const size_t rank = tensor_->shape.size();
  const auto& chunks = tensor_->chunks;
  for (const Chunk& c : chunks) {
    if (c.offsets.size() != rank) {
      coverage_exact_ = false;  // rank mismatch: reported as a problem, not drawn
      return;
    }
  }
  const uint64_t rows_n = Extent(row_dim_), cols_n = Extent(col_dim_);
  std::vector<std::vector<std::pair<uint64_t, uint64_t>>> cols_of(chunks.size());
  std::set<uint64_t> rows = {0, rows_n}, cols = {0, cols_n};
  for (size_t i = 0; i < chunks.size(); ++i) {
    auto [r0, r1] = Span(static_cast<int>(i), row_dim_);
    rows.insert(std::min(r0, rows_n));
    rows.insert(std::min(r1, rows_n));
    cols_of[i] = ColIntervals(static_cast<int>(i));
    for (auto [c0, c1] : cols_of[i]) {
      cols.insert(std::min(c0, cols_n));
      cols.insert(std::min(c1, cols_n));
    }
    if (rows.size() > kMaxGridLines || cols.size() > kMaxGridLines) {
      coverage_exact_ = false;
      return;
    }
  }
  // Folded (hidden) dimensions: none in kRest mode.
  std::vector<int> hidden;
  if (col_dim_ != kRest) {
    for (int d = 0; d < static_cast<int>(rank); ++d) {
      if (d != row_dim_ && d != col_dim_) hidden.push_back(d);
    }
  }
  long double hidden_total = 1;
  for (int d : hidden) hidden_total *= static_cast<long double>(tensor_->shape[d]);
  std::vector<uint64_t> rv(rows.begin(), rows.end()), cv(cols.begin(), cols.end());
  row_bounds_ = rv;
  col_bounds_ = cv;
  for (size_t ri = 0; ri + 1 < rv.size(); ++ri) {
    for (size_t ci = 0; ci + 1 < cv.size(); ++ci) {
      const Cell cell{rv[ri], rv[ri + 1], cv[ci], cv[ci + 1]};
      if (cell.r0 == cell.r1 || cell.c0 == cell.c1) continue;
      std::vector<int> covering;
      for (size_t i = 0; i < chunks.size(); ++i) {
        auto [r0, r1] = Span(static_cast<int>(i), row_dim_);
        if (!(r0 <= cell.r0 && cell.r1 <= r1)) continue;
        for (auto [c0, c1] : cols_of[i]) {
          if (c0 <= cell.c0 && cell.c1 <= c1) {
            covering.push_back(static_cast<int>(i));
            break;
          }
        }
      }
      bool overlap = false;
      long double volume = 0;
      for (size_t a = 0; a < covering.size() && !overlap; ++a) {
        long double v = 1;
        for (int d : hidden) {
          auto [lo, hi] = Span(covering[a], d);
          v *= static_cast<long double>(hi - lo);
        }
        volume += v;
        for (size_t b = a + 1; b < covering.size(); ++b) {
          bool intersects = true;
          for (int d : hidden) {
            auto [a0, a1] = Span(covering[a], d);
            auto [b0, b1] = Span(covering[b], d);
            if (a1 <= b0 || b1 <= a0) intersects = false;
          }
          if (intersects) overlap = true;
        }
      }
      if (overlap) {
        overlaps_.push_back(cell);
      } else if (volume < hidden_total) {
        gaps_.push_back(cell);
      }
    }
  }
}

double ShardMapWidget::NoteHeight(const QString& note) const {
  const QFontMetricsF fm(font());
  const QRectF r = fm.boundingRect(QRectF(0, 0, std::max(40, width() - 16), 1000),
                                   Qt::AlignLeft | Qt::TextWordWrap, note);
  return std::min(r.height(), 2 * fm.height()) + 2;  // at most two lines
}

double ShardMapWidget::BottomReserve() const {
  double h = kLegendHeight;
  for (const QString& n : gap_notes_) h += NoteHeight(n);
  return h;
}

void ShardMapWidget::Relayout() {
  ComputeGapNotes();
  const double aw = std::max(10.0, width() - kLeft - kRight);
  const double ah = std::max(10.0, height() - kTop - kBottom - BottomReserve());
  aspect_compressed_ = false;
  if (!proportional_) {
    tensor_rect_ = QRectF(kLeft, kTop, aw, ah);  // schematic: the whole panel
  } else {
    const double rows = static_cast<double>(std::max<uint64_t>(1, Extent(row_dim_)));
    const double cols = static_cast<double>(std::max<uint64_t>(1, Extent(col_dim_)));
    double aspect = cols / rows;  // width / height
    if (aspect > kMaxAspect) aspect = kMaxAspect, aspect_compressed_ = true;
    if (aspect < 1 / kMaxAspect) aspect = 1 / kMaxAspect, aspect_compressed_ = true;
    double w = aw, h = aw / aspect;
    if (h > ah) h = ah, w = ah * aspect;
    tensor_rect_ = QRectF(kLeft + (aw - w) / 2, kTop + (ah - h) / 2, w, h);
  }
  ComputeLabels();
}

double ShardMapWidget::MapRow(uint64_t v) const {
  const QRectF& t = tensor_rect_;
  if (!proportional_ && row_bounds_.size() >= 2) return t.top() + t.height() * Band(v, row_bounds_);
  return t.top() + t.height() * static_cast<double>(v) /
                       static_cast<double>(std::max<uint64_t>(1, Extent(row_dim_)));
}

double ShardMapWidget::MapCol(uint64_t v) const {
  const QRectF& t = tensor_rect_;
  if (!proportional_ && col_bounds_.size() >= 2) return t.left() + t.width() * Band(v, col_bounds_);
  return t.left() + t.width() * static_cast<double>(v) /
                        static_cast<double>(std::max<uint64_t>(1, Extent(col_dim_)));
}

QRectF ShardMapWidget::CellRect(const Cell& c) const {
  return QRectF(QPointF(MapCol(c.c0), MapRow(c.r0)), QPointF(MapCol(c.c1), MapRow(c.r1)));
}

void ShardMapWidget::ComputeGapNotes() {
  gap_notes_.clear();
  if (tensor_ == nullptr || layout_ == nullptr || gaps_.empty()) return;
  // Which ranks hold a chunk of this tensor, and which ranks the checkpoint has files of.
  std::set<int> holding, with_files;
  int max_rank = -1;
  for (const Chunk& c : tensor_->chunks) holding.insert(RankOfFile(*layout_, c.file));
  for (size_t f = 0; f < layout_->files().size(); ++f) {
    if (!layout_->files()[f].shard) continue;
    const int r = *layout_->files()[f].shard - 1;
    with_files.insert(r);
    max_rank = std::max(max_rank, r);
  }
  std::vector<int> missing;  // ranks without a chunk of this tensor, in order, then the next one
  for (int r = 0; r <= max_rank; ++r) {
    if (!holding.count(r)) missing.push_back(r);
  }
  if (missing.size() < gaps_.size()) {
    for (int r = max_rank + 1; missing.size() < gaps_.size(); ++r) missing.push_back(r);
  }
  auto file_of = [&](int r) -> QString {
    for (const FileInfo& f : layout_->files()) {
      if (f.shard && *f.shard - 1 == r) return QString::fromStdString(f.name);
    }
    for (const FileInfo& f : layout_->files()) {  // the name it would have
      absl::StatusOr<FileIndex> fi = ParseFileIndex(f.name);
      if (fi.ok() && fi->shard)
        return QString::fromStdString(ShardFileName(r, fi->index, fi->count));
    }
    return {};
  };
  const bool per_rank = max_rank >= 0;
  for (size_t g = 0; g < gaps_.size(); ++g) {
    const Cell& c = gaps_[g];
    QString where = QString("missing: rows %1, columns %2")
                        .arg(Slice(c.r0, c.r1 - c.r0), Slice(c.c0, c.c1 - c.c0));
    if (per_rank && g < missing.size()) {
      const int r = missing[g];
      const QString f = file_of(r);
      where += QString(" — probably rank %1").arg(r);
      if (!f.isEmpty()) {
        where += with_files.count(r) ? QString(" (file %1)").arg(f)
                                     : QString(" (file %1, which is not in the checkpoint)").arg(f);
      }
    } else if (!per_rank) {
      where += " — no file of the checkpoint holds it";
    }
    gap_notes_.push_back(where);
  }
}

void ShardMapWidget::ComputeLabels() {
  labels_.clear();
  if (tensor_ == nullptr || layout_ == nullptr) return;
  const QFontMetricsF fm(font());
  const QColor black(Qt::black), white(Qt::white);
  auto colours = [&](const QColor& fill, Label* l) {
    l->bg = fill;
    l->fg = Contrast(black, fill) >= Contrast(white, fill) ? black : white;
    if (Contrast(l->fg, l->bg) < 4.5) {  // neither reaches it: a plate under the text
      l->bg = palette().color(QPalette::Base);
      l->fg = palette().color(QPalette::Text);
      if (Contrast(l->fg, l->bg) < 4.5) l->bg = white, l->fg = black;
    }
  };
  for (int i = 0; i < static_cast<int>(tensor_->chunks.size()); ++i) {
    const std::vector<QRectF> stripes = ChunkRects(i);
    if (stripes.size() != 1) continue;  // striped chunks: tooltips and the chunk table name them
    const QRectF r = stripes[0];
    const Chunk& c = tensor_->chunks[i];
    const int rank = RankOfFile(*layout_, c.file);
    const QString who = layout_->files()[c.file].shard ? QString("rank %1").arg(rank)
                                                       : QString("file %1").arg(rank + 1);
    QString slice;
    for (size_t d = 0; d < c.offsets.size(); ++d) {
      if (col_dim_ != kRest && static_cast<int>(d) != row_dim_ && static_cast<int>(d) != col_dim_)
        continue;
      if (!slice.isEmpty()) slice += ", ";
      slice += Slice(c.offsets[d], c.sizes[d]);
    }
    Label l;
    l.chunk = i;
    const QString full = QString("%1\n[%2]").arg(who, slice);
    const QRectF need = fm.boundingRect(QRectF(0, 0, 4000, 400), Qt::AlignCenter, full);
    const double short_w = fm.horizontalAdvance(QString::number(rank));
    if (r.width() > need.width() + 6 && r.height() > need.height() + 4) {
      l.text = full;
      l.rect = r;
    } else if (r.width() > fm.horizontalAdvance(who) + 6 && r.height() > fm.height() + 2) {
      l.text = who;
      l.rect = r;
    } else if (r.height() > fm.horizontalAdvance(who) + 6 && r.width() > fm.height() + 2) {
      l.text = who;  // narrow and tall: written bottom to top
      l.rect = r;
      l.rotated = true;
    } else if (r.width() > short_w + 4 && r.height() > fm.height()) {
      l.text = QString::number(rank);
      l.rect = r;
    } else {
      continue;  // too small for any text: the tooltip and the chunk table name it
    }
    colours(ChunkFill(i), &l);
    labels_.push_back(std::move(l));
  }
  // Gaps and overlaps are always labelled, on a plate, inside when they fit, else centred on
  // them (the hatching alone is easy to miss).
  QFont bold = font();
  bold.setBold(true);
  const QFontMetricsF bm(bold);
  auto mark = [&](const Cell& cell, const QString& text, const QColor& fg) {
    const QRectF r = CellRect(cell);
    Label l;
    l.text = text;
    const QSizeF sz(bm.horizontalAdvance(text) + 8, bm.height() + 2);
    QRectF at(r.center() - QPointF(sz.width() / 2, sz.height() / 2), sz);
    at.moveLeft(std::clamp(at.left(), 0.0, std::max(0.0, width() - sz.width())));
    at.moveTop(std::clamp(at.top(), 0.0, std::max(0.0, height() - sz.height())));
    l.rect = at;
    l.bg = white;
    l.fg = fg;
    labels_.push_back(std::move(l));
  };
  for (const Cell& g : gaps_) mark(g, "GAP", QColor(160, 0, 0));
  for (const Cell& o : overlaps_) mark(o, "OVERLAP", QColor(120, 50, 0));
}

std::vector<QRectF> ShardMapWidget::ChunkRects(int chunk) const {
  if (tensor_ == nullptr || chunk < 0 || chunk >= static_cast<int>(tensor_->chunks.size()))
    return {};
  auto [r0, r1] = Span(chunk, row_dim_);
  std::vector<QRectF> out;
  for (auto [c0, c1] : ColIntervals(chunk)) out.push_back(CellRect({r0, r1, c0, c1}));
  return out;
}

QRectF ShardMapWidget::ChunkRect(int chunk) const {
  QRectF r;
  for (const QRectF& s : ChunkRects(chunk)) r = r.isNull() ? s : r.united(s);
  return r;
}

int ShardMapWidget::ChunkAt(QPointF p) const {
  if (tensor_ == nullptr) return -1;
  // Topmost (last drawn) first; the selected chunk is drawn last.
  auto hit = [&](int i) {
    if (!ChunkRect(i).contains(p)) return false;
    for (const QRectF& r : ChunkRects(i)) {
      // Stripes thinner than a pixel are hit within half a pixel.
      if (r.adjusted(r.width() < 1 ? -0.5 : 0, 0, r.width() < 1 ? 0.5 : 0, 0).contains(p))
        return true;
    }
    return false;
  };
  if (selected_ >= 0 && hit(selected_)) return selected_;
  for (int i = static_cast<int>(tensor_->chunks.size()) - 1; i >= 0; --i) {
    if (hit(i)) return i;
  }
  return -1;
}

void ShardMapWidget::SelectChunk(int chunk) {
  if (tensor_ == nullptr || chunk >= static_cast<int>(tensor_->chunks.size())) chunk = -1;
  if (chunk == selected_) return;
  selected_ = chunk;
  update();
}

QString ShardMapWidget::ChunkDescription(int chunk) const {
  if (tensor_ == nullptr || chunk < 0 || chunk >= static_cast<int>(tensor_->chunks.size()))
    return {};
  const Chunk& c = tensor_->chunks[chunk];
  const FileInfo& f = layout_->files()[c.file];
  QString slice;
  for (size_t d = 0; d < c.offsets.size(); ++d) {
    if (d) slice += ", ";
    slice += Slice(c.offsets[d], c.sizes[d]);
  }
  QString text =
      QString(
          "<b>%1</b>[%2]<br>file <b>%3</b>%4<br>offsets %5, sizes %6<br>bytes %7 – %8 of the file "
          "(%9)")
          .arg(QString::fromStdString(tensor_->name).toHtmlEscaped(), slice,
               QString::fromStdString(f.name).toHtmlEscaped(),
               f.shard ? QString(" (rank %1)").arg(*f.shard - 1) : QString(), DimsText(c.offsets),
               DimsText(c.sizes), QString::number(static_cast<qulonglong>(c.begin)),
               QString::number(static_cast<qulonglong>(c.end)), HumanBytes(c.end - c.begin));
  if (!c.key.empty()) {
    // PyTorch's newest layout: this chunk is stored under its own key in the rank file.
    text += QString("<br>stored as <b>%1</b>").arg(QString::fromStdString(c.key).toHtmlEscaped());
  }
  return text;
}

void ShardMapWidget::resizeEvent(QResizeEvent*) {
  Relayout();
}

void ShardMapWidget::mousePressEvent(QMouseEvent* e) {
  const int c = ChunkAt(e->position());
  SelectChunk(c);
  if (c >= 0) emit chunkClicked(c);
}

void ShardMapWidget::keyPressEvent(QKeyEvent* e) {
  if (tensor_ == nullptr || tensor_->chunks.empty()) return QWidget::keyPressEvent(e);
  const int n = static_cast<int>(tensor_->chunks.size());
  int next = selected_;
  if (e->key() == Qt::Key_Right || e->key() == Qt::Key_Down)
    next = (selected_ + 1) % n;
  else if (e->key() == Qt::Key_Left || e->key() == Qt::Key_Up)
    next = (selected_ <= 0 ? n : selected_) - 1;
  else
    return QWidget::keyPressEvent(e);
  SelectChunk(next);
  emit chunkClicked(next);
}

bool ShardMapWidget::event(QEvent* e) {
  if (e->type() == QEvent::ToolTip) {
    auto* he = static_cast<QHelpEvent*>(e);
    const int c = ChunkAt(he->pos());
    QString text = ChunkDescription(c);
    if (c < 0) {
      for (const Cell& g : gaps_) {
        if (CellRect(g).contains(he->pos())) {
          text = QString("<b>gap</b>: rows %1, columns %2 are in no chunk")
                     .arg(Slice(g.r0, g.r1 - g.r0), Slice(g.c0, g.c1 - g.c0));
        }
      }
    }
    if (text.isEmpty())
      QToolTip::hideText();
    else
      QToolTip::showText(he->globalPos(), text, this);
    return true;
  }
  return QWidget::event(e);
}

QString ShardMapWidget::Subtitle() const {
  if (tensor_ == nullptr) return QString();
  std::set<int> files;
  for (const Chunk& c : tensor_->chunks) files.insert(c.file);
  auto dim_text = [this](int d) {
    if (d == kRest) {
      QStringList parts;
      for (int k = 0; k < static_cast<int>(tensor_->shape.size()); ++k) {
        if (k != row_dim_) parts << QString::number(k);
      }
      return QString("dims %1 flattened (%2)")
          .arg(parts.join(","), QString::number(static_cast<qulonglong>(Extent(kRest))));
    }
    return d < 0 ? QString("1")
                 : QString("dim %1 (%2)").arg(d).arg(static_cast<qulonglong>(tensor_->shape[d]));
  };
  QString sub =
      QString("%1 %2 · %3 chunks in %4 files · rows: %5 · columns: %6")
          .arg(QString::fromUtf8(DTypeName(tensor_->dtype).data()), DimsText(tensor_->shape))
          .arg(tensor_->chunks.size())
          .arg(files.size())
          .arg(dim_text(row_dim_), dim_text(col_dim_));
  // A block-quantized weight and its scale are one logical weight: said first, where the
  // line is never cut (the scheme before the long partner name).
  if (const quant::QuantPair* q = layout_->QuantPairOf(tensor_->name)) {
    sub =
        (q->weight == tensor_->name
             ? QString("quantized: %1, scales in %2 · ")
                   .arg(QString::fromStdString(q->Describe()), QString::fromStdString(q->scale))
             : QString("block scales (%1) of %2 · ")
                   .arg(QString::fromStdString(q->Describe()), QString::fromStdString(q->weight))) +
        sub;
  }
  if (aspect_compressed_) sub += " · aspect compressed";
  if (!proportional_) sub += " · schematic (equal room per slice)";
  if (!coverage_exact_) sub += " · coverage not drawn (see Problems)";
  return sub;
}

void ShardMapWidget::paintEvent(QPaintEvent*) {
  QPainter p(this);
  p.setRenderHint(QPainter::Antialiasing, false);
  p.fillRect(rect(), palette().base());
  if (tensor_ == nullptr) {
    p.setPen(palette().color(QPalette::PlaceholderText));
    p.drawText(rect(), Qt::AlignCenter,
               "Select a tensor to see which file holds which slice of it");
    return;
  }
  // Caption.
  QFont bold = font();
  bold.setBold(true);
  p.setFont(bold);
  p.setPen(palette().color(QPalette::Text));
  QString name = QString::fromStdString(tensor_->name);
  p.drawText(QRectF(8, 4, width() - 16, 20), Qt::AlignLeft | Qt::AlignVCenter,
             p.fontMetrics().elidedText(name, Qt::ElideMiddle, width() - 16));
  p.setFont(font());
  const QString sub = Subtitle();
  // Gaps and overlaps first, in red: they are why someone looks.
  QString alert;
  if (!gaps_.empty())
    alert += QString("%1 gap%2").arg(gaps_.size()).arg(gaps_.size() == 1 ? "" : "s");
  if (!overlaps_.empty()) {
    alert += QString("%1%2 overlap%3")
                 .arg(alert.isEmpty() ? "" : ", ")
                 .arg(overlaps_.size())
                 .arg(overlaps_.size() == 1 ? "" : "s");
  }
  double x = 8;
  if (!alert.isEmpty()) {
    p.setFont(bold);
    p.setPen(QColor(180, 0, 0));
    alert += " · ";
    p.drawText(QRectF(x, 22, width() - 16, 18), Qt::AlignLeft | Qt::AlignVCenter, alert);
    x += p.fontMetrics().horizontalAdvance(alert);
    p.setFont(font());
  }
  p.setPen(palette().color(QPalette::PlaceholderText));
  p.drawText(QRectF(x, 22, width() - x - 8, 18), Qt::AlignLeft | Qt::AlignVCenter,
             p.fontMetrics().elidedText(sub, Qt::ElideRight, static_cast<int>(width() - x - 8)));

  const QRectF t = tensor_rect_;
  // Axis labels: 0 and the extent along each shown dimension.
  p.setPen(palette().color(QPalette::Text));
  p.drawText(QRectF(t.left() - 60, t.top() - 2, 56, 16), Qt::AlignRight | Qt::AlignVCenter, "0");
  p.drawText(QRectF(t.left() - 60, t.bottom() - 14, 56, 16), Qt::AlignRight | Qt::AlignVCenter,
             QString::number(static_cast<qulonglong>(Extent(row_dim_))));
  p.drawText(QRectF(t.right() - 80, t.bottom() + 4, 80, 16), Qt::AlignRight | Qt::AlignTop,
             QString::number(static_cast<qulonglong>(Extent(col_dim_))));

  // Background of the global tensor.
  p.fillRect(t, palette().color(QPalette::AlternateBase));
  // Chunks, selected last.
  std::vector<int> order;
  for (int i = 0; i < static_cast<int>(tensor_->chunks.size()); ++i) {
    if (i != selected_) order.push_back(i);
  }
  if (selected_ >= 0) order.push_back(selected_);
  for (int i : order) {
    const QRectF r = ChunkRect(i);
    const std::vector<QRectF> stripes = ChunkRects(i);
    const QColor fill = ChunkFill(i);
    for (const QRectF& st : stripes)
      p.fillRect(st.adjusted(0, 0, st.width() < 1 ? 1 - st.width() : 0, 0), fill);
    const QPen outline(i == selected_ ? palette().color(QPalette::Highlight) : fill.darker(160),
                       i == selected_ ? 3 : 1);
    if (stripes.size() == 1) {
      p.setPen(outline);
      p.drawRect(r.adjusted(0.5, 0.5, -0.5, -0.5));
    } else if (i == selected_) {
      QPen dashed = outline;
      dashed.setStyle(Qt::DashLine);
      p.setPen(dashed);
      p.drawRect(r.adjusted(0.5, 0.5, -0.5, -0.5));
    }
  }
  // Gaps: red hatching; overlaps: cross-hatched dark orange.
  for (const Cell& g : gaps_) {
    const QRectF r = CellRect(g);
    p.fillRect(r, QColor(220, 40, 40, 50));
    p.fillRect(r, QBrush(QColor(200, 20, 20), Qt::BDiagPattern));
    p.setPen(QPen(QColor(200, 20, 20), 2, Qt::DashLine));
    p.drawRect(r.adjusted(1, 1, -1, -1));
  }
  for (const Cell& o : overlaps_) {
    const QRectF r = CellRect(o);
    p.fillRect(r, QBrush(QColor(150, 60, 0), Qt::DiagCrossPattern));
    p.setPen(QPen(QColor(150, 60, 0), 2));
    p.drawRect(r.adjusted(1, 1, -1, -1));
  }
  p.setPen(QPen(palette().color(QPalette::Text), 1));
  p.drawRect(t.adjusted(-0.5, -0.5, 0.5, 0.5));
  // Labels, exactly as computed (colours chosen for contrast).
  for (const Label& l : labels_) {
    const bool marker = l.chunk < 0;
    p.setFont(marker ? bold : font());
    if (marker || l.bg != ChunkFill(l.chunk)) {
      // A plate under the text: gap/overlap markers, and labels no text colour reads on.
      const QSizeF sz =
          marker ? l.rect.size()
                 : QSizeF(p.fontMetrics().horizontalAdvance(l.text.section('\n', 0, 0)) + 6,
                          p.fontMetrics().height() * (l.text.count('\n') + 1) + 2);
      QRectF plate(l.rect.center() - QPointF(sz.width() / 2, sz.height() / 2), sz);
      if (l.rotated)
        plate = QRectF(l.rect.center() - QPointF(sz.height() / 2, sz.width() / 2),
                       QSizeF(sz.height(), sz.width()));
      p.fillRect(plate, l.bg);
      if (marker) {
        p.setPen(QPen(l.fg, 1));
        p.drawRect(plate.adjusted(0.5, 0.5, -0.5, -0.5));
      }
    }
    p.setPen(l.fg);
    if (l.rotated) {
      p.save();
      p.translate(l.rect.center());
      p.rotate(-90);
      p.drawText(QRectF(-l.rect.height() / 2, -l.rect.width() / 2, l.rect.height(), l.rect.width()),
                 Qt::AlignCenter, l.text);
      p.restore();
    } else {
      p.drawText(l.rect, Qt::AlignCenter, l.text);
    }
  }
  p.setFont(font());
  // Legend: rank -> colour, for the ranks of this tensor.
  std::vector<std::pair<int, int>> ranks;  // rank, a chunk of it
  for (int i = 0; i < static_cast<int>(tensor_->chunks.size()); ++i) {
    const int r = RankOfFile(*layout_, tensor_->chunks[i].file);
    if (std::none_of(ranks.begin(), ranks.end(), [&](auto& e) { return e.first == r; }))
      ranks.push_back({r, i});
  }
  std::sort(ranks.begin(), ranks.end());
  const bool per_rank = std::any_of(layout_->files().begin(), layout_->files().end(),
                                    [](const FileInfo& f) { return f.shard.has_value(); });
  double lx = t.left();
  const double ly = t.bottom() + 20;
  const QFontMetrics fm = p.fontMetrics();
  for (size_t k = 0; k < ranks.size(); ++k) {
    const QString name = per_rank ? QString("rank %1").arg(ranks[k].first)
                                  : QString("file %1").arg(ranks[k].first + 1);
    const double w = 14 + fm.horizontalAdvance(name) + 12;
    const QString more = QString("+%1 more").arg(ranks.size() - k);
    if (lx + w + fm.horizontalAdvance(more) > width() - kRight && k + 1 < ranks.size()) {
      p.setPen(palette().color(QPalette::Text));
      p.drawText(QRectF(lx, ly, width() - lx, kLegendHeight - 4), Qt::AlignLeft | Qt::AlignVCenter,
                 more);
      break;
    }
    p.fillRect(QRectF(lx, ly + 4, 10, 10), ChunkFill(ranks[k].second));
    p.setPen(palette().color(QPalette::Text));
    p.drawRect(QRectF(lx, ly + 4, 10, 10));
    p.drawText(QRectF(lx + 14, ly, w, kLegendHeight - 4), Qt::AlignLeft | Qt::AlignVCenter, name);
    lx += w;
  }
  // What is missing, and where it probably went.
  double ny = ly + kLegendHeight;
  p.setPen(QColor(180, 0, 0));
  for (const QString& n : gap_notes_) {
    const double h = NoteHeight(n);
    p.drawText(QRectF(8, ny, width() - 16, h), Qt::AlignLeft | Qt::AlignTop | Qt::TextWordWrap, n);
    ny += h;
  }
}

}  // namespace safeshard::gui
