// slice_reader.h: read any box of a tensor from a scanned checkpoint into caller memory, from
// whichever stored chunks intersect it, reading only their intersecting bytes — the resharding
// load without libtorch (the Python module's read_slice; core/dcp wraps the same copy for
// torch tensors).
//
//   ASSIGN_OR_RETURN(CheckpointLayout ck, CheckpointLayout::Scan(fs, "/ckpt/step-100"));
//   std::vector<char> out(512 * 4096 * 2);  // BF16 rows 512..1023, all columns
//   RETURN_IF_ERROR(ReadSlice(fs, ck, "lm_head.weight", {512, 0}, {512, 4096}, out.data(),
//                             out.size()));
#ifndef SAFESHARD_CORE_LAYOUT_SLICE_READER_H_
#define SAFESHARD_CORE_LAYOUT_SLICE_READER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "core/io/filesystem.h"
#include "core/layout/layout.h"

namespace safeshard {

struct SliceStats {
  uint64_t bytes_copied = 0;  // into `out`
  int chunks_read = 0;
};

// Fills `out` (row-major, `sizes` elements of the tensor's stored dtype, `out_bytes` long) with
// the box at `offsets`. Local files are mapped and copied from under a SIGBUS guard (a file
// truncated meanwhile is an error naming it); remote ones are read by the rows needed.
// kNotFound: no such tensor; kInvalidArgument: a box outside the tensor or a wrong `out_bytes`;
// kFailedPrecondition: the checkpoint does not hold every requested element (a gap); kAborted: a
// file changed since the scan.
absl::Status ReadSlice(FileSystem& fs, const CheckpointLayout& ck, const std::string& fqn,
                       const std::vector<uint64_t>& offsets, const std::vector<uint64_t>& sizes,
                       void* out, uint64_t out_bytes, SliceStats* stats = nullptr);

}  // namespace safeshard

#endif  // SAFESHARD_CORE_LAYOUT_SLICE_READER_H_
