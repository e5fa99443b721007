// quantized_reader.h: load any slice of a block-quantized weight (FP8 block-scaled, MXFP4) into
// a BF16/F16/F32 tensor of any sharding — the counterpart of PyTorch's
// QuantizedHuggingFaceStorageReader, without its limits (2-D only, an index json required, whole
// blocks held in memory).
//
// A request names the logical weight (X.weight for FP8; X for MXFP4's X_blocks + X_scales) and
// a destination box; only the codes inside the box and the scales of the blocks it touches are
// read (through HfStorageReader: any layout, local or remote, per-rank shards too), then decoded
// into the destination (code x scale in float, rounded once). Requests for other tensors load as
// stored.
//
//   QuantizedHfStorageReader reader("/models/DeepSeek-V3", /*thread_count=*/4);
//   at::Tensor w = torch::empty({1024, 7168}, torch::kBFloat16);  // this rank's rows
//   std::vector<LoadRequest> reqs = {{"model.layers.3.mlp.up_proj.weight", w, {rank * 1024, 0}}};
//   RETURN_IF_ERROR(reader.ReadData(reqs));
#ifndef SAFESHARD_CORE_DCP_QUANTIZED_READER_H_
#define SAFESHARD_CORE_DCP_QUANTIZED_READER_H_

#include <optional>
#include <string>
#include <vector>

#include "core/dcp/hf_storage_reader.h"
#include "core/quant/quant.h"

namespace safeshard {

class QuantizedHfStorageReader {
 public:
  // `block`: the FP8 block size; default config.json's quantization_config.weight_block_size,
  // else 128x128 (CheckpointLayout's pairing).
  explicit QuantizedHfStorageReader(std::string path, int thread_count = 1,
                                    std::optional<quant::BlockSize> block = std::nullopt,
                                    FileSystem* fs = nullptr);
  ~QuantizedHfStorageReader();

  // The checkpoint as stored; quantized() lists the logical weights.
  absl::StatusOr<const CheckpointLayout*> ReadMetadata();
  // The logical weights a request may name, with their global shapes (MXFP4: [..., G * 32]).
  absl::StatusOr<std::vector<quant::QuantPair>> QuantizedWeights();
  // Fills every request. A quantized weight needs a BF16, F16 or F32 destination.
  absl::Status ReadData(std::vector<LoadRequest>& requests, LoadStats* stats = nullptr);

 private:
  HfStorageReader inner_;
};

}  // namespace safeshard

#endif  // SAFESHARD_CORE_DCP_QUANTIZED_READER_H_
