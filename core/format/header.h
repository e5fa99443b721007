// header.h: the safetensors header — parse with every validation rule, serialize canonically.
//
// A safetensors file is `u64 little-endian N`, N bytes of UTF-8 JSON, then the byte buffer.
//
//   // Reading (the caller supplies bytes; core/io does the file access):
//   ASSIGN_OR_RETURN(uint64_t n, ParseHeaderLength(first8, file_size, "a.safetensors"));
//   ASSIGN_OR_RETURN(Header h, ParseHeader(json_bytes, file_size, "a.safetensors"));
//   for (const TensorEntry& t : h.tensors) { ... t.begin + h.data_start() is the file offset }
//
//   // Writing:
//   ASSIGN_OR_RETURN(Header h, LayoutHeader({{"w", DType::kF32, {2, 2}}}, {{"format", "pt"}}));
//   std::string prefix = SerializeHeader(h);  // 8-byte length + padded JSON; then the buffer
//
// Every rejection is a distinct HeaderError (HeaderErrorOf(status)) whose message names the
// file, the tensor and the absolute byte offset in the file.
#ifndef SAFESHARD_CORE_FORMAT_HEADER_H_
#define SAFESHARD_CORE_FORMAT_HEADER_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>
#include "absl/strings/string_view.h"

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/format/dtype.h"

namespace safeshard {

inline constexpr uint64_t kMaxHeaderSize = 100'000'000;
inline constexpr absl::string_view kMetadataKey = "__metadata__";

// Why a header was rejected. Each has a stable name (HeaderErrorName) used in messages,
// JSON output and tests.
enum class HeaderError {
  kFileTooSmall,             // fewer than 8 bytes
  kGitLfsPointer,            // a Git LFS pointer file stored under a .safetensors name
  kHeaderTooLarge,           // N > 100,000,000
  kHeaderLengthExceedsFile,  // 8 + N > file size
  kInvalidUtf8,              // header bytes are not UTF-8
  kInvalidJson,              // not parseable JSON
  kHeaderNotObject,          // JSON is not an object
  kDuplicateKey,             // a key repeated in any object of the header
  kInvalidMetadata,          // __metadata__ not an object of string -> string
  kInvalidTensorEntry,       // entry missing dtype/shape/data_offsets or of the wrong type
  kUnknownDType,             // dtype name not in the table
  kShapeOverflow,            // product of the shape (or its bytes) overflows 64 bits
  kMisalignedBits,           // sub-byte dtype whose total bits are not whole bytes
  kSizeMismatch,             // end - begin != numel * bits / 8
  kInvalidOffsets,           // begin > end
  kOffsetGap,                // bytes of the buffer that no tensor covers
  kOffsetOverlap,            // two tensors share bytes
  kBufferSizeMismatch,       // last tensor end != buffer size (trailing or missing bytes)
};

absl::string_view HeaderErrorName(HeaderError e);
// The HeaderError carried by a status from this unit, if any.
std::optional<HeaderError> HeaderErrorOf(const absl::Status& s);

struct TensorEntry {
  std::string name;
  DType dtype = DType::kU8;
  std::vector<uint64_t> shape;
  uint64_t begin = 0;  // [begin, end) relative to the start of the byte buffer
  uint64_t end = 0;
  uint64_t size() const { return end - begin; }
};

struct Header {
  std::map<std::string, std::string> metadata;  // __metadata__ (string -> string)
  bool has_metadata = false;                    // whether __metadata__ was present
  std::vector<TensorEntry> tensors;             // in data order (by begin offset, then name)
  uint64_t header_size = 0;                     // N: JSON bytes including padding
  uint64_t buffer_size = 0;                     // bytes after the header
  uint64_t fingerprint = 0;                     // HeaderFingerprint of the N header bytes parsed

  uint64_t data_start() const { return 8 + header_size; }
  uint64_t file_size() const { return data_start() + buffer_size; }
  // nullptr if absent. O(1); call Reindex() after changing `tensors` by hand.
  const TensorEntry* Find(absl::string_view name) const;
  void Reindex();

 private:
  absl::flat_hash_map<std::string, size_t> by_name_;
};

// Validates the first bytes of a file (at least 8 when the file has them) and returns N.
// `prefix` may be longer than 8 bytes; it is also used to recognise Git LFS pointers.
absl::StatusOr<uint64_t> ParseHeaderLength(absl::string_view prefix, uint64_t file_size,
                                           absl::string_view file);

// A hash of a file's N header bytes: equal bytes give equal values within one process (not a
// stable on-disk checksum). Used to notice a file replaced between a scan and a later read.
uint64_t HeaderFingerprint(absl::string_view header_bytes);

// Parses and validates the N JSON bytes of a file of `file_size` bytes.
absl::StatusOr<Header> ParseHeader(absl::string_view json, uint64_t file_size,
                                   absl::string_view file);

namespace internal {
// The two parsers ParseHeader combines, for tests and the fuzz target. ParseHeaderWithDom is the
// strict DOM parser: it gives every error with its offset. ParseHeaderFast reads a header of the
// usual shape straight from the bytes and returns nullopt for anything else, valid or not
// (ParseHeader then runs the DOM parser): it never accepts what the DOM parser refuses, and what
// it accepts equals the DOM parser's result.
absl::StatusOr<Header> ParseHeaderWithDom(absl::string_view json, uint64_t file_size,
                                          absl::string_view file);
std::optional<Header> ParseHeaderFast(absl::string_view json, uint64_t file_size);
}  // namespace internal

struct TensorSpec {
  std::string name;
  DType dtype = DType::kU8;
  std::vector<uint64_t> shape;
};

// Orders tensors canonically (dtype alignment descending, then name), assigns their offsets,
// and computes the padded header size. Errors on duplicate names or sizes that overflow.
absl::StatusOr<Header> LayoutHeader(std::vector<TensorSpec> specs,
                                    std::map<std::string, std::string> metadata);

// The header JSON exactly as it will be written: compact, __metadata__ first (if any),
// tensors in `h.tensors` order, padded with spaces to a multiple of 8 bytes.
std::string SerializeHeaderJson(const Header& h);
// 8-byte little-endian length followed by SerializeHeaderJson(h).
std::string SerializeHeader(const Header& h);

}  // namespace safeshard

#endif  // SAFESHARD_CORE_FORMAT_HEADER_H_
