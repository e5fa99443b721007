// format.h: number formatting shared by the inspector's models and views (QtCore-free).
#ifndef SAFESHARD_GUI_MODELS_FORMAT_H_
#define SAFESHARD_GUI_MODELS_FORMAT_H_

#include <cstdint>
#include <string>

namespace safeshard::gui {

// 1536 -> "1.50 KiB", 0 -> "0 B" (binary units, 3 significant digits).
std::string FormatBytes(uint64_t bytes);
// 1234567 -> "1,234,567".
std::string WithThousands(uint64_t n);

}  // namespace safeshard::gui

#endif  // SAFESHARD_GUI_MODELS_FORMAT_H_
