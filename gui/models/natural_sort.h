// natural_sort.h: "layers.2" before "layers.10" — compares digit runs by value.
#ifndef SAFESHARD_GUI_MODELS_NATURAL_SORT_H_
#define SAFESHARD_GUI_MODELS_NATURAL_SORT_H_

#include <string_view>

namespace safeshard::gui {

// True when `a` sorts before `b` in natural order (digit runs compared as numbers).
bool NaturalLess(std::string_view a, std::string_view b);

}  // namespace safeshard::gui

#endif  // SAFESHARD_GUI_MODELS_NATURAL_SORT_H_
