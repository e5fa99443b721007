#include "gui/views/overview_widgets.h"

#include <QHelpEvent>
#include <QMouseEvent>
#include <QPainter>
#include <QToolTip>
#include <algorithm>
#include <cmath>

#include "gui/views/format_util.h"
#include "gui/views/shard_map_widget.h"

namespace safeshard::gui {
namespace {
constexpr double kHeatLeft = 70, kHeatTop = 26, kHeatRow = 26, kHeatMinCol = 92, kHeatMaxCol = 180;
constexpr double kMapLeft = 230, kMapTop = 28, kMapRow = 24, kMapRight = 10;
QString Q(const std::string& s) {
  return QString::fromStdString(s);
}
}  // namespace

QColor DTypeColor(DType d) {
  // Pastel (ColorBrewer Set3-like) hues, one per dtype: a different palette from the shard map's
  // saturated rank colours, so a colour never means a rank here and a dtype there. Integer,
  // unsigned and F8 families get neighbouring but distinct shades.
  switch (d) {
    case DType::kBF16: return QColor(0x80b1d3);
    case DType::kF16: return QColor(0x8dd3c7);
    case DType::kF32: return QColor(0xfdb462);
    case DType::kF64: return QColor(0xfb8072);
    case DType::kC64: return QColor(0xe78ac3);
    case DType::kBOOL: return QColor(0xd9d9d9);
    case DType::kF8_E4M3: return QColor(0xbc80bd);
    case DType::kF8_E5M2: return QColor(0xbebada);
    case DType::kF8_E4M3FNUZ: return QColor(0xfccde5);
    case DType::kF8_E5M2FNUZ: return QColor(0xdecbe4);
    case DType::kF8_E8M0: return QColor(0xc2a5cf);
    case DType::kF4: return QColor(0xf1b6da);
    case DType::kF6_E2M3: return QColor(0xde77ae);
    case DType::kF6_E3M2: return QColor(0xf4a582);
    case DType::kI8: return QColor(0xccebc5);
    case DType::kI16: return QColor(0xb3de69);
    case DType::kI32: return QColor(0x8dc86b);
    case DType::kI64: return QColor(0x66a61e);
    case DType::kU8: return QColor(0xffffb3);
    case DType::kU16: return QColor(0xffed6f);
    case DType::kU32: return QColor(0xe5c494);
    case DType::kU64: return QColor(0xd8b365);
  }
  return QColor(0x999999);
}

// ---------------------------------------------------------------- heat map

RankFileHeatMap::RankFileHeatMap(QWidget* parent) : QWidget(parent) {
  setMouseTracking(true);
  setAccessibleName("Bytes per rank and file");
}

void RankFileHeatMap::SetLayout(std::shared_ptr<const CheckpointLayout> layout) {
  layout_ = std::move(layout);
  row_labels_.clear();
  col_labels_.clear();
  bytes_.clear();
  files_.clear();
  max_ = 0;
  if (layout_) {
    std::map<int, int> rows;          // shard (or 0 for none) -> row
    std::map<std::string, int> cols;  // model file key -> column
    auto col_key = [](const FileInfo& f) {
      if (f.file_index) {
        char buf[32];
        std::snprintf(buf, sizeof buf, "model-%05d", *f.file_index);
        return std::string(buf);
      }
      return f.name;
    };
    for (const FileInfo& f : layout_->files()) {
      rows.emplace(f.shard.value_or(0), 0);
      cols.emplace(col_key(f), 0);
    }
    int i = 0;
    for (auto& [shard, row] : rows) {
      row = i++;
      row_labels_.push_back(shard == 0 ? QString("all") : QString("rank %1").arg(shard - 1));
    }
    i = 0;
    for (auto& [key, col] : cols) {
      col = i++;
      col_labels_.push_back(Q(key));
    }
    bytes_.assign(rows.size(), std::vector<uint64_t>(cols.size(), 0));
    files_.assign(rows.size(), std::vector<std::vector<int>>(cols.size()));
    for (int f = 0; f < static_cast<int>(layout_->files().size()); ++f) {
      const FileInfo& fi = layout_->files()[f];
      const int r = rows[fi.shard.value_or(0)], c = cols[col_key(fi)];
      bytes_[r][c] += fi.header ? fi.header->buffer_size : 0;
      files_[r][c].push_back(f);
      max_ = std::max(max_, bytes_[r][c]);
    }
  }
  updateGeometry();
  update();
}

uint64_t RankFileHeatMap::CellBytes(int r, int c) const {
  return bytes_[r][c];
}
const std::vector<int>& RankFileHeatMap::CellFiles(int r, int c) const {
  return files_[r][c];
}

double RankFileHeatMap::CellWidth() const {
  if (col_labels_.empty()) return kHeatMinCol;
  return std::clamp((width() - kHeatLeft - 8) / col_labels_.size(), kHeatMinCol, kHeatMaxCol);
}

QRectF RankFileHeatMap::CellRect(int r, int c) const {
  return QRectF(kHeatLeft + c * CellWidth(), kHeatTop + r * kHeatRow, CellWidth() - 2,
                kHeatRow - 2);
}

std::pair<int, int> RankFileHeatMap::CellAt(QPointF p) const {
  if (p.x() < kHeatLeft || p.y() < kHeatTop) return {-1, -1};
  const int c = static_cast<int>((p.x() - kHeatLeft) / CellWidth());
  const int r = static_cast<int>((p.y() - kHeatTop) / kHeatRow);
  if (r >= row_count() || c >= column_count()) return {-1, -1};
  return {r, c};
}

QSize RankFileHeatMap::sizeHint() const {
  return QSize(static_cast<int>(kHeatLeft + column_count() * kHeatMinCol + 8),
               static_cast<int>(kHeatTop + row_count() * kHeatRow + 8));
}

void RankFileHeatMap::paintEvent(QPaintEvent*) {
  QPainter p(this);
  p.fillRect(rect(), palette().base());
  if (!layout_ || row_labels_.empty()) {
    p.setPen(palette().color(QPalette::PlaceholderText));
    p.drawText(rect(), Qt::AlignCenter, "No checkpoint open");
    return;
  }
  p.setPen(palette().color(QPalette::Text));
  for (int c = 0; c < column_count(); ++c) {
    QRectF h(kHeatLeft + c * CellWidth(), 4, CellWidth() - 2, kHeatTop - 6);
    p.drawText(h, Qt::AlignCenter,
               p.fontMetrics().elidedText(col_labels_[c], Qt::ElideMiddle, h.width()));
  }
  const QColor hot(0x2b, 0x5c, 0x9e), cold = palette().color(QPalette::AlternateBase);
  for (int r = 0; r < row_count(); ++r) {
    p.setPen(palette().color(QPalette::Text));
    p.drawText(QRectF(4, kHeatTop + r * kHeatRow, kHeatLeft - 8, kHeatRow - 2),
               Qt::AlignRight | Qt::AlignVCenter, row_labels_[r]);
    for (int c = 0; c < column_count(); ++c) {
      const QRectF cell = CellRect(r, c);
      const double t = max_ ? std::sqrt(static_cast<double>(bytes_[r][c]) / max_) : 0;
      QColor fill = files_[r][c].empty()
                        ? cold
                        : QColor::fromRgbF(cold.redF() + (hot.redF() - cold.redF()) * t,
                                           cold.greenF() + (hot.greenF() - cold.greenF()) * t,
                                           cold.blueF() + (hot.blueF() - cold.blueF()) * t);
      p.fillRect(cell, fill);
      if (!files_[r][c].empty()) {
        p.setPen(t > 0.55 ? Qt::white : palette().color(QPalette::Text));
        p.drawText(cell, Qt::AlignCenter, HumanBytes(bytes_[r][c]));
      } else {
        p.setPen(palette().color(QPalette::PlaceholderText));
        p.drawText(cell, Qt::AlignCenter, "—");
      }
    }
  }
}

void RankFileHeatMap::mousePressEvent(QMouseEvent* e) {
  auto [r, c] = CellAt(e->position());
  if (r >= 0 && !files_[r][c].empty()) emit fileClicked(files_[r][c].front());
}

bool RankFileHeatMap::event(QEvent* e) {
  if (e->type() == QEvent::ToolTip) {
    auto* he = static_cast<QHelpEvent*>(e);
    auto [r, c] = CellAt(he->pos());
    if (r < 0) {
      QToolTip::hideText();
      return true;
    }
    QString names;
    for (int f : files_[r][c]) names += "<br>" + Q(layout_->files()[f].name).toHtmlEscaped();
    QToolTip::showText(he->globalPos(),
                       QString("<b>%1 × %2</b>: %3 of tensor data%4")
                           .arg(row_labels_[r], col_labels_[c], HumanBytes(bytes_[r][c]),
                                names.isEmpty() ? QString("<br>no file") : names),
                       this);
    return true;
  }
  return QWidget::event(e);
}

// ---------------------------------------------------------------- byte map

ByteMapWidget::ByteMapWidget(QWidget* parent) : QWidget(parent) {
  setMouseTracking(true);
  setAccessibleName("Byte map of every file");
}

void ByteMapWidget::SetLayout(std::shared_ptr<const CheckpointLayout> layout) {
  layout_ = std::move(layout);
  segments_.clear();
  selected_file_ = -1;
  if (layout_) {
    segments_.resize(layout_->files().size());
    for (size_t f = 0; f < layout_->files().size(); ++f) {
      const FileInfo& fi = layout_->files()[f];
      if (fi.header) segments_[f].push_back({0, fi.header->data_start(), -1});
    }
    for (size_t t = 0; t < layout_->tensors().size(); ++t) {
      for (const Chunk& c : layout_->tensors()[t].chunks) {
        segments_[c.file].push_back({c.begin, c.end, static_cast<int>(t)});
      }
    }
    for (auto& s : segments_) {
      std::sort(s.begin(), s.end(),
                [](const Segment& a, const Segment& b) { return a.begin < b.begin; });
    }
  }
  updateGeometry();
  update();
}

void ByteMapWidget::SetSelectedFile(int file) {
  selected_file_ = file;
  update();
}

QRectF ByteMapWidget::RowRect(int file) const {
  return QRectF(kMapLeft, kMapTop + file * kMapRow + 3,
                std::max(20.0, width() - kMapLeft - kMapRight), kMapRow - 6);
}

QSize ByteMapWidget::sizeHint() const {
  return QSize(640, static_cast<int>(kMapTop + segments_.size() * kMapRow + 8));
}

std::pair<int, int> ByteMapWidget::SegmentAt(QPointF p) const {
  if (!layout_) return {-1, -1};
  const int f = static_cast<int>((p.y() - kMapTop) / kMapRow);
  if (p.y() < kMapTop || f < 0 || f >= static_cast<int>(segments_.size())) return {-1, -1};
  const QRectF row = RowRect(f);
  if (p.x() < row.left() || p.x() > row.right()) return {f, -1};
  const uint64_t size = std::max<uint64_t>(1, layout_->files()[f].size);
  const double pos = (p.x() - row.left()) / row.width() * static_cast<double>(size);
  const auto& segs = segments_[f];
  // Last segment beginning at or before pos; widen by half a pixel so thin segments can be hit.
  const double slack = static_cast<double>(size) / row.width() / 2;
  auto it = std::upper_bound(segs.begin(), segs.end(), pos, [](double v, const Segment& s) {
    return v < static_cast<double>(s.begin);
  });
  for (auto j = it; j != segs.begin();) {
    --j;
    if (static_cast<double>(j->end) + slack >= pos) return {f, static_cast<int>(j - segs.begin())};
    break;
  }
  if (it != segs.end() && static_cast<double>(it->begin) - slack <= pos)
    return {f, static_cast<int>(it - segs.begin())};
  return {f, -1};
}

void ByteMapWidget::paintEvent(QPaintEvent* e) {
  QPainter p(this);
  p.fillRect(rect(), palette().base());
  if (!layout_ || segments_.empty()) {
    p.setPen(palette().color(QPalette::PlaceholderText));
    p.drawText(rect(), Qt::AlignCenter, "No checkpoint open");
    return;
  }
  // Legend: dtypes present.
  std::map<std::string, QColor> legend;
  for (const TensorLayout& t : layout_->tensors())
    legend[std::string(DTypeName(t.dtype))] = DTypeColor(t.dtype);
  double x = 8;
  p.setPen(palette().color(QPalette::Text));
  p.fillRect(QRectF(x, 8, 12, 12), QColor(0x55, 0x55, 0x55));
  p.drawText(QPointF(x + 16, 19), "header");
  x += 24 + p.fontMetrics().horizontalAdvance("header") + 12;
  for (const auto& [name, color] : legend) {
    p.fillRect(QRectF(x, 8, 12, 12), color);
    p.drawText(QPointF(x + 16, 19), QString::fromStdString(name));
    x += 28 + p.fontMetrics().horizontalAdvance(QString::fromStdString(name));
  }
  const int first = std::max(0, static_cast<int>((e->rect().top() - kMapTop) / kMapRow) - 1);
  const int last = std::min(static_cast<int>(segments_.size()) - 1,
                            static_cast<int>((e->rect().bottom() - kMapTop) / kMapRow) + 1);
  for (int f = first; f <= last; ++f) {
    const FileInfo& fi = layout_->files()[f];
    const QRectF row = RowRect(f);
    if (f == selected_file_) {
      p.fillRect(QRectF(0, row.top() - 3, width(), kMapRow),
                 palette().color(QPalette::Highlight).lighter(170));
    }
    p.setPen(fi.error ? QColor(200, 20, 20) : palette().color(QPalette::Text));
    p.drawText(
        QRectF(6, row.top() - 3, kMapLeft - 12, kMapRow), Qt::AlignLeft | Qt::AlignVCenter,
        p.fontMetrics().elidedText(Q(fi.name), Qt::ElideMiddle, static_cast<int>(kMapLeft - 12)));
    p.fillRect(row, palette().color(QPalette::AlternateBase));
    const double scale = row.width() / static_cast<double>(std::max<uint64_t>(1, fi.size));
    // Segments narrower than a pixel are merged into one-pixel marks.
    double last_px = -1;
    for (const Segment& s : segments_[f]) {
      const double x0 = row.left() + s.begin * scale, x1 = row.left() + s.end * scale;
      if (x1 - x0 < 1 && std::floor(x0) == last_px) continue;
      last_px = std::floor(x0);
      const QColor c =
          s.tensor < 0 ? QColor(0x55, 0x55, 0x55) : DTypeColor(layout_->tensors()[s.tensor].dtype);
      p.fillRect(QRectF(x0, row.top(), std::max(1.0, x1 - x0), row.height()), c);
      if (x1 - x0 >= 4) {
        p.setPen(c.darker(150));
        p.drawLine(QPointF(x1, row.top()), QPointF(x1, row.bottom()));
      }
    }
    // The selected tensor's bytes: outlined, at least 3 px wide, so even a thin one is found.
    if (selected_tensor_ >= 0) {
      for (const Segment& s : segments_[f]) {
        if (s.tensor != selected_tensor_) continue;
        const double x0 = row.left() + s.begin * scale, x1 = row.left() + s.end * scale;
        const double w = std::max(3.0, x1 - x0);
        p.setPen(QPen(palette().color(QPalette::Highlight), 2));
        p.setBrush(Qt::NoBrush);
        p.drawRect(QRectF((x0 + x1) / 2 - w / 2, row.top() - 1, w, row.height() + 2));
      }
    }
    if (fi.error) {
      p.setPen(QColor(200, 20, 20));
      p.drawText(row, Qt::AlignCenter,
                 p.fontMetrics().elidedText(Q(*fi.error), Qt::ElideRight, row.width()));
    }
  }
}

void ByteMapWidget::SetSelectedTensor(int tensor) {
  if (tensor == selected_tensor_) return;
  selected_tensor_ = tensor;
  update();
}

void ByteMapWidget::mousePressEvent(QMouseEvent* e) {
  auto [f, s] = SegmentAt(e->position());
  if (f < 0) return;
  SetSelectedFile(f);
  emit fileClicked(f);
  if (s >= 0 && segments_[f][s].tensor >= 0) {
    emit tensorClicked(Q(layout_->tensors()[segments_[f][s].tensor].name));
  }
}

bool ByteMapWidget::event(QEvent* e) {
  if (e->type() == QEvent::ToolTip) {
    auto* he = static_cast<QHelpEvent*>(e);
    auto [f, s] = SegmentAt(he->pos());
    if (f < 0) {
      QToolTip::hideText();
      return true;
    }
    const FileInfo& fi = layout_->files()[f];
    QString text = QString("<b>%1</b> (%2)").arg(Q(fi.name).toHtmlEscaped(), HumanBytes(fi.size));
    if (s >= 0) {
      const Segment& seg = segments_[f][s];
      const QString what = seg.tensor < 0 ? QString("header (8-byte length + JSON)")
                                          : Q(layout_->tensors()[seg.tensor].name).toHtmlEscaped();
      text += QString("<br>%1<br>bytes %2 – %3 (%4)")
                  .arg(what, QString::number(static_cast<qulonglong>(seg.begin)),
                       QString::number(static_cast<qulonglong>(seg.end)),
                       HumanBytes(seg.end - seg.begin));
    }
    QToolTip::showText(he->globalPos(), text, this);
    return true;
  }
  return QWidget::event(e);
}

}  // namespace safeshard::gui
