#include "gui/views/format_util.h"

#include <cmath>

#include "gui/models/format.h"

namespace safeshard::gui {

QString HumanBytes(uint64_t bytes) {
  return QString::fromStdString(FormatBytes(bytes));
}

QString DimsText(const std::vector<uint64_t>& dims) {
  QString s = "[";
  for (size_t i = 0; i < dims.size(); ++i) {
    if (i) s += ", ";
    s += QString::number(static_cast<qulonglong>(dims[i]));
  }
  return s + "]";
}

QString HumanDuration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  auto s = static_cast<qint64>(std::llround(seconds));
  if (s >= 3600)
    return QString("%1 h %2 min").arg(s / 3600).arg((s % 3600) / 60, 2, 10, QChar('0'));
  if (s >= 60) return QString("%1 min %2 s").arg(s / 60).arg(s % 60, 2, 10, QChar('0'));
  return QString("%1 s").arg(s);
}

}  // namespace safeshard::gui
