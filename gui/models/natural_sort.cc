#include "gui/models/natural_sort.h"

#include <cctype>

namespace safeshard::gui {

bool NaturalLess(std::string_view a, std::string_view b) {
  size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    const bool da = std::isdigit(static_cast<unsigned char>(a[i]));
    const bool db = std::isdigit(static_cast<unsigned char>(b[j]));
    if (da && db) {
      size_t ie = i, je = j;
      while (ie < a.size() && a[ie] == '0') ++ie;  // leading zeros do not count
      while (je < b.size() && b[je] == '0') ++je;
      size_t is = ie, js = je;
      while (ie < a.size() && std::isdigit(static_cast<unsigned char>(a[ie]))) ++ie;
      while (je < b.size() && std::isdigit(static_cast<unsigned char>(b[je]))) ++je;
      if (ie - is != je - js) return ie - is < je - js;
      for (size_t k = 0; k < ie - is; ++k) {
        if (a[is + k] != b[js + k]) return a[is + k] < b[js + k];
      }
      i = ie;
      j = je;
      continue;
    }
    if (a[i] != b[j]) return a[i] < b[j];
    ++i;
    ++j;
  }
  return a.size() - i < b.size() - j;
}

}  // namespace safeshard::gui
