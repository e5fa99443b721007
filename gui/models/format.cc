#include "gui/models/format.h"

#include "absl/strings/str_format.h"

namespace safeshard::gui {

std::string FormatBytes(uint64_t bytes) {
  const ScaledBytes s = ScaleBytes(bytes);
  if (s.bytes()) return absl::StrFormat("%d B", bytes);
  return absl::StrFormat("%.*f %s", s.value < 10 ? 2 : (s.value < 100 ? 1 : 0), s.value, s.unit);
}

}  // namespace safeshard::gui
