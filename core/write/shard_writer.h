// shard_writer.h: one rank's part of a per-rank HF checkpoint, written from raw buffers — the
// torch-free counterpart of core/dcp's SaveSharded for any training loop (the Python module's
// ShardWriter).
//
// Files are PyTorch's: shard-RRRRR-model-IIIII-of-NNNNN.safetensors (file index from
// fqn_to_index, else 1 of 1) with DCP_SHARDING_INFO (logical_fqn, saved_offsets, global_shape);
// several chunks of one tensor on one rank are stored under "{fqn}.__dcp_shard_{k}". Each file
// is written under a temporary name, fsynced and renamed. The completion manifest
// (safeshard.complete.json) is published once every rank has committed, with no collective:
// each rank leaves a commit record beside its files, and the rank that completes the set
// publishes the manifest (an exclusive lock picks one when several do at once). It refuses to
// publish over files no record claims (an earlier, larger save's); a scan reports records of an
// unfinished save as a blocking problem.
//
//   ShardWriter w(LocalFileSystem(), "/ckpt/step-100", rank, world_size);
//   RETURN_IF_ERROR(w.Add({"w", DType::kBF16, {512, 4096}, {rank * 512, 0}, {4096, 4096}, p}));
//   ASSIGN_OR_RETURN(ShardCommit c, w.Commit());  // c.manifest_published on the last rank
#ifndef SAFESHARD_CORE_WRITE_SHARD_WRITER_H_
#define SAFESHARD_CORE_WRITE_SHARD_WRITER_H_

#include <atomic>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/format/dtype.h"
#include "core/io/filesystem.h"

namespace safeshard {

struct ShardBuffer {
  std::string fqn;
  DType dtype = DType::kF32;
  std::vector<uint64_t> shape;         // this chunk's
  std::vector<uint64_t> offsets;       // in the global tensor (empty: zeros)
  std::vector<uint64_t> global_shape;  // empty: the chunk's shape
  const void* data = nullptr;          // row-major, valid until Commit returns
};

struct ShardCommit {
  std::vector<std::string> files;   // this rank's, names in the directory
  uint64_t bytes = 0;               // tensor bytes written
  bool manifest_published = false;  // by this rank (it completed the set)
};

class ShardWriter {
 public:
  // `dir` must be a local directory (created when missing).
  ShardWriter(std::string dir, int rank, int world_size,
              std::map<std::string, int> fqn_to_index = {}, int threads = 1);

  // Checks and records a chunk (kInvalidArgument: a box outside its global shape, a global
  // shape that disagrees with an earlier chunk of the same tensor, a dtype change).
  absl::Status Add(ShardBuffer buffer);
  // Writes this rank's files (all under temporary names first; renamed only when every one is
  // complete and `cancel` is not set: kCancelled leaves nothing), then its commit record;
  // publishes the manifest when this rank completes the set. A second Commit is an error.
  absl::StatusOr<ShardCommit> Commit(const std::atomic<bool>* cancel = nullptr);

  // kInvalidArgument unless 0 <= rank < world_size and every file index is in 1..99999.
  static absl::Status CheckGroup(int rank, int world_size,
                                 const std::map<std::string, int>& fqn_to_index);

 private:
  std::string dir_;
  int rank_, world_;
  std::map<std::string, int> fqn_to_index_;
  int threads_;
  std::vector<ShardBuffer> buffers_;
  bool committed_ = false;
};

}  // namespace safeshard

#endif  // SAFESHARD_CORE_WRITE_SHARD_WRITER_H_
