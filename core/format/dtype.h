// dtype.h: the safetensors element types, their names and bit sizes.
//
//   ASSIGN_OR_RETURN(DType t, ParseDType("BF16"));
//   BitsOf(t) == 16; DTypeName(t) == "BF16";
//   ASSIGN_OR_RETURN(uint64_t bytes, ByteSizeOf(t, {4096, 4096}));
//
// An unknown name is an error (never a silent default). Sub-byte types (F4, F6_*) are legal only
// when the element count times the bit size is a whole number of bytes.
#ifndef SAFESHARD_CORE_FORMAT_DTYPE_H_
#define SAFESHARD_CORE_FORMAT_DTYPE_H_

#include <cstdint>
#include <span>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"

namespace safeshard {

enum class DType : uint8_t {
  kBOOL,
  kF4,
  kF6_E2M3,
  kF6_E3M2,
  kU8,
  kI8,
  kF8_E5M2,
  kF8_E4M3,
  kF8_E8M0,
  kF8_E4M3FNUZ,  // AMD's E4M3: bias 8, no infinities, NaN only 0x80 (no negative zero)
  kF8_E5M2FNUZ,  // AMD's E5M2: bias 16, no infinities, NaN only 0x80
  kI16,
  kU16,
  kF16,
  kBF16,
  kI32,
  kU32,
  kF32,
  kC64,
  kF64,
  kI64,
  kU64,
};

inline constexpr int kNumDTypes = 22;

// Bits per element (4, 6, 8, 16, 32 or 64).
int BitsOf(DType t);
// The safetensors spelling ("BF16", "F8_E4M3", ...).
absl::string_view DTypeName(DType t);
// Parses a safetensors dtype name (case-sensitive, as the format requires).
absl::StatusOr<DType> ParseDType(absl::string_view name);
// Alignment used to order tensors in a written header: bytes per element, at least 1.
int AlignmentOf(DType t);
bool IsFloatingPoint(DType t);
bool IsFloat8(DType t);
bool IsSubByte(DType t);

// Number of elements of `shape`, or an error if the product overflows 64 bits.
absl::StatusOr<uint64_t> NumElements(std::span<const uint64_t> shape);
// Bytes of a tensor of `shape`; errors on overflow or a sub-byte total that is not whole bytes.
absl::StatusOr<uint64_t> ByteSizeOf(DType t, std::span<const uint64_t> shape);

}  // namespace safeshard

#endif  // SAFESHARD_CORE_FORMAT_DTYPE_H_
