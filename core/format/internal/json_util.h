// JSON helpers shared by the header, sharding-info and index parsers.
#ifndef SAFESHARD_CORE_FORMAT_INTERNAL_JSON_UTIL_H_
#define SAFESHARD_CORE_FORMAT_INTERNAL_JSON_UTIL_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace safeshard::internal {

// Parses JSON into a DOM like nlohmann::json::parse, but strictly, as the safetensors crate
// (serde_json) does:
//   - keys repeated within one object at any depth are refused (a plain parse keeps the last);
//   - nesting deeper than kMaxJsonDepth containers is refused at the offending byte, before any
//     DOM is built for it (bounded time and memory for hostile input);
//   - only whitespace may follow the value (nlohmann stops at a NUL byte as if the input ended:
//     "{...}\0garbage" is refused here as trailing characters).
// Linear time: nlohmann's callback parser rescans the parent object at every object end,
// quadratic for big headers. Every error carries the 0-based byte offset it was found at.
inline constexpr int kMaxJsonDepth = 128;  // serde_json's recursion limit: 127 levels parse

struct StrictParseResult {
  bool ok = false;
  std::string error;                     // parse error text
  size_t error_byte = 0;                 // 0-based byte of a parse error
  std::optional<std::string> duplicate;  // first repeated key
  size_t duplicate_byte = 0;             // 0-based byte of the repeated key's opening quote
  // With `members`: the 0-based byte of each top-level member's key (opening quote).
  std::vector<size_t> member_key_bytes;
};

struct StrictParseOptions {
  // With `members`, members of the objects one level below the root (e.g. a tensor entry) whose
  // key is not listed here are checked for syntax and duplicates but not stored; `except_member`
  // names a top-level member kept whole (e.g. "__metadata__"). nullptr keeps everything.
  const std::vector<std::string>* keep_entry_keys = nullptr;
  absl::string_view except_member;
};

// An iterator over bytes that records how far the parser has read (for error offsets).
struct CountingCharIterator {
  using iterator_category = std::forward_iterator_tag;
  using value_type = char;
  using difference_type = std::ptrdiff_t;
  using pointer = const char*;
  using reference = const char&;
  const char* p = nullptr;
  const char** read_to = nullptr;
  reference operator*() const { return *p; }
  CountingCharIterator& operator++() {
    ++p;
    *read_to = p;
    return *this;
  }
  CountingCharIterator operator++(int) {
    CountingCharIterator old = *this;
    ++*this;
    return old;
  }
  bool operator==(const CountingCharIterator& o) const { return p == o.p; }
  bool operator!=(const CountingCharIterator& o) const { return p != o.p; }
};

class StrictDomBuilder : public nlohmann::json_sax<nlohmann::json> {
 public:
  // With `members`, a top-level object is not built: its members are appended there in order
  // (no map insertion: linear and cheap for headers with 100k tensors); `root` stays an empty
  // object.
  StrictDomBuilder(nlohmann::json* root, StrictParseResult* r,
                   std::vector<std::pair<std::string, nlohmann::json>>* members,
                   const StrictParseOptions& options, absl::string_view text,
                   const char* const* read_to)
      : root_(root), r_(r), members_(members), options_(options), text_(text), read_to_(read_to) {}

  bool null() override { return Put(nullptr); }
  bool boolean(bool v) override { return Put(v); }
  bool number_integer(number_integer_t v) override { return Put(v); }
  bool number_unsigned(number_unsigned_t v) override { return Put(v); }
  bool number_float(number_float_t v, const string_t&) override { return Put(v); }
  bool string(string_t& v) override { return Put(std::move(v)); }
  bool binary(binary_t&) override { return false; }
  bool start_object(std::size_t) override { return Open(nlohmann::json::object()); }
  bool key(string_t& k) override {
    const size_t at = KeyStart();
    if (!keys_.back().insert(k).second && !r_->duplicate) {
      r_->duplicate = k;
      r_->duplicate_byte = at;
    }
    if (members_ != nullptr && stack_.size() == 1) r_->member_key_bytes.push_back(at);
    discard_key_ = false;
    if (options_.keep_entry_keys != nullptr && members_ != nullptr && stack_.size() == 2 &&
        stack_.back() != nullptr && top_member_ != options_.except_member) {
      discard_key_ = std::find(options_.keep_entry_keys->begin(), options_.keep_entry_keys->end(),
                               k) == options_.keep_entry_keys->end();
    }
    if (stack_.size() == 1) top_member_ = k;
    pending_key_ = std::move(k);
    return true;
  }
  bool end_object() override { return Close(); }
  bool start_array(std::size_t) override { return Open(nlohmann::json::array()); }
  bool end_array() override { return Close(); }
  bool parse_error(std::size_t position, const std::string&,
                   const nlohmann::detail::exception& ex) override {
    if (r_->error.empty()) {
      r_->error = ex.what();
      r_->error_byte = position > 0 ? position - 1 : 0;
    }
    return false;
  }

