// A forward-only reader of JSON text for the fixed shapes the header and sharding-info fast
// paths read (objects of strings, arrays of non-negative integers). It never allocates unless a
// string has escapes, and reports positions as pointers into the text.
//
// Contract: every method returns false on anything it does not handle — including input that is
// valid JSON but unusual (numbers with a fraction or an exponent, integers beyond 64 bits) — and
// never accepts text that ParseJsonStrict refuses. The callers then fall back to the strict DOM
// parser, which produces the errors (and their offsets): the fast path only ever produces
// results, never diagnostics.
#ifndef SAFESHARD_CORE_FORMAT_INTERNAL_JSON_CURSOR_H_
#define SAFESHARD_CORE_FORMAT_INTERNAL_JSON_CURSOR_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "absl/strings/string_view.h"

namespace safeshard::internal {

class JsonCursor {
 public:
  explicit JsonCursor(absl::string_view text)
      : begin_(text.data()), p_(text.data()), end_(text.data() + text.size()) {}

  // JSON's four whitespace bytes only.
  void SkipWs() {
    while (p_ < end_ && (*p_ == ' ' || *p_ == '\n' || *p_ == '\r' || *p_ == '\t')) ++p_;
  }
  // Skips whitespace and consumes `c` if it is next.
  bool Eat(char c) {
    SkipWs();
    if (p_ < end_ && *p_ == c) {
      ++p_;
      return true;
    }
    return false;
  }
  // Skips whitespace; true when nothing else is left.
  bool AtEnd() {
    SkipWs();
    return p_ == end_;
  }
  // 0-based position of the next byte (after SkipWs() it is the next token's first byte).
  size_t pos() const { return static_cast<size_t>(p_ - begin_); }

  // The literal `null`.
  bool Null() {
    SkipWs();
    if (end_ - p_ >= 4 && std::memcmp(p_, "null", 4) == 0) {
      p_ += 4;
      return true;
    }
    return false;
  }

  // A string. `*out` views the text between the quotes when it has no escapes (`*escaped` =
  // false); otherwise the decoded bytes are put in `*scratch` and `*out` views them. Raw control
  // bytes and lone or reversed UTF-16 surrogates return false (they are JSON errors). Bytes of
  // 0x80 and above pass through: the caller has checked the whole text is UTF-8.
  bool String(absl::string_view* out, std::string* scratch, bool* escaped) {
    SkipWs();
    if (p_ == end_ || *p_ != '"') return false;
    const char* s = ++p_;
    const char* q = p_;
    while (q < end_) {
      const unsigned char c = static_cast<unsigned char>(*q);
      if (c == '"') {
        *out = absl::string_view(s, static_cast<size_t>(q - s));
        *escaped = false;
        p_ = q + 1;
        return true;
      }
      if (c == '\\') break;
      if (c < 0x20) return false;
      ++q;
    }
    if (q == end_) return false;
    // Escapes: decode from the start of the string.
    scratch->assign(s, static_cast<size_t>(q - s));
    while (q < end_) {
      const unsigned char c = static_cast<unsigned char>(*q);
      if (c == '"') {
        *out = *scratch;
        *escaped = true;
        p_ = q + 1;
        return true;
      }
      if (c < 0x20) return false;
      if (c != '\\') {
        // A run of plain bytes, appended at once (DCP_SHARDING_INFO is mostly such runs).
        const char* run = q;
        while (q < end_ && *q != '"' && *q != '\\' && static_cast<unsigned char>(*q) >= 0x20) ++q;
        scratch->append(run, static_cast<size_t>(q - run));
        continue;
      }
      if (end_ - q < 2) return false;
      const char e = q[1];
      q += 2;
      switch (e) {
        case '"': scratch->push_back('"'); break;
        case '\\': scratch->push_back('\\'); break;
        case '/': scratch->push_back('/'); break;
        case 'b': scratch->push_back('\b'); break;
        case 'f': scratch->push_back('\f'); break;
        case 'n': scratch->push_back('\n'); break;
        case 'r': scratch->push_back('\r'); break;
        case 't': scratch->push_back('\t'); break;
        case 'u': {
          uint32_t cp;
          if (!Hex4(&q, &cp)) return false;
          if (cp >= 0xDC00 && cp <= 0xDFFF) return false;  // a low surrogate first
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            uint32_t lo;
            if (end_ - q < 2 || q[0] != '\\' || q[1] != 'u') return false;
            q += 2;
            if (!Hex4(&q, &lo) || lo < 0xDC00 || lo > 0xDFFF) return false;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          AppendUtf8(cp, scratch);
          break;
        }
        default: return false;
      }
    }
    return false;
  }

  // A non-negative integer written as JSON's int grammar (no sign, no leading zeros) that fits
  // in 64 bits and is not followed by a fraction or an exponent.
  bool U64(uint64_t* v) {
    SkipWs();
    if (p_ == end_ || *p_ < '0' || *p_ > '9') return false;
    uint64_t x = static_cast<uint64_t>(*p_ - '0');
    const bool zero = *p_ == '0';
    ++p_;
    while (p_ < end_ && *p_ >= '0' && *p_ <= '9') {
      if (zero) return false;
      if (__builtin_mul_overflow(x, uint64_t{10}, &x) ||
          __builtin_add_overflow(x, static_cast<uint64_t>(*p_ - '0'), &x)) {
        return false;
      }
      ++p_;
    }
    if (p_ < end_ && (*p_ == '.' || *p_ == 'e' || *p_ == 'E')) return false;
    *v = x;
    return true;
  }

  // `[u64, u64, ...]` appended to `*out` (which is cleared first).
  template <typename Vec>
  bool U64Array(Vec* out) {
    out->clear();
    if (!Eat('[')) return false;
    if (Eat(']')) return true;
    do {
      uint64_t v;
      if (!U64(&v)) return false;
      out->push_back(v);
    } while (Eat(','));
    return Eat(']');
  }

 private:
  bool Hex4(const char** q, uint32_t* cp) {
    if (end_ - *q < 4) return false;
    uint32_t x = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = (*q)[i];
      x <<= 4;
      if (c >= '0' && c <= '9') {
        x |= static_cast<uint32_t>(c - '0');
      } else if (c >= 'a' && c <= 'f') {
        x |= static_cast<uint32_t>(c - 'a' + 10);
      } else if (c >= 'A' && c <= 'F') {
        x |= static_cast<uint32_t>(c - 'A' + 10);
      } else {
        return false;
      }
    }
    *q += 4;
    *cp = x;
    return true;
  }
  static void AppendUtf8(uint32_t cp, std::string* out) {
    if (cp < 0x80) {
      out->push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }

  const char* begin_;
  const char* p_;
  const char* end_;
};

}  // namespace safeshard::internal

#endif  // SAFESHARD_CORE_FORMAT_INTERNAL_JSON_CURSOR_H_
