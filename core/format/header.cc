#include "core/format/header.h"

#include <algorithm>
#include <cstring>
#include <set>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/hash/hash.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/format/internal/json_cursor.h"
#include "core/format/internal/json_util.h"
#include "core/format/internal/utf8.h"
#include "core/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace safeshard {
namespace {

constexpr absl::string_view kPayloadUrl = "type.safeshard.dev/HeaderError";
constexpr absl::string_view kLfsMagic = "version https://git-lfs.github.com/spec/";

constexpr std::pair<HeaderError, absl::string_view> kNames[] = {
    {HeaderError::kFileTooSmall, "file_too_small"},
    {HeaderError::kGitLfsPointer, "git_lfs_pointer"},
    {HeaderError::kHeaderTooLarge, "header_too_large"},
    {HeaderError::kHeaderLengthExceedsFile, "header_length_exceeds_file"},
    {HeaderError::kInvalidUtf8, "invalid_utf8"},
    {HeaderError::kInvalidJson, "invalid_json"},
    {HeaderError::kHeaderNotObject, "header_not_object"},
    {HeaderError::kDuplicateKey, "duplicate_key"},
    {HeaderError::kInvalidMetadata, "invalid_metadata"},
    {HeaderError::kInvalidTensorEntry, "invalid_tensor_entry"},
    {HeaderError::kUnknownDType, "unknown_dtype"},
    {HeaderError::kShapeOverflow, "shape_overflow"},
    {HeaderError::kMisalignedBits, "misaligned_bits"},
    {HeaderError::kSizeMismatch, "size_mismatch"},
    {HeaderError::kInvalidOffsets, "invalid_offsets"},
    {HeaderError::kOffsetGap, "offset_gap"},
    {HeaderError::kOffsetOverlap, "offset_overlap"},
    {HeaderError::kBufferSizeMismatch, "buffer_size_mismatch"},
};

absl::Status Fail(HeaderError e, absl::string_view file, absl::string_view what) {
  absl::StatusCode code = e == HeaderError::kGitLfsPointer ? absl::StatusCode::kFailedPrecondition
                                                           : absl::StatusCode::kDataLoss;
  absl::Status s(code, absl::StrCat(file, ": ", HeaderErrorName(e), ": ", what));
  s.SetPayload(kPayloadUrl, absl::Cord(HeaderErrorName(e)));
  return s;
}

using internal::Quote;
using internal::ReadU64;

}  // namespace

absl::string_view HeaderErrorName(HeaderError e) {
  for (const auto& [err, name] : kNames) {
    if (err == e) return name;
  }
  return "unknown";
}

std::optional<HeaderError> HeaderErrorOf(const absl::Status& s) {
  auto p = s.GetPayload(kPayloadUrl);
  if (!p) return std::nullopt;
  std::string name(*p);
  for (const auto& [err, n] : kNames) {
    if (n == name) return err;
  }
  return std::nullopt;
}

const TensorEntry* Header::Find(absl::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors[it->second];
}

void Header::Reindex() {
  by_name_.clear();
  by_name_.reserve(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) by_name_[tensors[i].name] = i;
}

absl::StatusOr<uint64_t> ParseHeaderLength(absl::string_view prefix, uint64_t file_size,
                                           absl::string_view file) {
  if (prefix.substr(0, kLfsMagic.size()) == kLfsMagic) {
    return Fail(HeaderError::kGitLfsPointer, file,
                absl::StrCat("the file (", file_size,
                             " bytes) is a Git LFS pointer (its text starts at byte offset 0), "
                             "not tensor data; fetch the real file with `git lfs pull`"));
  }
  if (file_size < 8 || prefix.size() < 8) {
    return Fail(HeaderError::kFileTooSmall, file,
                absl::StrCat("file is ", file_size,
                             " bytes; a safetensors file starts with an 8-byte header length "
                             "at offset 0"));
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(prefix[i]);
  if (n > kMaxHeaderSize) {
    // Eight bytes of text there (a README, a JSON or YAML file, a pickle's protocol bytes are
    // not text) mean it is not a safetensors file at all, not a file with a huge header.
    const bool text = std::all_of(prefix.begin(), prefix.begin() + 8, [](char c) {
      const unsigned char u = static_cast<unsigned char>(c);
      return (u >= 0x20 && u < 0x7f) || c == '\n' || c == '\r' || c == '\t';
    });
    if (text) {
      std::string start(prefix.substr(0, std::min<size_t>(prefix.size(), 24)));
      for (char& c : start) {
        if (c == '\n' || c == '\r' || c == '\t') c = ' ';
        if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) c = '?';
      }
      return Fail(HeaderError::kHeaderTooLarge, file,
                  absl::StrCat("not a safetensors file: it starts with text (\"", start,
                               "...\") where a safetensors file has an 8-byte header length"));
    }
    return Fail(HeaderError::kHeaderTooLarge, file,
                absl::StrCat("header length at offset 0 is ", n, " bytes, over the ",
                             kMaxHeaderSize, "-byte limit"));
  }
  if (n > file_size - 8) {
    return Fail(HeaderError::kHeaderLengthExceedsFile, file,
                absl::StrCat("header length at offset 0 is ", n, " bytes but only ", file_size - 8,
                             " bytes follow it"));
  }
  return n;
}

