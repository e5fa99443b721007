// JSON helpers shared by the header, sharding-info and index parsers.
#ifndef SAFESHARD_CORE_FORMAT_INTERNAL_JSON_UTIL_H_
#define SAFESHARD_CORE_FORMAT_INTERNAL_JSON_UTIL_H_

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace safeshard::internal {

// nlohmann parser callback that records the first key repeated within one object, at any
// depth (a plain parse would silently keep the last value).
class DuplicateKeyFinder {
 public:
  bool operator()(int /*depth*/, nlohmann::ordered_json::parse_event_t event,
                  nlohmann::ordered_json& parsed) {
    using E = nlohmann::ordered_json::parse_event_t;
    if (event == E::object_start) {
      keys_.emplace_back();
    } else if (event == E::object_end) {
      if (!keys_.empty()) keys_.pop_back();
    } else if (event == E::key && !keys_.empty()) {
      const std::string& k = parsed.get_ref<const std::string&>();
      if (!keys_.back().insert(k).second && !duplicate_) duplicate_ = k;
    }
    return true;
  }
  const std::optional<std::string>& duplicate() const { return duplicate_; }

 private:
  std::vector<std::set<std::string>> keys_;
  std::optional<std::string> duplicate_;
};

// Reads a non-negative integer (also an integral float such as 1.0e9 written by some tools).
inline bool ReadU64(const nlohmann::ordered_json& v, uint64_t* out, bool allow_float = false) {
  if (v.is_number_unsigned()) {
    *out = v.get<uint64_t>();
    return true;
  }
  if (v.is_number_integer()) {
    if (v.get<int64_t>() < 0) return false;
    *out = static_cast<uint64_t>(v.get<int64_t>());
    return true;
  }
  if (allow_float && v.is_number_float()) {
    double d = v.get<double>();
    if (d < 0 || d > 1.8e19 || d != static_cast<double>(static_cast<uint64_t>(d))) return false;
    *out = static_cast<uint64_t>(d);
    return true;
  }
  return false;
}

// JSON-quoted form of a name, for error messages.
inline std::string Quote(absl::string_view s) {
  return nlohmann::json(std::string(s)).dump();
}

}  // namespace safeshard::internal

#endif  // SAFESHARD_CORE_FORMAT_INTERNAL_JSON_UTIL_H_
