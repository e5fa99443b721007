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

#include <string>
#include <vector>

#include "absl/status/status.h"
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
};

absl::Status LoadInto(const std::string& dir, std::vector<LoadRequest>& requests,
                      const KeyMap* key_map = nullptr, LoadStats* stats = nullptr);

}  // namespace safeshard

#endif  // SAFESHARD_CORE_DCP_HF_STORAGE_READER_H_
