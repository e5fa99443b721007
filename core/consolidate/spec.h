// spec.h: what a consolidation should do, as data. One typed description built by the CLI's
// flags (`safeshard consolidate`), safeshardd's configuration and the inspector's Consolidate
// dialog; one function checks it and one turns it into ConsolidateOptions, so the three never
// diverge and nothing falls back silently. It round-trips through JSON, strictly: an unknown
// key, a wrong type or a contradiction is an error naming the key.
//
//   ConsolidateSpec spec;
//   spec.max_shard_size = "5GB";
//   spec.cast_dtype = "bfloat16";
//   ASSIGN_OR_RETURN(std::unique_ptr<ResolvedConsolidation> r, ResolveConsolidateSpec(fs, spec));
//   Consolidate(fs, in, out, r->options);
#ifndef SAFESHARD_CORE_CONSOLIDATE_SPEC_H_
#define SAFESHARD_CORE_CONSOLIDATE_SPEC_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/consolidate/consolidate.h"
#include "core/io/filesystem.h"
#include "core/remap/keymap.h"

namespace safeshard {

struct ConsolidateSpec {
  // Output files: at most one of mapping_file, reference and max_shard_size; none: one file.
  std::string mapping_file;        // JSON {"fqn": 1-based file index}
  std::string reference;           // an HF model directory whose index json (or files) choose files
  std::string max_shard_size;      // with a unit: "5GB", "500MiB" (save_pretrained's rules)
  std::string unmapped = "error";  // tensors the mapping does not name: error | first | own-file
  bool restore_dtypes = false;     // back to the reference model's dtypes (needs reference)
  std::string cast_dtype;          // floating point to bf16 | f16 | f32 | f64 (also "bfloat16",
                                   // "torch.bfloat16", "half", ...); never FP8
  std::vector<KeyMap::Rule> key_map;            // renames output keys
  std::map<std::string, std::string> metadata;  // added to __metadata__
  bool diffusers = false;   // diffusion_pytorch_model-*.safetensors and its index
  int threads = 0;          // 0: every core
  bool verify = false;      // re-read the outputs and compare them with the inputs
  bool overwrite = false;   // replace (remove first) a result already in OUT
  int expect_ranks = 0;     // IN must hold exactly ranks 0..N-1 (0: not checked)
  bool strict = false;      // refuse IN when its completeness cannot be proven
  bool checksums = true;    // publish safeshard.complete.json with the outputs' checksums
  bool model_files = true;  // copy config.json, tokenizer files, ... found beside the input
  std::string dequantize;   // bf16 | f16 | f32: block-quantized weights (FP8, MXFP4) decoded
  std::string block_size;   // FP8 blocks "128" or "128x64" (default: config.json's, else 128)

  bool operator==(const ConsolidateSpec&) const = default;
};

// kInvalidArgument naming the field for contradictions and unparseable values (two file
// choices, restore_dtypes without a reference, a size without a unit, an unknown dtype or
// unmapped policy, a bad key-map rule). Reads no file.
absl::Status ValidateConsolidateSpec(const ConsolidateSpec& spec);

// "bf16", "bfloat16", "torch.bfloat16", "BF16", "f16", "half", "float16", "f32", "float",
// "float32", "f64", "double", "float64" -> the dtype; kInvalidArgument otherwise.
absl::StatusOr<DType> ParseCastDType(absl::string_view name);

// JSON object with the fields above (snake_case keys; defaults may be left out).
std::string SerializeConsolidateSpec(const ConsolidateSpec& spec);
absl::StatusOr<ConsolidateSpec> ParseConsolidateSpec(absl::string_view json);

// The options a spec asks for, owning what they point to (the key map).
struct ResolvedConsolidation {
  ConsolidateOptions options;
  std::unique_ptr<KeyMap> key_map;    // options.key_map points here
  std::vector<std::string> warnings;  // from reading the reference model
};
// Validates, then reads what the spec names (mapping file, reference model). The caller adds
// progress, cancel and output_fs to the options.
absl::StatusOr<std::unique_ptr<ResolvedConsolidation>> ResolveConsolidateSpec(
    FileSystem& fs, const ConsolidateSpec& spec);

}  // namespace safeshard

#endif  // SAFESHARD_CORE_CONSOLIDATE_SPEC_H_
