// format.h: human-readable numbers, shared by the CLI and the inspector.
//
//   HumanBytes(1536) == "1.5 KiB"   (one decimal: tables and progress lines)
//   ScaleBytes(1536) == {1.5, "KiB"} (for other precisions)
//   Grouped(1234567) == "1,234,567"
#ifndef SAFESHARD_CORE_UTIL_FORMAT_H_
#define SAFESHARD_CORE_UTIL_FORMAT_H_

#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace safeshard {

struct ScaledBytes {
  double value;      // in `unit`
  const char* unit;  // "B", "KiB", ... "PiB"
  bool bytes() const { return unit[0] == 'B'; }
};

inline ScaledBytes ScaleBytes(uint64_t b) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1024 && u < 5) {
    v /= 1024;
    ++u;
  }
  return {v, kUnits[u]};
}

inline std::string HumanBytes(uint64_t b) {
  const ScaledBytes s = ScaleBytes(b);
  return s.bytes() ? absl::StrFormat("%d B", b) : absl::StrFormat("%.1f %s", s.value, s.unit);
}

inline std::string Grouped(uint64_t n) {
  std::string s = absl::StrCat(n);
  for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3) s.insert(i, ",");
  return s;
}

}  // namespace safeshard

#endif  // SAFESHARD_CORE_UTIL_FORMAT_H_
