// hf_storage_writer.h: save a distributed state dict as safetensors, the C++ counterpart of
// PyTorch's HuggingFaceStorageWriter with save_sharded=True (per-rank DCP shards).
//
// Each rank plans its items (its chunk of every sharded tensor; every replicated tensor as a
// candidate); the plans are all-gathered and every rank derives the same global plan: replicated
// tensors are saved once, by the rank with the fewest bytes so far (spread by bytes). Each rank
// streams its file straight from tensor memory (header from the plan, then each tensor's bytes:
// never a whole-file buffer) under a temporary name and fsyncs it; statuses are all-gathered, and
// only when every rank succeeded are the files renamed and the coordinator's completion manifest
// (safeshard.complete.json: rank count, files, sizes) published last. A rank that fails makes
// every rank return its error, and no manifest appears.
//
//   StateDict sd;
//   sd.push_back({"w", ShardedTensor{local, {4096, 1024}, {rank * 1024, 0}}});
//   sd.push_back({"norm", full_tensor});   // replicated
//   ASSIGN_OR_RETURN(SaveResult r, SaveSharded(sd, "/ckpt/step-100", *collective));
//
// Dtypes: BF16, F16, F32, F64, I8..I64, U8, BOOL. libtorch 1.13 has no float8 types.
#ifndef SAFESHARD_CORE_DCP_HF_STORAGE_WRITER_H_
#define SAFESHARD_CORE_DCP_HF_STORAGE_WRITER_H_

#include <torch/torch.h>

#include <map>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"
#include "core/consolidate/collective.h"
#include "core/format/dtype.h"

namespace safeshard {

inline constexpr char kCompletionManifestName[] = "safeshard.complete.json";

struct ShardedTensor {
  at::Tensor local;  // this rank's chunk (any strides; may be empty)
  std::vector<int64_t> global_shape;
  std::vector<int64_t> offsets;  // of `local` within the global tensor
};

using StateDictValue = std::variant<at::Tensor, ShardedTensor>;
using StateDict = std::vector<std::pair<std::string, StateDictValue>>;

absl::StatusOr<DType> DTypeOfTorch(c10::ScalarType t);

struct SaveResult {
  std::vector<std::string> consolidated_files;              // with consolidated_output_path
  std::string file;                                         // this rank's file name
  uint64_t bytes = 0;                                       // tensor bytes this rank wrote
  std::vector<std::pair<std::string, uint64_t>> all_files;  // every rank's file and size
};

class FileSystem;

struct SaveOptions {
  FileSystem* fs = nullptr;  // where files go (default: the one `dir` names: a path or a URL)
  std::string token;         // bearer token for http(s):// (default $HF_TOKEN, token file)
  // Sharded saves: shard-RRRRR-model-IIIII-of-NNNNN.safetensors per rank and mapped file index
  // (one file per rank without a mapping); full saves: model-IIIII-of-NNNNN.safetensors.
  int thread_count = 1;  // files of one rank written in parallel
  // finish(): after the shards are published, every rank consolidates them together into the HF
  // layout here (work split by bytes; rank 0 publishes the index last).
  std::string consolidated_output_path;
  std::optional<std::map<std::string, int>> fqn_to_index_mapping;  // output files (1-based)
  // Sharded saves: uint8 tensors named here as F8_E4M3/F8_E5M2/F8_E8M0 are saved under that
  // dtype (libtorch 1.13 has no float8 types; the bytes are unchanged). Consolidation: restore
  // original dtypes (floating point conversions).
  std::map<std::string, DType> fqn_to_dtype_mapping;
  bool diffusers_compatible = false;
  int num_threads_consolidation = 1;

  // PyTorch's newest HuggingFaceStorageWriter parameter names (used by Save()):
  // save_distributed: per-rank shards (SaveSharded) rather than full files (SaveFull).
  bool save_distributed = true;
  // enable_consolidation: the shards go to PATH/sharded/ and their consolidation to PATH.
  bool enable_consolidation = false;
  // thread_count_consolidation: copy threads of that consolidation (0: num_threads_consolidation).
  int thread_count_consolidation = 0;
};

// The sub-directory the shards go to with enable_consolidation (PyTorch's SHARDED_DIR_NAME).
inline constexpr char kShardedDirName[] = "sharded";

// Several entries may share a name only as sharded chunks of one tensor held by this rank
// (strided FSDP2+TP sharding): they are stored in one file under physical keys
// "{fqn}.__dcp_shard_{k}". Every DCP_SHARDING_INFO entry carries logical_fqn and global_shape.
absl::StatusOr<SaveResult> SaveSharded(const StateDict& state_dict, const std::string& dir,
                                       Collective& collective, const SaveOptions& options = {});

// PyTorch's newest writer semantics: save_distributed chooses SaveSharded or SaveFull;
// enable_consolidation saves the shards to `path`/sharded/ and consolidates them into `path`
// (thread_count_consolidation threads).
absl::StatusOr<SaveResult> Save(const StateDict& state_dict, const std::string& path,
                                Collective& collective, const SaveOptions& options = {});

// save_sharded=False: full tensors only (replicated on every rank). Files follow
// `fqn_to_index_mapping` (one file without it): model-IIIII-of-NNNNN.safetensors, each written by
// one rank (files spread over ranks by bytes), and the coordinator writes
// model.safetensors.index.json (diffusion_pytorch_model... with diffusers_compatible) last.
absl::StatusOr<SaveResult> SaveFull(const StateDict& state_dict, const std::string& dir,
                                    Collective& collective, const SaveOptions& options = {});

}  // namespace safeshard

#endif  // SAFESHARD_CORE_DCP_HF_STORAGE_WRITER_H_
