// diff.h: compare two checkpoints tensor by tensor, whatever their layouts (per-rank DCP shards,
// HF-sharded, single file): names, dtypes, global shapes and — unless headers_only — every byte
// of every tensor present in both, in global row-major order, straight from the mapped files
// (no tensor is assembled in memory).
//
//   ASSIGN_OR_RETURN(DiffReport r, DiffCheckpoints(fs_a, a, fs_b, b, {}));
//   r.identical()  // same tensors, dtypes, shapes and bytes
#ifndef SAFESHARD_CORE_DIFF_DIFF_H_
#define SAFESHARD_CORE_DIFF_DIFF_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/io/filesystem.h"
#include "core/layout/layout.h"

namespace safeshard {

enum class DiffKind {
  kOnlyInA,
  kOnlyInB,
  kDType,        // same name, other dtype
  kShape,        // same name and dtype, other global shape
  kValues,       // same name, dtype and shape, other bytes
  kNotCompared,  // values could not be compared (a gap or overlap on one side, a sub-byte split)
};
const char* DiffKindName(DiffKind k);

struct TensorDiff {
  DiffKind kind;
  std::string name;
  std::string detail;  // human-readable, names both sides
  // kValues: how many elements differ, and the first (row-major index into the global tensor).
  uint64_t differing_elements = 0;
  uint64_t first_element = 0;
  std::vector<uint64_t> first_index;  // first_element as a multi-index
  std::string first_a, first_b;       // that element's value on each side ("0x3f80 (1)")
  double max_abs_diff = 0;            // numeric comparisons: the largest |a - b| (finite values)
};

struct DiffOptions {
  bool headers_only = false;  // names, dtypes and shapes only: no tensor data is read
  // Tolerances for floating-point tensors (F64/F32/F16/BF16), as numpy.isclose: an element is
  // equal when |a - b| <= atol + rtol * |b| (NaN equals NaN, infinities of one sign are equal).
  // When either is set, float tensors are compared by value, also across float dtypes (an F32
  // tensor against its BF16 cast is not a difference if every value is within tolerance);
  // otherwise every tensor is compared byte for byte and another dtype is a difference.
  double atol = 0;
  double rtol = 0;
  // Compare float tensors by value (also across float dtypes): set by giving a tolerance, even
  // 0 (`--atol 0` means "equal values", which is not "equal bytes" across dtypes).
  bool by_value = false;
  bool numeric() const { return by_value || atol > 0 || rtol > 0; }
  int threads = 4;                                 // tensors compared at once
  std::function<bool(const std::string&)> filter;  // only these names (all when empty)
  const std::atomic<bool>* cancel = nullptr;
  std::function<void(uint64_t done_bytes, uint64_t total_bytes)> progress;
};

struct DiffReport {
  uint64_t in_both = 0;           // names present on both sides
  uint64_t identical = 0;         // of those: same dtype, shape and (when compared) bytes
  uint64_t bytes_compared = 0;    // per side
  uint64_t across_dtypes = 0;     // tensors compared by value across float dtypes (numeric mode)
  std::vector<TensorDiff> diffs;  // sorted by name
  bool identical_all() const { return diffs.empty(); }
};

// Both layouts must come from CheckpointLayout::Scan on `fa` and `fb`. kFailedPrecondition when a
// file of either side has an unreadable header (its tensors are unknown). Errors reading data
// (a truncated file, a remote failure) are returned, naming the file and offset.
absl::StatusOr<DiffReport> DiffCheckpoints(FileSystem& fa, const CheckpointLayout& a,
                                           FileSystem& fb, const CheckpointLayout& b,
                                           const DiffOptions& options);

}  // namespace safeshard

#endif  // SAFESHARD_CORE_DIFF_DIFF_H_
