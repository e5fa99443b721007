// format.h: the inspector's byte sizes (three significant digits; numbers with thousands
// separators come from core/util/format.h's Grouped).
#ifndef SAFESHARD_GUI_MODELS_FORMAT_H_
#define SAFESHARD_GUI_MODELS_FORMAT_H_

#include <cstdint>
#include <string>

#include "core/util/format.h"

namespace safeshard::gui {

// 1536 -> "1.50 KiB", 52428800 -> "50.0 MiB", 0 -> "0 B".
std::string FormatBytes(uint64_t bytes);

}  // namespace safeshard::gui

#endif  // SAFESHARD_GUI_MODELS_FORMAT_H_
