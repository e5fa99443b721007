// example.h: generated checkpoints laid out exactly as PyTorch's HuggingFaceStorageWriter
// writes per-rank DCP shards (torch-free). Used by the CLI's `make-example`, tests and benchmarks.
//
//   std::vector<ExampleTensor> model = TransformerLikeModel({.layers = 2, .hidden = 64});
//   RETURN_IF_ERROR(WriteDcpCheckpoint(LocalFileSystem(), "/tmp/ckpt", model, {.ranks = 4}));
//   // -> shard-00001-model-00001-of-00001.safetensors ... shard-00004-...
//
// Every byte is a deterministic function of (tensor name, global byte position), so any
// reassembly can be checked with ExpectedTensorBytes().
#ifndef SAFESHARD_CORE_EXAMPLE_EXAMPLE_H_
#define SAFESHARD_CORE_EXAMPLE_EXAMPLE_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "core/format/dtype.h"
#include "core/io/filesystem.h"

namespace safeshard {

enum class Sharding {
  kReplicated,  // saved once, by the rank with the fewest bytes so far, at zero offsets
  kRow,         // dim 0 split across ranks (torch.chunk sizes: uneven, possibly empty)
  kColumn,      // dim 1 split across ranks
  kMesh,        // 2-D mesh: dim 0 across mesh rows, dim 1 across mesh columns
  // Strided (FSDP2 + TP, PyTorch's _StridedShard): dim 0 cut into 2R row blocks, rank r holds
  // blocks r and r + R: two non-adjacent chunks in one rank file. Needs `logical_fqn` (the
  // newest PyTorch layout: physical keys "{fqn}.__dcp_shard_{k}").
  kStrided,
  // 2-D strided: dim 1 split across mesh columns, dim 0 strided across mesh rows (two row blocks
  // per rank).
  kStridedMesh,
};

struct ExampleTensor {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<uint64_t> shape;
  Sharding sharding = Sharding::kReplicated;
};

struct ModelOptions {
  int layers = 2;
  uint64_t hidden = 64;
  uint64_t vocab = 512;
  uint64_t ffn_multiple = 4;
};
// Embedding, per-layer attention/MLP/norm weights (row, column and mesh sharded), BF16, F32,
// F16, I64 and BOOL tensors, a 0-d scalar.
std::vector<ExampleTensor> TransformerLikeModel(const ModelOptions& o);

// `count` small replicated tensors (for scan benchmarks): "blocks.{i}.w" F32 [4, 4].
std::vector<ExampleTensor> ManySmallTensors(int count);

struct WriteOptions {
  int ranks = 4;
  int mesh_rows = 2;  // for kMesh; must divide ranks
  // Leaves out one rank's chunk of one tensor: a deliberate coverage gap.
  std::optional<std::pair<std::string, int>> drop_chunk;
  // Called after each rank file is written (bytes so far, total bytes).
  std::function<void(uint64_t, uint64_t)> progress;
  // PyTorch's newest writer: every DCP_SHARDING_INFO entry carries logical_fqn, and a rank with
  // several chunks of one tensor stores them under "{fqn}.__dcp_shard_{k}".
  bool logical_fqn = false;
  // PR #189945: every entry also carries the tensor's global_shape.
  bool global_shape = false;
  // Publish safeshard.complete.json (ranks, files, sizes, XXH3-64 checksums) last, as
  // safeshard's own writer does.
  bool manifest = false;
};

// One file per rank: shard-{rank+1:05}-model-00001-of-00001.safetensors with DCP metadata.
absl::Status WriteDcpCheckpoint(FileSystem& fs, const std::string& dir,
                                const std::vector<ExampleTensor>& tensors,
                                const WriteOptions& options);

// The chunks of `t` that each rank saves (offsets, sizes); empty if that rank saves none.
struct ChunkSpec {
  std::vector<uint64_t> offsets;
  std::vector<uint64_t> sizes;
};
std::vector<std::vector<ChunkSpec>> PlanChunks(const std::vector<ExampleTensor>& tensors,
                                               size_t tensor_index, const WriteOptions& o,
                                               std::vector<uint64_t>* bytes_per_rank);

// The full tensor's bytes as the generator defines them.
std::string ExpectedTensorBytes(const ExampleTensor& t);
// Bytes of the chunk `c` of tensor `t` (row-major within the chunk).
std::string ChunkBytes(const ExampleTensor& t, const ChunkSpec& c);

}  // namespace safeshard

#endif  // SAFESHARD_CORE_EXAMPLE_EXAMPLE_H_
