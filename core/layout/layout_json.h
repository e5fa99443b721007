// layout_json.h: a scanned checkpoint as JSON — the documents `safeshard inspect --json` and
// `verify --json` print and the Python module returns (schema safeshard.inspect/1).
//
//   nlohmann::ordered_json j = LayoutJson(layout, nullptr);  // every tensor
//   std::string text = j.dump(2);
#ifndef SAFESHARD_CORE_LAYOUT_LAYOUT_JSON_H_
#define SAFESHARD_CORE_LAYOUT_LAYOUT_JSON_H_

#include <functional>
#include <string>

#include "core/layout/layout.h"
#include "nlohmann/json.hpp"

namespace safeshard {

// Which tensors a document lists (nullptr: all).
using NameFilter = std::function<bool(const std::string&)>;

// {"kind", "file", "tensor", "message", "blocking"}.
nlohmann::ordered_json ProblemJson(const Problem& p);
// {"proven", "by", "unproven"}.
nlohmann::ordered_json CompletenessJson(const Completeness& c);
// The inspect document: files (with __metadata__ less DCP_SHARDING_INFO), tensors and their
// chunks, totals by dtype, quantized weights, problems, completeness.
nlohmann::ordered_json LayoutJson(const CheckpointLayout& ck, const NameFilter& keep);

}  // namespace safeshard

#endif  // SAFESHARD_CORE_LAYOUT_LAYOUT_JSON_H_
