// index_json.h: `model.safetensors.index.json`, the map from tensor name to file of an HF
// checkpoint, and the "done" signal of a consolidated directory.
//
//   {"metadata": {"total_size": 123}, "weight_map": {"w": "model-00001-of-00002.safetensors"}}
//
//   ASSIGN_OR_RETURN(IndexJson idx, ParseIndexJson(text, "model.safetensors.index.json"));
//   std::string text = SerializeIndexJson(idx);
#ifndef SAFESHARD_CORE_FORMAT_INDEX_JSON_H_
#define SAFESHARD_CORE_FORMAT_INDEX_JSON_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace safeshard {

struct IndexJson {
  std::optional<uint64_t> total_size;  // metadata.total_size: sum of tensor bytes
  // Other members of "metadata" kept verbatim as JSON text (e.g. total_parameters).
  std::map<std::string, std::string> extra_metadata;
  std::map<std::string, std::string> weight_map;  // fqn -> plain file name
};

// Parses and validates: an object with a "weight_map" object of fqn -> plain file name
// (absolute paths, "..", and separators are rejected), an optional "metadata" object whose
// total_size (if present) is a non-negative 64-bit integer. Duplicate keys are rejected.
// Errors are kDataLoss and name `file`.
absl::StatusOr<IndexJson> ParseIndexJson(absl::string_view text, absl::string_view file);

// Two-space indented JSON with sorted keys and a trailing newline (as transformers writes it).
std::string SerializeIndexJson(const IndexJson& index);

}  // namespace safeshard

#endif  // SAFESHARD_CORE_FORMAT_INDEX_JSON_H_