uint64_t HeaderFingerprint(absl::string_view header_bytes) {
  return absl::Hash<absl::string_view>{}(header_bytes);
}

namespace {

// The checks of one tensor entry that do not depend on how it was parsed; `at` is the file
// offset of its key (for messages).
absl::Status CheckEntry(const TensorEntry& t, const Header& h, uint64_t at,
                        absl::string_view file) {
  auto where = [&] {
    return absl::StrCat("tensor ", Quote(t.name), " (entry at byte offset ", at, ")");
  };
  if (t.begin > t.end) {
    return Fail(
        HeaderError::kInvalidOffsets, file,
        absl::StrCat(where(), ": data_offsets [", t.begin, ", ", t.end,
                     "] end before they begin (file byte offset ", h.data_start() + t.begin, ")"));
  }
  absl::StatusOr<uint64_t> numel = NumElements(t.shape);
  uint64_t bits = 0;
  if (!numel.ok() ||
      __builtin_mul_overflow(*numel, static_cast<uint64_t>(BitsOf(t.dtype)), &bits)) {
    return Fail(HeaderError::kShapeOverflow, file,
                absl::StrCat(where(), ": shape [", absl::StrJoin(t.shape, ", "), "] of ",
                             DTypeName(t.dtype), " overflows 64 bits"));
  }
  if (bits % 8 != 0) {
    return Fail(HeaderError::kMisalignedBits, file,
                absl::StrCat(where(), ": ", *numel, " elements of ", DTypeName(t.dtype), " are ",
                             bits, " bits, not a whole number of bytes"));
  }
  if (t.end - t.begin != bits / 8) {
    return Fail(
        HeaderError::kSizeMismatch, file,
        absl::StrCat(where(), ": data_offsets [", t.begin, ", ", t.end, "] span ", t.end - t.begin,
                     " bytes but ", DTypeName(t.dtype), " [", absl::StrJoin(t.shape, ", "),
                     "] needs ", bits / 8, " (file byte offset ", h.data_start() + t.begin, ")"));
  }
  return absl::OkStatus();
}

// Offsets must tile [0, buffer_size) exactly, whatever order the header lists them in. Sorts
// `h.tensors` into data order.
absl::Status CheckTiling(Header& h, uint64_t file_size, absl::string_view file) {
  auto before = [](const TensorEntry& a, const TensorEntry& b) {
    if (a.begin != b.begin) return a.begin < b.begin;
    if (a.end != b.end) return a.end < b.end;
    return a.name < b.name;
  };
  if (!std::is_sorted(h.tensors.begin(), h.tensors.end(), before)) {
    std::sort(h.tensors.begin(), h.tensors.end(), before);
  }
  uint64_t cursor = 0;
  const TensorEntry* prev = nullptr;
  for (const TensorEntry& tref : h.tensors) {
    const TensorEntry* t = &tref;
    if (t->begin > cursor) {
      return Fail(HeaderError::kOffsetGap, file,
                  absl::StrCat("bytes [", cursor, ", ", t->begin,
                               ") of the buffer (file byte offset ", h.data_start() + cursor,
                               ") belong to no tensor; next is tensor ", Quote(t->name)));
    }
    if (t->begin < cursor) {
      return Fail(HeaderError::kOffsetOverlap, file,
                  absl::StrCat("tensor ", Quote(t->name), " at data_offsets [", t->begin, ", ",
                               t->end, ") overlaps tensor ", Quote(prev->name), " ending at ",
                               cursor, " (file byte offset ", h.data_start() + t->begin, ")"));
    }
    cursor = t->end;
    prev = t;
  }
  if (cursor != h.buffer_size) {
    return Fail(HeaderError::kBufferSizeMismatch, file,
                absl::StrCat("tensors end at buffer byte ", cursor, " (file byte offset ",
                             h.data_start() + cursor, ") but the file has ", h.buffer_size,
                             " buffer bytes (file size ", file_size, ")",
                             cursor > h.buffer_size ? ": the file is truncated" : ""));
  }
  return absl::OkStatus();
}

// The fast path: reads a header of the usual shape straight from the bytes (no DOM, one
// allocation per tensor for its shape and one for a long name). Returns false — and the caller
// runs the DOM parser, which gives every error — on anything else: a syntax error, a duplicate
// key, a type that is wrong, a member of an entry other than dtype/shape/data_offsets, an
// escaped dtype, a number that is not a plain 64-bit integer. When it returns true, `h` holds
// what the DOM path's extraction would have produced, member order and key offsets included
// (tested on every header test case and the fuzz corpus: header_test's FastPathAgrees).
bool ExtractFast(absl::string_view json, Header* h, std::vector<uint64_t>* key_at) {
  internal::JsonCursor c(json);
  std::string scratch;
  if (!c.Eat('{')) return false;
  bool seen_metadata = false;
  if (!c.Eat('}')) {
    do {
      c.SkipWs();
      const uint64_t at = 8 + c.pos();
      absl::string_view key;
      bool escaped;
      if (!c.String(&key, &scratch, &escaped) || !c.Eat(':')) return false;
      if (key == kMetadataKey) {
        if (seen_metadata) return false;
        seen_metadata = true;
        if (c.Null()) continue;
        h->has_metadata = true;
        if (!c.Eat('{')) return false;
        if (c.Eat('}')) continue;
        do {
          absl::string_view k, v;
          if (!c.String(&k, &scratch, &escaped)) return false;
          std::string name(k);
          if (!c.Eat(':') || !c.String(&v, &scratch, &escaped)) return false;
          if (!h->metadata.emplace(std::move(name), std::string(v)).second) return false;
        } while (c.Eat(','));
        if (!c.Eat('}')) return false;
        continue;
      }
      TensorEntry t;
      t.name.assign(key.data(), key.size());
      if (!c.Eat('{')) return false;
      int seen = 0;  // bits: 1 dtype, 2 shape, 4 data_offsets
      do {
        absl::string_view member;
        if (!c.String(&member, &scratch, &escaped) || !c.Eat(':')) return false;
        if (member == "dtype" && !(seen & 1)) {
          seen |= 1;
          absl::string_view name;
          if (!c.String(&name, &scratch, &escaped) || escaped) return false;
          absl::StatusOr<DType> d = ParseDType(name);
          if (!d.ok()) return false;
          t.dtype = *d;
        } else if (member == "shape" && !(seen & 2)) {
          seen |= 2;
          if (!c.U64Array(&t.shape)) return false;
        } else if (member == "data_offsets" && !(seen & 4)) {
          seen |= 4;
          if (!c.Eat('[') || !c.U64(&t.begin) || !c.Eat(',') || !c.U64(&t.end) || !c.Eat(']')) {
            return false;
          }
        } else {
          return false;
        }
      } while (c.Eat(','));
      if (seen != 7 || !c.Eat('}')) return false;
      h->tensors.push_back(std::move(t));
      key_at->push_back(at);
    } while (c.Eat(','));
    if (!c.Eat('}')) return false;
  }
  if (!c.AtEnd()) return false;
  // Tensor names are unique (`__metadata__` cannot be one: it was taken above).
  absl::flat_hash_set<absl::string_view> names;
  names.reserve(h->tensors.size());
  for (const TensorEntry& t : h->tensors) {
    if (!names.insert(t.name).second) return false;
  }
  return true;
}

// The DOM path: every syntax and type error, with its offset.
absl::Status ExtractWithDom(absl::string_view json, Header* h, absl::string_view file) {
  nlohmann::json root;
  std::vector<std::pair<std::string, nlohmann::json>> members;
  static const std::vector<std::string> kEntryKeys = {"dtype", "shape", "data_offsets"};
  internal::StrictParseOptions po;
  po.keep_entry_keys = &kEntryKeys;  // other members of an entry are checked, never stored
  po.except_member = kMetadataKey;
  internal::StrictParseResult pr = internal::ParseJsonStrict(json, &root, &members, po);
  if (!pr.ok) {
    return Fail(HeaderError::kInvalidJson, file,
                absl::StrCat("header JSON does not parse at byte offset ", 8 + pr.error_byte, ": ",
                             pr.error));
  }
  if (pr.duplicate) {
    return Fail(HeaderError::kDuplicateKey, file,
                absl::StrCat("key ", Quote(*pr.duplicate),
                             " appears more than once in one object of the header (repeated at "
                             "byte offset ",
                             8 + pr.duplicate_byte, ")"));
  }
  if (!root.is_object()) {
    return Fail(HeaderError::kHeaderNotObject, file,
                "header JSON at byte offset 8 is not an object");
  }

  h->tensors.reserve(members.size());
  for (size_t mi = 0; mi < members.size(); ++mi) {
    const auto& [key, v] = members[mi];
    const uint64_t at = 8 + (mi < pr.member_key_bytes.size() ? pr.member_key_bytes[mi] : 0);
    if (key == kMetadataKey) {
      if (v.is_null()) continue;  // null means no metadata (upstream; MLX writes it)
      h->has_metadata = true;
      if (!v.is_object()) {
        return Fail(
            HeaderError::kInvalidMetadata, file,
            absl::StrCat("__metadata__ (byte offset ", at,
                         ") must be an object of string values or null, not ", v.type_name()));
      }
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) {
          return Fail(HeaderError::kInvalidMetadata, file,
                      absl::StrCat("__metadata__ (byte offset ", at, ") value for ", Quote(m.key()),
                                   " is not a string (", m.value().type_name(), ")"));
        }
        h->metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where =
        absl::StrCat("tensor ", Quote(key), " (entry at byte offset ", at, ")");
    if (!v.is_object()) {
      return Fail(HeaderError::kInvalidTensorEntry, file,
                  absl::StrCat(where, ": entry is not an object"));
    }
    auto dt = v.find("dtype");
    auto sh = v.find("shape");
    auto off = v.find("data_offsets");
    if (dt == v.end() || sh == v.end() || off == v.end()) {
      return Fail(HeaderError::kInvalidTensorEntry, file,
                  absl::StrCat(where, ": entry needs \"dtype\", \"shape\" and \"data_offsets\""));
    }
    if (!dt->is_string()) {
      return Fail(HeaderError::kInvalidTensorEntry, file,
                  absl::StrCat(where, ": \"dtype\" is not a string"));
    }
    TensorEntry t;
    t.name = key;
    absl::StatusOr<DType> dtype = ParseDType(dt->get<std::string>());
    if (!dtype.ok()) {
      return Fail(HeaderError::kUnknownDType, file,
                  absl::StrCat(where, ": unknown dtype ", Quote(dt->get<std::string>())));
    }
    t.dtype = *dtype;
    if (!sh->is_array()) {
      return Fail(HeaderError::kInvalidTensorEntry, file,
                  absl::StrCat(where, ": \"shape\" is not an array"));
    }
    t.shape.reserve(sh->size());
    for (const auto& d : *sh) {
      uint64_t dim;
      if (!ReadU64(d, &dim)) {
        return Fail(
            HeaderError::kInvalidTensorEntry, file,
            absl::StrCat(where, ": shape entry ", d.dump(), " is not a non-negative integer"));
      }
      t.shape.push_back(dim);
    }
    if (!off->is_array() || off->size() != 2 || !ReadU64((*off)[0], &t.begin) ||
        !ReadU64((*off)[1], &t.end)) {
      return Fail(HeaderError::kInvalidTensorEntry, file,
                  absl::StrCat(where, ": \"data_offsets\" must be two non-negative integers, got ",
                               off->dump()));
    }
    // Checked here, in member order, as the fast path's caller does after it.
    RETURN_IF_ERROR(CheckEntry(t, *h, at, file));
    h->tensors.push_back(std::move(t));
  }
  return absl::OkStatus();
}

// Everything before the JSON is read: sizes, UTF-8, the opening brace.
absl::Status Precheck(absl::string_view json, uint64_t file_size, absl::string_view file) {
  if (file_size < 8 + json.size()) {
    return Fail(HeaderError::kHeaderLengthExceedsFile, file,
                absl::StrCat("header of ", json.size(), " bytes does not fit in a file of ",
                             file_size, " bytes"));
  }
  if (size_t bad = internal::FirstInvalidUtf8(json); bad != absl::string_view::npos) {
    return Fail(HeaderError::kInvalidUtf8, file,
                absl::StrCat("header is not valid UTF-8 at byte offset ", 8 + bad));
  }
  if (json.empty() || json.front() != '{') {
    size_t first = json.find_first_not_of(" \t\r\n");
    if (first == absl::string_view::npos || json[first] != '{') {
      return Fail(HeaderError::kHeaderNotObject, file,
                  "header JSON at byte offset 8 is not an object (must start with '{')");
    }
  }
  return absl::OkStatus();
}

Header EmptyHeaderFor(absl::string_view json, uint64_t file_size) {
  Header h;
  h.header_size = json.size();
  h.fingerprint = HeaderFingerprint(json);
  h.buffer_size = file_size - 8 - json.size();
  return h;
}

enum class ParsePath { kEither, kDom, kFast };

// Both parsers behind one sequence of checks. kEither: the fast path, else the DOM parser;
// kDom: the DOM parser only; kFast: the fast path only (kUnavailable where it declines).
absl::StatusOr<Header> Parse(absl::string_view json, uint64_t file_size, absl::string_view file,
                             ParsePath path) {
  RETURN_IF_ERROR(Precheck(json, file_size, file));
  Header h = EmptyHeaderFor(json, file_size);
  std::vector<uint64_t> key_at;
  if (path != ParsePath::kDom && ExtractFast(json, &h, &key_at)) {
    // The same checks, in the same order, as the DOM path: the same errors.
    for (size_t i = 0; i < h.tensors.size(); ++i) {
      RETURN_IF_ERROR(CheckEntry(h.tensors[i], h, key_at[i], file));
    }
  } else if (path == ParsePath::kFast) {
    return absl::UnavailableError("the fast path does not read this header");
  } else {
    h = EmptyHeaderFor(json, file_size);
    RETURN_IF_ERROR(ExtractWithDom(json, &h, file));
  }
  RETURN_IF_ERROR(CheckTiling(h, file_size, file));
  h.Reindex();
  return h;
}

}  // namespace

