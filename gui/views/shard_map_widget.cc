#include "gui/views/shard_map_widget.h"

#include <QHelpEvent>
#include <QKeyEvent>
#include <QMouseEvent>
#include <QPainter>
#include <QPainterPath>
#include <QToolTip>
#include <algorithm>
#include <set>

#include "gui/views/format_util.h"

namespace safeshard::gui {
namespace {

constexpr double kMaxAspect = 4.0;      // longer side at most 4x the shorter one
constexpr size_t kMaxGridLines = 512;   // per axis, for drawing gaps and overlaps exactly
constexpr uint64_t kMaxStripes = 1024;  // per chunk in "rest" mode
constexpr double kLeft = 64, kTop = 48, kRight = 16, kBottom = 30;

QString Slice(uint64_t off, uint64_t size) {
  return QString("%1:%2")
      .arg(static_cast<qulonglong>(off))
      .arg(static_cast<qulonglong>(off + size));
}

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
  const size_t rank = tensor_ ? tensor_->shape.size() : 0;
  row_dim_ = rank >= 2 ? 0 : -1;
  col_dim_ = rank >= 3 ? kRest : (rank == 2 ? 1 : (rank == 1 ? 0 : -1));
  ComputeCoverage();
  Relayout();
  update();
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

void ShardMapWidget::Relayout() {
  const double aw = std::max(10.0, width() - kLeft - kRight);
  const double ah = std::max(10.0, height() - kTop - kBottom);
  const double rows = static_cast<double>(std::max<uint64_t>(1, Extent(row_dim_)));
  const double cols = static_cast<double>(std::max<uint64_t>(1, Extent(col_dim_)));
  double aspect = cols / rows;  // width / height
  aspect_compressed_ = false;
  if (aspect > kMaxAspect) aspect = kMaxAspect, aspect_compressed_ = true;
  if (aspect < 1 / kMaxAspect) aspect = 1 / kMaxAspect, aspect_compressed_ = true;
  double w = aw, h = aw / aspect;
  if (h > ah) h = ah, w = ah * aspect;
  tensor_rect_ = QRectF(kLeft + (aw - w) / 2, kTop + (ah - h) / 2, w, h);
}

QRectF ShardMapWidget::CellRect(const Cell& c) const {
  const double rows = static_cast<double>(std::max<uint64_t>(1, Extent(row_dim_)));
  const double cols = static_cast<double>(std::max<uint64_t>(1, Extent(col_dim_)));
  const QRectF& t = tensor_rect_;
  const double x0 = t.left() + t.width() * c.c0 / cols, x1 = t.left() + t.width() * c.c1 / cols;
  const double y0 = t.top() + t.height() * c.r0 / rows, y1 = t.top() + t.height() * c.r1 / rows;
  return QRectF(QPointF(x0, y0), QPointF(x1, y1));
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
  std::set<int> files;
  for (const Chunk& c : tensor_->chunks) files.insert(c.file);
  const QString name = QString::fromStdString(tensor_->name);
  p.drawText(QRectF(8, 4, width() - 16, 20), Qt::AlignLeft | Qt::AlignVCenter,
             p.fontMetrics().elidedText(name, Qt::ElideMiddle, width() - 16));
  p.setFont(font());
  auto dim_text = [&](int d) {
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
  if (aspect_compressed_) sub += " · aspect compressed";
  if (!gaps_.empty()) sub += QString(" · %1 gap region(s)").arg(gaps_.size());
  if (!overlaps_.empty()) sub += QString(" · %1 overlap region(s)").arg(overlaps_.size());
  if (!coverage_exact_) sub += " · coverage not drawn (see Problems)";
  p.setPen(palette().color(QPalette::PlaceholderText));
  p.drawText(QRectF(8, 22, width() - 16, 18), Qt::AlignLeft | Qt::AlignVCenter,
             p.fontMetrics().elidedText(sub, Qt::ElideRight, width() - 16));

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
    const int rank = RankOfFile(*layout_, tensor_->chunks[i].file);
    QColor fill = RankColor(rank);
    fill.setAlpha(i == selected_ ? 235 : 190);
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
    if (stripes.size() > 1) continue;  // striped chunks: tooltips and the chunk table name them
    // Label when it fits.
    const Chunk& c = tensor_->chunks[i];
    QString slice;
    for (size_t d = 0; d < c.offsets.size(); ++d) {
      if (col_dim_ != kRest && static_cast<int>(d) != row_dim_ && static_cast<int>(d) != col_dim_)
        continue;
      if (!slice.isEmpty()) slice += ", ";
      slice += Slice(c.offsets[d], c.sizes[d]);
    }
    const QString label =
        QString("%1\n[%2]")
            .arg(layout_->files()[c.file].shard ? QString("rank %1").arg(rank)
                                                : QString("file %1").arg(rank + 1),
                 slice);
    const QRect needed =
        p.fontMetrics().boundingRect(QRect(0, 0, 1000, 100), Qt::AlignCenter, label);
    if (r.width() > needed.width() + 6 && r.height() > needed.height() + 4) {
      p.setPen(fill.lightness() > 150 ? Qt::black : Qt::white);
      p.drawText(r, Qt::AlignCenter, label);
    } else if (r.width() > p.fontMetrics().horizontalAdvance("r00") + 4 &&
               r.height() > p.fontMetrics().height()) {
      p.setPen(fill.lightness() > 150 ? Qt::black : Qt::white);
      p.drawText(r, Qt::AlignCenter, QString::number(rank));
    }
  }
  // Gaps: red hatching; overlaps: cross-hatched dark orange.
  for (const Cell& g : gaps_) {
    const QRectF r = CellRect(g);
    p.fillRect(r, QColor(220, 40, 40, 50));
    p.fillRect(r, QBrush(QColor(200, 20, 20), Qt::BDiagPattern));
    p.setPen(QPen(QColor(200, 20, 20), 2, Qt::DashLine));
    p.drawRect(r.adjusted(1, 1, -1, -1));
    if (r.width() > 40 && r.height() > 18) {
      p.setPen(QColor(160, 0, 0));
      p.setFont(bold);
      p.drawText(r, Qt::AlignCenter, "GAP");
      p.setFont(font());
    }
  }
  for (const Cell& o : overlaps_) {
    const QRectF r = CellRect(o);
    p.fillRect(r, QBrush(QColor(150, 60, 0), Qt::DiagCrossPattern));
    p.setPen(QPen(QColor(150, 60, 0), 2));
    p.drawRect(r.adjusted(1, 1, -1, -1));
  }
  p.setPen(QPen(palette().color(QPalette::Text), 1));
  p.drawRect(t.adjusted(-0.5, -0.5, 0.5, 0.5));
}

}  // namespace safeshard::gui
