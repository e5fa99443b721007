// Formatting for the CLI (numbers: core/util/format.h).
#ifndef SAFESHARD_CLI_FORMAT_UTIL_H_
#define SAFESHARD_CLI_FORMAT_UTIL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/util/format.h"  // HumanBytes, Grouped

namespace safeshard {

inline std::string ShapeString(const std::vector<uint64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

}  // namespace safeshard

#endif  // SAFESHARD_CLI_FORMAT_UTIL_H_
