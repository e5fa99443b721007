// consolidate.h: per-rank DCP shards -> the HF layout, streaming, memory-bounded, atomic.
//
// The job of PyTorch's consolidate_safetensors_files(_on_every_rank), done better: the plan is
// built from headers alone and refuses incomplete checkpoints before a byte is written; each
// chunk is copied as its maximal contiguous runs from the memory-mapped input straight to its
// place in the output (no full-tensor buffer, each input mapped once); work is split across
// threads and ranks by bytes; outputs are written under temporary names, fsynced, renamed, and
// the index json is published last.
//
//   ConsolidateOptions o;
//   o.max_shard_size = 5'000'000'000;  // or fqn_to_index / a reference model; default one file
//   ASSIGN_OR_RETURN(ConsolidateResult r, Consolidate(LocalFileSystem(), "/run/step-100",
//                                                     "/run/step-100-hf", o));
//
// Multi-rank: pass a Collective; every rank calls Consolidate with the same arguments, the
// ranks share the copying by bytes, rank 0 publishes after every rank succeeded, and an error on
// any rank is returned on all ranks as "rank R: <error>".
#ifndef SAFESHARD_CORE_CONSOLIDATE_CONSOLIDATE_H_
#define SAFESHARD_CORE_CONSOLIDATE_CONSOLIDATE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/consolidate/collective.h"
#include "core/format/dtype.h"
#include "core/format/header.h"
#include "core/io/filesystem.h"
#include "core/layout/layout.h"
#include "core/quant/quant.h"
#include "core/remap/keymap.h"

namespace safeshard {

enum class UnmappedPolicy {
  kError,    // a tensor the mapping does not name is an error (default)
  kFirst,    // it goes to file 1
  kOwnFile,  // each such tensor gets a file of its own after the mapped ones
};

struct ConsolidateOptions {
  // Output files: at most one of these; neither means a single file.
  std::optional<std::map<std::string, int>> fqn_to_index;  // 1-based file index per tensor
  std::optional<uint64_t> max_shard_size;                  // HF save_pretrained semantics
  UnmappedPolicy unmapped = UnmappedPolicy::kError;

