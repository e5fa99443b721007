// shard_map_widget.h: which chunk of which file holds which slice of one tensor.
//
// The global tensor is a rectangle of (row dim) x (columns) elements, where the columns are one
// chosen dimension, or kRest: every other dimension flattened in row-major order. By default the
// widget picks the dimensions itself: the ones the chunks are split along, the one with more
// pieces (then the longer one) horizontal; the dimensions not shown are folded: chunks that
// differ only there are drawn on top of each other (coverage is still computed exactly).
// Schematic mode (the default) gives every slice between two chunk boundaries an equal share of
// the panel, so an [32000, 4096] lm_head split 8 ways is 8 readable boxes, not 8 hairlines;
// SetProportional(true) draws true proportions instead. Every chunk is coloured by rank (legend
// below the map) and labelled with its rank and slice when it fits (rotated or shortened to the
// rank when narrow); label colours are chosen for a WCAG contrast of at least 4.5:1 (a backing
// plate when neither black nor white reaches it). Parts covered by no chunk are hatched red and
// labelled GAP, with a note under the map naming the rank (and file) that probably holds them;
// parts covered twice are cross-marked and labelled OVERLAP. Hovering a chunk shows its file and
// byte range; clicking selects it (chunkClicked).
//
//   ShardMapWidget map;
//   map.SetTensor(layout, layout->FindTensor("model.embed.weight"));
//   map.SetDims(0, 1);
//   QRectF r = map.ChunkRect(2);   // widget coordinates, for tests and hit testing
#ifndef SAFESHARD_GUI_VIEWS_SHARD_MAP_WIDGET_H_
#define SAFESHARD_GUI_VIEWS_SHARD_MAP_WIDGET_H_

#include <QWidget>
#include <memory>
#include <vector>

#include "core/layout/layout.h"

namespace safeshard::gui {

// A stable colour per rank (or per file for non-DCP checkpoints).
QColor RankColor(int rank);
// The rank a chunk's file belongs to: its shard number - 1, else its file index in the layout.
int RankOfFile(const CheckpointLayout& layout, int file);

class ShardMapWidget : public QWidget {
  Q_OBJECT

 public:
  explicit ShardMapWidget(QWidget* parent = nullptr);

  static constexpr int kRest = -2;  // columns: every dimension but the row one, flattened

  void SetTensor(std::shared_ptr<const CheckpointLayout> layout, const TensorLayout* tensor);
  // Which tensor dimensions are drawn as rows and columns (-1: none, i.e. extent 1; kRest).
  void SetDims(int row_dim, int col_dim);
  // The dimensions SetTensor picks: those the chunks are split along (the one with more pieces,
  // then the longer one, horizontal); for an unsplit tensor its two longest, longer horizontal.
  static std::pair<int, int> AutoDims(const TensorLayout& t);
  // True proportions instead of the schematic layout.
  void SetProportional(bool on);
  bool proportional() const { return proportional_; }
  // The caption's second line: quantization (first, never cut), dtype and shape, chunks and
  // files, the dims shown, the mode.
  QString Subtitle() const;
  int row_dim() const { return row_dim_; }
  int col_dim() const { return col_dim_; }
  const TensorLayout* tensor() const { return tensor_; }

  // Geometry in widget coordinates (valid after a resize; tests call resize() first).
  QRectF TensorRect() const { return tensor_rect_; }
  QRectF ChunkRect(int chunk) const;                // bounding rectangle
  std::vector<QRectF> ChunkRects(int chunk) const;  // its stripes (one rectangle unless kRest)
  // Element ranges [r0, r1) x [c0, c1) of the shown dims covered by no chunk / by two or more.
  struct Cell {
    uint64_t r0, r1, c0, c1;
  };
  const std::vector<Cell>& gaps() const { return gaps_; }
  const std::vector<Cell>& overlaps() const { return overlaps_; }
  QRectF CellRect(const Cell& c) const;
  bool aspect_compressed() const { return aspect_compressed_; }

  // What is written where (computed with the geometry; paint draws exactly these).
  struct Label {
    int chunk = -1;  // -1: a gap or overlap label
    QString text;
    QRectF rect;           // where the text goes (for rotated labels: the chunk's rectangle)
    bool rotated = false;  // drawn bottom to top
    QColor fg, bg;         // text colour and the opaque colour right under it
  };
  const std::vector<Label>& labels() const { return labels_; }
  // One line per gap under the map: where, and which rank (file) probably holds it.
  const std::vector<QString>& gap_notes() const { return gap_notes_; }
  // The fill of `chunk` as drawn (opaque).
  QColor ChunkFill(int chunk) const;

  int ChunkAt(QPointF p) const;  // -1 when none
  int selected_chunk() const { return selected_; }
  void SelectChunk(int chunk);
  QString ChunkDescription(int chunk) const;  // tooltip text

  QSize sizeHint() const override { return {640, 440}; }
  QSize minimumSizeHint() const override { return {240, 160}; }

 signals:
  void chunkClicked(int chunk);

 protected:
  void paintEvent(QPaintEvent*) override;
  void resizeEvent(QResizeEvent*) override;
  void mousePressEvent(QMouseEvent*) override;
  bool event(QEvent* e) override;
  void keyPressEvent(QKeyEvent*) override;

 private:
  uint64_t Extent(int dim) const;
  void Relayout();
  void ComputeCoverage();
  void ComputeLabels();
  void ComputeGapNotes();
  double MapRow(uint64_t v) const;  // element coordinate -> widget y
  double MapCol(uint64_t v) const;  // element coordinate -> widget x
  double BottomReserve() const;     // legend + gap notes
  double NoteHeight(const QString& note) const;
  // Interval of chunk c along `dim` (full extent when dim < 0).
  std::pair<uint64_t, uint64_t> Span(int chunk, int dim) const;
  // The chunk's column intervals (one, or its stripes in kRest mode; at most kMaxStripes, else
  // one bounding interval).
  std::vector<std::pair<uint64_t, uint64_t>> ColIntervals(int chunk) const;

  std::shared_ptr<const CheckpointLayout> layout_;
  const TensorLayout* tensor_ = nullptr;
  int row_dim_ = -1, col_dim_ = -1;
  QRectF tensor_rect_;
  bool aspect_compressed_ = false;
  std::vector<Cell> gaps_, overlaps_;
  bool coverage_exact_ = true;
  int selected_ = -1;
  bool proportional_ = false;
  std::vector<uint64_t> row_bounds_, col_bounds_;  // chunk boundaries (schematic mapping)
  std::vector<Label> labels_;
  std::vector<QString> gap_notes_;
};

}  // namespace safeshard::gui

#endif  // SAFESHARD_GUI_VIEWS_SHARD_MAP_WIDGET_H_