 private:
  size_t Read() const { return static_cast<size_t>(*read_to_ - text_.data()); }
  // The opening quote of the key just read: the parser has consumed its closing quote.
  size_t KeyStart() const {
    size_t close = Read() > 0 ? Read() - 1 : 0;
    for (size_t i = close; i-- > 0;) {
      if (text_[i] != '"') continue;
      size_t slashes = 0;
      while (slashes < i && text_[i - 1 - slashes] == '\\') ++slashes;
      if (slashes % 2 == 0) return i;
    }
    return close;
  }
  bool Open(nlohmann::json v) {
    if (stack_.size() + 1 >= static_cast<size_t>(kMaxJsonDepth)) {
      r_->error = absl::StrCat("nesting deeper than ", kMaxJsonDepth - 1,
                               " arrays/objects (recursion limit)");
      r_->error_byte = Read() > 0 ? Read() - 1 : 0;
      return false;
    }
    stack_.push_back(Place(std::move(v)));
    keys_.emplace_back();  // keeps keys_ aligned with stack_ (empty for arrays)
    return true;
  }
  bool Close() {
    stack_.pop_back();
    keys_.pop_back();
    discard_key_ = false;
    return true;
  }
  template <typename T>
  bool Put(T&& v) {
    Place(nlohmann::json(std::forward<T>(v)));
    return true;
  }
  // Where a value goes; nullptr when it is discarded (inside a discarded container, or the
  // value of an entry member that is not kept).
  nlohmann::json* Place(nlohmann::json v) {
    if (stack_.empty()) {
      *root_ = std::move(v);
      return root_;
    }
    nlohmann::json* top = stack_.back();
    if (top == nullptr) return nullptr;
    if (top->is_object() && discard_key_) {
      discard_key_ = false;
      return nullptr;
    }
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
  const StrictParseOptions& options_;
  absl::string_view text_;
  const char* const* read_to_;
  std::vector<nlohmann::json*> stack_;
  std::vector<absl::flat_hash_set<std::string>> keys_;
  std::string pending_key_;
  std::string top_member_;
  bool discard_key_ = false;
};

inline StrictParseResult ParseJsonStrict(
    absl::string_view text, nlohmann::json* out,
    std::vector<std::pair<std::string, nlohmann::json>>* members = nullptr,
    const StrictParseOptions& options = {}) {
  StrictParseResult r;
  const char* read_to = text.data();
  StrictDomBuilder sax(out, &r, members, options, text, &read_to);
  CountingCharIterator first{text.data(), &read_to};
  CountingCharIterator last{text.data() + text.size(), &read_to};
  r.ok = nlohmann::json::sax_parse(first, last, &sax, nlohmann::json::input_format_t::json,
                                   /*strict=*/true);
  if (r.ok) {
    // nlohmann ends the input at a NUL byte; anything but whitespace after the value is an error.
    const size_t nul = text.find('\0');
    if (nul != absl::string_view::npos) {
      const size_t bad = text.find_first_not_of(" \t\r\n", nul);
      r.ok = false;
      r.error = "trailing characters after the JSON value";
      r.error_byte = bad == absl::string_view::npos ? nul : std::min(nul, bad);
    }
  }
  if (!r.ok && r.error.empty()) r.error = "parse stopped";
  return r;
}

template <typename It>
StrictParseResult ParseJsonStrict(
    It begin, It end, nlohmann::json* out,
    std::vector<std::pair<std::string, nlohmann::json>>* members = nullptr) {
  return ParseJsonStrict(absl::string_view(std::to_address(begin), end - begin), out, members);
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

// Serialises JSON whose strings may hold bytes that are not UTF-8 (any file name can): such
// bytes become U+FFFD instead of nlohmann throwing. indent -1 is compact.
template <typename Json>
std::string DumpJson(const Json& j, int indent = -1) {
  return j.dump(indent, ' ', false, Json::error_handler_t::replace);
}

// JSON-quoted form of a name, for error messages.
inline std::string Quote(absl::string_view s) {
  return DumpJson(nlohmann::json(std::string(s)));
}

}  // namespace safeshard::internal

#endif  // SAFESHARD_CORE_FORMAT_INTERNAL_JSON_UTIL_H_
