#include "core/format/dtype.h"

#include <array>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace safeshard {
namespace {

struct DTypeInfo {
  DType type;
  absl::string_view name;
  int bits;
  bool floating;
};

constexpr std::array<DTypeInfo, kNumDTypes> kTable = {{
    {DType::kBOOL, "BOOL", 8, false},
    {DType::kF4, "F4", 4, true},
    {DType::kF6_E2M3, "F6_E2M3", 6, true},
    {DType::kF6_E3M2, "F6_E3M2", 6, true},
    {DType::kU8, "U8", 8, false},
    {DType::kI8, "I8", 8, false},
    {DType::kF8_E5M2, "F8_E5M2", 8, true},
    {DType::kF8_E4M3, "F8_E4M3", 8, true},
    {DType::kF8_E8M0, "F8_E8M0", 8, true},
    {DType::kF8_E4M3FNUZ, "F8_E4M3FNUZ", 8, true},
    {DType::kF8_E5M2FNUZ, "F8_E5M2FNUZ", 8, true},
    {DType::kI16, "I16", 16, false},
    {DType::kU16, "U16", 16, false},
    {DType::kF16, "F16", 16, true},
    {DType::kBF16, "BF16", 16, true},
    {DType::kI32, "I32", 32, false},
    {DType::kU32, "U32", 32, false},
    {DType::kF32, "F32", 32, true},
    {DType::kC64, "C64", 64, true},
    {DType::kF64, "F64", 64, true},
    {DType::kI64, "I64", 64, false},
    {DType::kU64, "U64", 64, false},
}};

const DTypeInfo& Info(DType t) {
  return kTable[static_cast<int>(t)];
}

}  // namespace

int BitsOf(DType t) {
  return Info(t).bits;
}
absl::string_view DTypeName(DType t) {
  return Info(t).name;
}
bool IsFloatingPoint(DType t) {
  return Info(t).floating;
}
bool IsFloat8(DType t) {
  return t == DType::kF8_E4M3 || t == DType::kF8_E5M2 || t == DType::kF8_E8M0 ||
         t == DType::kF8_E4M3FNUZ || t == DType::kF8_E5M2FNUZ;
}
bool IsSubByte(DType t) {
  return Info(t).bits < 8;
}
int AlignmentOf(DType t) {
  return Info(t).bits < 8 ? 1 : Info(t).bits / 8;
}

absl::StatusOr<DType> ParseDType(absl::string_view name) {
  for (const DTypeInfo& i : kTable) {
    if (i.name == name) return i.type;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown dtype \"", name, "\""));
}

absl::StatusOr<uint64_t> NumElements(std::span<const uint64_t> shape) {
  uint64_t n = 1;
  for (uint64_t d : shape) {
    if (__builtin_mul_overflow(n, d, &n)) {
      return absl::InvalidArgumentError("shape element count overflows 64 bits");
    }
  }
  return n;
}

absl::StatusOr<uint64_t> ByteSizeOf(DType t, std::span<const uint64_t> shape) {
  absl::StatusOr<uint64_t> n = NumElements(shape);
  if (!n.ok()) return n.status();
  uint64_t bits;
  if (__builtin_mul_overflow(*n, static_cast<uint64_t>(BitsOf(t)), &bits)) {
    return absl::InvalidArgumentError("tensor bit size overflows 64 bits");
  }
  if (bits % 8 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(*n, " elements of ", DTypeName(t), " are ", bits,
                                                   " bits, not a whole number of bytes"));
  }
  return bits / 8;
}

}  // namespace safeshard
