// JSON helpers shared by the header, sharding-info and index parsers.
#ifndef SAFESHARD_CORE_FORMAT_INTERNAL_JSON_UTIL_H_
#define SAFESHARD_CORE_FORMAT_INTERNAL_JSON_UTIL_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace safeshard::internal {

// Parses JSON into a DOM like nlohmann::json::parse, but detects keys repeated within one
// object at any depth (a plain parse silently keeps the last value). Linear time: nlohmann's
// callback parser rescans the parent object at every object end, quadratic for big headers.
struct StrictParseResult {
  bool ok = false;
  std::string error;                     // parse error text
  size_t error_byte = 0;                 // 0-based byte of a parse error
  std::optional<std::string> duplicate;  // first repeated key
};

class StrictDomBuilder : public nlohmann::json_sax<nlohmann::json> {
 public:
  // With `members`, a top-level object is not built: its members are appended there in order
  // (no map insertion: linear and cheap for headers with 100k tensors); `root` stays an empty
  // object.
  explicit StrictDomBuilder(nlohmann::json* root, StrictParseResult* r,
                            std::vector<std::pair<std::string, nlohmann::json>>* members = nullptr)
      : root_(root), r_(r), members_(members) {}

  bool null() override { return Put(nullptr); }
  bool boolean(bool v) override { return Put(v); }
  bool number_integer(number_integer_t v) override { return Put(v); }
  bool number_unsigned(number_unsigned_t v) override { return Put(v); }
  bool number_float(number_float_t v, const string_t&) override { return Put(v); }
  bool string(string_t& v) override { return Put(std::move(v)); }
  bool binary(binary_t&) override { return false; }
  bool start_object(std::size_t) override {
    nlohmann::json* obj = Place(nlohmann::json::object());
    stack_.push_back(obj);
    keys_.emplace_back();
    return true;
  }
  bool key(string_t& k) override {
    if (!keys_.back().insert(k).second) {
      if (!r_->duplicate) r_->duplicate = k;
    }
    pending_key_ = std::move(k);
    return true;
  }
  bool end_object() override {
    stack_.pop_back();
    keys_.pop_back();
    return true;
  }
  bool start_array(std::size_t) override {
    nlohmann::json* arr = Place(nlohmann::json::array());
    stack_.push_back(arr);
    keys_.emplace_back();  // keeps keys_ aligned with stack_
    return true;
  }
  bool end_array() override {
    stack_.pop_back();
    keys_.pop_back();
    return true;
  }
  bool parse_error(std::size_t position, const std::string&,
                   const nlohmann::detail::exception& ex) override {
    r_->error = ex.what();
    r_->error_byte = position > 0 ? position - 1 : 0;
    return false;
  }

 private:
  template <typename T>
  bool Put(T&& v) {
    Place(nlohmann::json(std::forward<T>(v)));
    return true;
  }
  nlohmann::json* Place(nlohmann::json v) {
    if (stack_.empty()) {
      *root_ = std::move(v);
      return root_;
    }
    nlohmann::json* top = stack_.back();
    if (members_ != nullptr && stack_.size() == 1 && top == root_ && top->is_object()) {
      members_->emplace_back(pending_key_, std::move(v));
      return &members_->back().second;
    }
    if (top->is_object()) {
      nlohmann::json& slot = (*top)[pending_key_];  // a duplicate key overwrites; reported above
      slot = std::move(v);
      return &slot;
    }
    top->push_back(std::move(v));
    return &top->back();
  }
  nlohmann::json* root_;
  StrictParseResult* r_;
  std::vector<std::pair<std::string, nlohmann::json>>* members_;
  std::vector<nlohmann::json*> stack_;
  std::vector<absl::flat_hash_set<std::string>> keys_;
  std::string pending_key_;
};

template <typename It>
StrictParseResult ParseJsonStrict(
    It begin, It end, nlohmann::json* out,
    std::vector<std::pair<std::string, nlohmann::json>>* members = nullptr) {
  StrictParseResult r;
  StrictDomBuilder sax(out, &r, members);
  r.ok = nlohmann::json::sax_parse(begin, end, &sax, nlohmann::json::input_format_t::json,
                                   /*strict=*/true);
  return r;
}

// Reads a non-negative integer (also an integral float such as 1.0e9 written by some tools).
inline bool ReadU64(const nlohmann::json& v, uint64_t* out, bool allow_float = false) {
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
