// layout_json.h: a scanned checkpoint as JSON — the documents `safeshard inspect --json` and
// `verify --json` print and the Python module returns (schema safeshard.inspect/1).
//
//   WriteLayoutJson(std::cout, layout, nullptr, 2);  // every tensor, streamed
#ifndef SAFESHARD_CORE_LAYOUT_LAYOUT_JSON_H_
#define SAFESHARD_CORE_LAYOUT_LAYOUT_JSON_H_

#include <functional>
#include <ostream>
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
// chunks, totals by dtype, quantized weights, problems, completeness. Written as it is produced
// (no DOM: a 100k-tensor document costs no memory beyond the output stream's buffer), formatted
// exactly as nlohmann's dump(indent) would format it (indent < 0: compact).
void WriteLayoutJson(std::ostream& out, const CheckpointLayout& ck, const NameFilter& keep,
                     int indent);
std::string LayoutJsonText(const CheckpointLayout& ck, const NameFilter& keep, int indent);

}  // namespace safeshard

#endif  // SAFESHARD_CORE_LAYOUT_LAYOUT_JSON_H_
