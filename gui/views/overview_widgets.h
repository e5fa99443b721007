// overview_widgets.h: whole-checkpoint pictures.
//
//   RankFileHeatMap  bytes per rank (rows) per model file (columns); click a cell -> its file
//   ByteMapWidget    every file as a bar: header, then its tensors as proportional segments
//                    coloured by dtype; hover for name and byte range, click -> tensor
#ifndef SAFESHARD_GUI_VIEWS_OVERVIEW_WIDGETS_H_
#define SAFESHARD_GUI_VIEWS_OVERVIEW_WIDGETS_H_

#include <QWidget>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/layout/layout.h"

namespace safeshard::gui {

class RankFileHeatMap : public QWidget {
  Q_OBJECT

 public:
  explicit RankFileHeatMap(QWidget* parent = nullptr);
  void SetLayout(std::shared_ptr<const CheckpointLayout> layout);

  int row_count() const { return static_cast<int>(row_labels_.size()); }
  int column_count() const { return static_cast<int>(col_labels_.size()); }
  uint64_t CellBytes(int row, int col) const;
  // Files of layout->files() in a cell (usually one).
  const std::vector<int>& CellFiles(int row, int col) const;
  QRectF CellRect(int row, int col) const;
  std::pair<int, int> CellAt(QPointF p) const;  // (-1, -1) when none
  QSize sizeHint() const override;

 signals:
  void fileClicked(int file);

 protected:
  void paintEvent(QPaintEvent*) override;
  void mousePressEvent(QMouseEvent*) override;
  bool event(QEvent* e) override;

 private:
  double CellWidth() const;
  std::shared_ptr<const CheckpointLayout> layout_;
  std::vector<QString> row_labels_, col_labels_;
  std::vector<std::vector<uint64_t>> bytes_;
  std::vector<std::vector<std::vector<int>>> files_;
  uint64_t max_ = 0;
};

class ByteMapWidget : public QWidget {
  Q_OBJECT

 public:
  explicit ByteMapWidget(QWidget* parent = nullptr);
  void SetLayout(std::shared_ptr<const CheckpointLayout> layout);
  void SetSelectedFile(int file);
  int selected_file() const { return selected_file_; }
  // The tensor whose segments are outlined in every file (-1: none); an index into the layout.
  void SetSelectedTensor(int tensor);
  int selected_tensor() const { return selected_tensor_; }

  struct Segment {
    uint64_t begin, end;  // absolute bytes in the file
    int tensor;           // index into layout->tensors(), -1 for the header
  };
  const std::vector<Segment>& Segments(int file) const { return segments_[file]; }
  QRectF RowRect(int file) const;  // the bar of a file
  // (file, segment index) under a point; segment -1 for unused bytes; file -1 for none.
  std::pair<int, int> SegmentAt(QPointF p) const;
  QSize sizeHint() const override;

 signals:
  void fileClicked(int file);
  void tensorClicked(const QString& name);

 protected:
  void paintEvent(QPaintEvent*) override;
  void mousePressEvent(QMouseEvent*) override;
  bool event(QEvent* e) override;

 private:
  std::shared_ptr<const CheckpointLayout> layout_;
  std::vector<std::vector<Segment>> segments_;
  int selected_file_ = -1;
  int selected_tensor_ = -1;
};

QColor DTypeColor(DType d);

}  // namespace safeshard::gui

#endif  // SAFESHARD_GUI_VIEWS_OVERVIEW_WIDGETS_H_
