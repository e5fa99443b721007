// hf_storage_reader.h: load any slice of a safetensors checkpoint into torch tensors — the C++
// counterpart of PyTorch's HuggingFaceStorageReader with DCP's load planning.
//
// Metadata comes from headers only (DCP_SHARDING_INFO chunks, else whole tensors). Each request
// names a tensor and the box this rank wants (its local tensor's shape at `offsets` in the global
// tensor: any sharding, any mesh); it is intersected with every stored chunk and only the
// intersections are copied, straight from each file mapped once into the destination memory. A
// checkpoint saved 4-way row-sharded loads into 2-way column-sharded tensors.
//
//   std::vector<LoadRequest> reqs = {{"w", local, {0, rank * 512}}};
//   RETURN_IF_ERROR(LoadInto("/ckpt/step-100", reqs));
//
// `key_map` renames stored keys to the names requested (applied after the sharding-info lookup).
// libtorch 1.13 has no float8 types: F8_* tensors load into uint8 destinations (bytes unchanged);
// save them back as F8 with SaveOptions::fqn_to_dtype_mapping.
#ifndef SAFESHARD_CORE_DCP_HF_STORAGE_READER_H_
#define SAFESHARD_CORE_DCP_HF_STORAGE_READER_H_

#include <torch/torch.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "core/quant/quant.h"
#include "core/remap/keymap.h"

namespace safeshard {

struct LoadRequest {
  std::string fqn;
  at::Tensor dest;               // filled in place; its shape is the requested box's sizes
  std::vector<int64_t> offsets;  // of the box in the global tensor (empty: all zeros)
};

struct LoadStats {
  uint64_t bytes_copied = 0;
  int files_mapped = 0;
  uint64_t bytes_fetched = 0;  // remote files: bytes of ranged GETs
  int ranges_fetched = 0;      // remote files: ranged GETs after coalescing
};

class CheckpointLayout;
class FileSystem;
class MappedRegion;
class ReadableFile;

// The reader object: metadata read once from headers and cached until the checkpoint's files
// change (names, sizes, mtimes); every file mapped once and shared by all reads; requests filled
// by `thread_count` threads.
class HfStorageReader {
 public:
  // `path` is a directory, a file, or a URL (http(s)://, hf://, file://, mem://) when `fs` is
  // null. Remote files are never downloaded whole by ReadData: each request's rows are fetched
  // with ranged GETs, nearby ranges coalesced, in parallel.
  explicit HfStorageReader(std::string path, const KeyMap* key_map = nullptr, int thread_count = 1,
                           FileSystem* fs = nullptr, std::string token = "");
  ~HfStorageReader();

  absl::StatusOr<const CheckpointLayout*> ReadMetadata();
  absl::Status ReadData(std::vector<LoadRequest>& requests, LoadStats* stats = nullptr);
  // A zero-copy, read-only view of a tensor stored whole in one chunk at an address aligned to its
  // element size; it keeps the file mapped while alive. kFailedPrecondition otherwise.
  absl::StatusOr<at::Tensor> View(const std::string& fqn);
  int metadata_reads() const { return metadata_reads_; }
  // The FP8 block size quantized weights pair with (QuantizedHfStorageReader); default:
  // config.json's, else 128x128. Takes effect at the next metadata read.
  void set_quant_block(std::optional<quant::BlockSize> block) {
    quant_block_ = block;
    fingerprint_.clear();
  }

 private:
  absl::StatusOr<const MappedRegion*> Mapping(int file);
  absl::StatusOr<ReadableFile*> Source(int file);
  std::string Fingerprint() const;
  std::string path_;
  const KeyMap* key_map_;
  int threads_;
  std::shared_ptr<FileSystem> owned_fs_;  // the file system a URL named
  absl::Status fs_status_;                // why the URL could not be resolved
  FileSystem* fs_;
  std::unique_ptr<CheckpointLayout> layout_;
  std::string fingerprint_;
  int metadata_reads_ = 0;
  std::optional<quant::BlockSize> quant_block_;
  std::vector<std::unique_ptr<ReadableFile>> files_;
  std::vector<std::shared_ptr<const MappedRegion>> maps_;
};

// One-shot convenience: HfStorageReader(dir, key_map).ReadData(requests).
absl::Status LoadInto(const std::string& dir, std::vector<LoadRequest>& requests,
                      const KeyMap* key_map = nullptr, LoadStats* stats = nullptr);

}  // namespace safeshard

#endif  // SAFESHARD_CORE_DCP_HF_STORAGE_READER_H_