namespace internal {

absl::StatusOr<Header> ParseHeaderWithDom(absl::string_view json, uint64_t file_size,
                                          absl::string_view file) {
  return Parse(json, file_size, file, ParsePath::kDom);
}

std::optional<Header> ParseHeaderFast(absl::string_view json, uint64_t file_size) {
  absl::StatusOr<Header> h = Parse(json, file_size, "", ParsePath::kFast);
  if (!h.ok()) return std::nullopt;
  return std::move(*h);
}

}  // namespace internal

absl::StatusOr<Header> ParseHeader(absl::string_view json, uint64_t file_size,
                                   absl::string_view file) {
  return Parse(json, file_size, file, ParsePath::kEither);
}

absl::StatusOr<Header> LayoutHeader(std::vector<TensorSpec> specs,
                                    std::map<std::string, std::string> metadata) {
  std::sort(specs.begin(), specs.end(), [](const TensorSpec& a, const TensorSpec& b) {
    int aa = AlignmentOf(a.dtype), ab = AlignmentOf(b.dtype);
    return aa != ab ? aa > ab : a.name < b.name;
  });
  Header h;
  h.has_metadata = !metadata.empty();
  h.metadata = std::move(metadata);
  uint64_t cursor = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    if (specs[i].name == kMetadataKey) {
      return absl::InvalidArgumentError("a tensor cannot be named __metadata__");
    }
    if (!h.tensors.empty() && specs[i].name == h.tensors.back().name) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", Quote(specs[i].name), " appears twice"));
    }
    absl::StatusOr<uint64_t> bytes = ByteSizeOf(specs[i].dtype, specs[i].shape);
    if (!bytes.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", Quote(specs[i].name), ": ", bytes.status().message()));
    }
    TensorEntry t;
    t.name = std::move(specs[i].name);
    t.dtype = specs[i].dtype;
    t.shape = std::move(specs[i].shape);
    t.begin = cursor;
    if (__builtin_add_overflow(cursor, *bytes, &cursor)) {
      return absl::InvalidArgumentError("total tensor bytes overflow 64 bits");
    }
    t.end = cursor;
    h.tensors.push_back(std::move(t));
  }
  h.buffer_size = cursor;
  h.header_size = SerializeHeaderJson(h).size();
  h.Reindex();
  return h;
}

std::string SerializeHeaderJson(const Header& h) {
  std::string out = "{";
  bool first = true;
  if (h.has_metadata || !h.metadata.empty()) {
    out += "\"__metadata__\":{";
    bool first_m = true;
    for (const auto& [k, v] : h.metadata) {
      if (!first_m) out += ',';
      first_m = false;
      absl::StrAppend(&out, Quote(k), ":", Quote(v));
    }
    out += '}';
    first = false;
  }
  for (const TensorEntry& t : h.tensors) {
    if (!first) out += ',';
    first = false;
    absl::StrAppend(&out, Quote(t.name), ":{\"dtype\":\"", DTypeName(t.dtype), "\",\"shape\":[",
                    absl::StrJoin(t.shape, ","), "],\"data_offsets\":[", t.begin, ",", t.end, "]}");
  }
  out += '}';
  out.append((8 - out.size() % 8) % 8, ' ');
  return out;
}

std::string SerializeHeader(const Header& h) {
  std::string json = SerializeHeaderJson(h);
  std::string out(8, '\0');
  uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  out += json;
  return out;
}

}  // namespace safeshard