  std::map<std::string, std::string> metadata;  // added to {"format": "pt"}
  std::optional<DType> cast_dtype;              // floating-point tensors only, never FP8
  std::map<std::string, DType> fqn_to_dtype;    // restore original dtypes (reference model)
  const KeyMap* key_map = nullptr;              // applied to output names
  bool diffusers_index = false;                 // diffusion_pytorch_model.safetensors.index.json
  int threads = 0;                              // 0: hardware concurrency
  bool verify = false;                          // re-read and compare after writing
  bool overwrite = false;                       // replace an existing result in the output dir
  std::function<void(uint64_t done, uint64_t total)> progress;  // this rank's bytes
  const std::atomic<bool>* cancel = nullptr;                    // set to abandon (kCancelled)
  // Where outputs go when not on the input's file system (e.g. remote input, local output).
  FileSystem* output_fs = nullptr;
  // Proof of completeness: the input must hold exactly ranks 0..expect_ranks-1 (0: not
  // checked); `strict` refuses input whose completeness cannot be proven; a reference model's
  // tensor names and shapes must match.
  int expect_ranks = 0;
  bool strict = false;
  const CheckpointLayout* reference_layout = nullptr;
  // Publish safeshard.complete.json (kind "consolidated": sizes and XXH3-64 checksums of the
  // output files) before the index.
  bool checksums = true;
  // Inputs kept open (and mapped) at once; 0: half the soft open-file limit. Fewer than the
  // input files means some are reopened (and re-checked) as the copy moves between them.
  int max_open_inputs = 0;
  // Copy the model's small companion files found beside the input (ModelFileNames(): config,
  // generation config, tokenizer files, chat template) into the output, before the index; one
  // already in the output is kept.
  bool copy_model_files = true;
  // Dequantize block-quantized weights (FP8 X.weight + X.weight_scale_inv, MXFP4 X_blocks +
  // X_scales) into this dtype (BF16, F16 or F32): they become plain tensors (MXFP4 as X
  // [..., G * 32]), their scales are dropped, everything else is copied as it is; config.json
  // loses its quantization_config and gets torch_dtype. A scale without its weight, an FP8
  // weight without its scale or shapes that disagree are refused before anything is written.
  std::optional<DType> dequantize;
  // FP8 block size; default: config.json's quantization_config.weight_block_size, else 128x128.
  std::optional<quant::BlockSize> block_size;
};

// The companion files of an HF model directory that consolidation copies along.
const std::vector<std::string>& ModelFileNames();

// One contiguous-run copy job: a chunk of one input tensor into its output tensor.
struct CopyTask {
  int input_file = 0;      // index into ConsolidationPlan::inputs
  uint64_t src_begin = 0;  // absolute byte offset of the chunk in the input file
  int output_file = 0;
  uint64_t dst_begin = 0;  // absolute byte offset of the output tensor in its file
  DType src_dtype = DType::kU8;
  DType dst_dtype = DType::kU8;
  std::vector<uint64_t> offsets, sizes, shape;  // chunk placement in the global tensor
  std::vector<uint64_t> gstride;                // row-major strides of the global tensor
  int split_dim = 0;                            // dims >= split_dim are contiguous within a run
  uint64_t run_elems = 0;                       // elements per run
  uint64_t runs = 0;                            // number of runs
  std::string tensor;                           // output name, for messages
  // Dequantization: index into ConsolidationPlan::scales (-1: a plain copy or cast). src_dtype
  // is then the code type (an F8 type, or F4 for MXFP4, whose [..., G, 16] bytes are read as
  // the [..., G * 32] codes of the output tensor).
  int scale = -1;
  uint64_t src_bytes() const;
  uint64_t dst_bytes() const;
  // Element offset within the output tensor of run `r`.
  uint64_t DstElemOfRun(uint64_t r) const;
};

struct OutputFilePlan {
  std::string name;
  Header header;  // tensors with offsets relative to the buffer
};

// A scale tensor read while dequantizing, from wherever its chunks lie (another file, or
// sharded across rank files like its weight).
struct ScaleSource {
  std::string name;
  quant::Scheme scheme = quant::Scheme::kBlockFp8;
  DType dtype = DType::kF32;
  std::vector<uint64_t> shape;
  std::vector<Chunk> chunks;  // Chunk::file indexes ConsolidationPlan::inputs
  quant::BlockSize block;
};

struct ConsolidationPlan {
  std::string input_root;
  std::vector<std::string> inputs;         // input file paths
  std::vector<ScannedIdentity> input_ids;  // what the scan saw of each input (checked on open)
  std::vector<OutputFilePlan> outputs;
  std::vector<CopyTask> tasks;
  std::map<std::string, std::string> weight_map;  // output name -> file name
  uint64_t total_size = 0;                        // sum of output tensor bytes
  uint64_t total_parameters = 0;                  // sum of output tensor elements
  std::vector<ScaleSource> scales;                // dequantization only
  std::vector<std::string> dequantized;           // output names of dequantized weights
  // Dequantization: config.json as published (without quantization_config, with torch_dtype).
  std::optional<std::string> config_json;
  std::string index_name;
  std::vector<std::string> warnings;
};

// Builds the plan from a scanned checkpoint. kFailedPrecondition (before anything is written)
// when any tensor has a gap, overlap, dtype disagreement, invalid file, or the shard ranks are not
// dense; kInvalidArgument for bad options (unmapped tensors, impossible casts, name collisions).
// `config_json`: the input's config.json, when it has one (dequantization takes its block size
// from it and publishes it rewritten); see ReadModelConfig.
absl::StatusOr<ConsolidationPlan> PlanConsolidation(const CheckpointLayout& layout,
                                                    const ConsolidateOptions& options,
                                                    const std::string* config_json = nullptr);
// The config.json beside a checkpoint (nullopt when there is none; at most 16 MiB).
absl::StatusOr<std::optional<std::string>> ReadModelConfig(FileSystem& fs, const std::string& root);
// config.json for dequantized weights: quantization_config removed, torch_dtype (and dtype,
// when present) set to `dtype`'s torch name. Keys keep their order.
absl::StatusOr<std::string> DequantizedConfig(absl::string_view config_json, DType dtype);

// The source bytes each of `world` ranks copies for `plan` (the split Consolidate uses with a
// Collective of that size): for checking that multi-process consolidation stays byte-balanced.
std::vector<uint64_t> BytesPerRank(const ConsolidationPlan& plan, int world);

struct VerifyReport {
  uint64_t bytes_checked = 0;
  double seconds = 0;
  std::vector<std::string> mismatches;  // empty when the output matches
};

struct ConsolidateResult {
  std::string output_dir;
  std::vector<std::string> files;  // published file names, index last
  uint64_t bytes = 0;              // tensor bytes written (all ranks)
  double seconds = 0;
  std::optional<VerifyReport> verify;
  std::vector<std::string> warnings;
  size_t dequantized = 0;  // weights decoded (ConsolidateOptions::dequantize)
};

absl::StatusOr<ConsolidateResult> Consolidate(FileSystem& fs, const std::string& input,
                                              const std::string& output_dir,
                                              const ConsolidateOptions& options,
                                              Collective* collective = nullptr);

// Helpers for choosing output files.
// "5GB" (10^9), "500MiB" (2^20), "1e9", "123" (bytes). kInvalidArgument otherwise.
absl::StatusOr<uint64_t> ParseByteSize(absl::string_view text);
// {"fqn": 1, ...} (PyTorch's fqn_to_index_mapping as JSON).
absl::StatusOr<std::map<std::string, int>> ParseMappingJson(absl::string_view json,
                                                            absl::string_view file);
// fqn -> file index of a reference HF model directory: its index json, else its files' headers,
// with file indices from names (falling back to sorted-name order, noted in `warnings`).
absl::StatusOr<std::map<std::string, int>> MappingFromReference(FileSystem& fs,
                                                                const std::string& dir,
                                                                std::vector<std::string>* warnings);
// fqn -> dtype of a reference HF model directory (from headers).
absl::StatusOr<std::map<std::string, DType>> DTypesFromReference(FileSystem& fs,
                                                                 const std::string& dir);

}  // namespace safeshard

#endif  // SAFESHARD_CORE_CONSOLIDATE_CONSOLIDATE_H_
