// tensor_stats.h: value statistics of one tensor of a checkpoint, read chunk by chunk.
//
// The header is torch-free; the implementation uses libtorch (the only part of the inspector
// that needs it). Memory stays bounded by the block size whatever the tensor's size: each chunk
// is read from its memory-mapped file in blocks, converted to double, and folded in.
//
//   ASSIGN_OR_RETURN(TensorStats s, ComputeTensorStats(fs, layout, *layout.FindTensor("w"), {}));
//   s.min, s.max, s.mean, s.std, s.nan, s.inf, s.zeros, s.histogram
#ifndef SAFESHARD_GUI_STATS_TENSOR_STATS_H_
#define SAFESHARD_GUI_STATS_TENSOR_STATS_H_

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/io/filesystem.h"
#include "core/layout/layout.h"

namespace safeshard {

struct TensorStats {
  uint64_t elements = 0;  // elements read (all chunks)
  uint64_t finite = 0;
  uint64_t nan = 0, inf = 0, zeros = 0;
  double min = 0, max = 0, mean = 0, std = 0;  // over finite values; std is unbiased (n - 1)
  std::vector<uint64_t> histogram;             // `bins` equal bins over [min, max]
  double hist_lo = 0, hist_hi = 0;
  uint64_t bytes_read = 0;
  std::string note;  // e.g. "chunks cover 75% of the tensor (gap)"
};

struct StatsOptions {
  int bins = 64;
  uint64_t block_elements = 1 << 22;
  const std::atomic<bool>* cancel = nullptr;  // set to abandon (kCancelled)
};

// kUnimplemented for dtypes without a numeric reading here (complex, sub-byte floats);
// kDataLoss naming file, tensor and offset when a chunk lies outside its file.
absl::StatusOr<TensorStats> ComputeTensorStats(FileSystem& fs, const CheckpointLayout& layout,
                                               const TensorLayout& tensor,
                                               const StatsOptions& options);

}  // namespace safeshard

#endif  // SAFESHARD_GUI_STATS_TENSOR_STATS_H_
