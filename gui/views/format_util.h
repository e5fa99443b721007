// format_util.h: shared text helpers of the inspector's views.
#ifndef SAFESHARD_GUI_VIEWS_FORMAT_UTIL_H_
#define SAFESHARD_GUI_VIEWS_FORMAT_UTIL_H_

#include <QString>
#include <cstdint>
#include <string>
#include <vector>

namespace safeshard::gui {

// 1536 -> "1.5 KiB", 0 -> "0 B".
QString HumanBytes(uint64_t bytes);
// {1, 2} -> "[1, 2]".
QString DimsText(const std::vector<uint64_t>& dims);
// Seconds -> "1 h 02 min", "3 min 05 s", "12 s".
QString HumanDuration(double seconds);

}  // namespace safeshard::gui

#endif  // SAFESHARD_GUI_VIEWS_FORMAT_UTIL_H_
