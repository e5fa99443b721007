#include "core/layout/layout_json.h"

#include <array>
#include <map>

#include "core/format/sharding.h"

namespace safeshard {

using ordered_json = nlohmann::ordered_json;

ordered_json ProblemJson(const Problem& p) {
  ordered_json j;
  j["kind"] = std::string(ProblemKindName(p.kind));
  j["file"] = p.file;
  j["tensor"] = p.tensor;
  j["message"] = p.message;
  j["blocking"] = IsBlocking(p.kind);
  return j;
}

ordered_json CompletenessJson(const Completeness& c) {
  ordered_json j;
  j["proven"] = c.proven;
  j["by"] = c.by;
  j["unproven"] = c.proven ? ordered_json() : ordered_json(c.unproven);
  return j;
}

ordered_json LayoutJson(const CheckpointLayout& ck, const NameFilter& keep) {
  ordered_json root;
  root["schema"] = "safeshard.inspect/1";
  root["path"] = ck.root();
  root["kind"] = std::string(CheckpointKindName(ck.kind()));
  root["ranks"] = ck.rank_count();
  root["index_file"] = ck.index_file().empty() ? ordered_json() : ordered_json(ck.index_file());
  ordered_json files = ordered_json::array();
  for (const FileInfo& f : ck.files()) {
    ordered_json j;
    j["name"] = f.name;
    j["size"] = f.size;
    j["header_size"] = f.header ? ordered_json(f.header->header_size) : ordered_json();
    j["tensors"] = f.header ? f.header->tensors.size() : 0;
    j["shard"] = f.shard ? ordered_json(*f.shard) : ordered_json();
    j["dcp"] = f.dcp;
    // __metadata__ without DCP_SHARDING_INFO: that raw JSON string (megabytes for 100k tensors)
    // is already in the tensors' chunks, read and checked; only its entry count is kept.
    if (f.header) {
      ordered_json meta = ordered_json::object();
      for (const auto& [k, v] : f.header->metadata) {
        if (k != kShardingInfoKey) meta[k] = v;
      }
      j["metadata"] = std::move(meta);
    } else {
      j["metadata"] = ordered_json();
    }
    j["error"] = f.error ? ordered_json(*f.error) : ordered_json();
    files.push_back(std::move(j));
  }
  root["files"] = std::move(files);
  ordered_json tensors = ordered_json::array();
  std::map<std::string, std::array<uint64_t, 3>> totals;  // dtype -> tensors, params, bytes
  for (const TensorLayout& t : ck.tensors()) {
    if (keep && !keep(t.name)) continue;
    ordered_json j;
    j["name"] = t.name;
    j["dtype"] = std::string(DTypeName(t.dtype));
    j["shape"] = t.shape;
    j["parameters"] = t.numel();
    j["bytes"] = t.bytes();
    ordered_json chunks = ordered_json::array();
    for (const Chunk& c : t.chunks) {
      ordered_json cj;
      cj["file"] = ck.files()[c.file].name;
      if (!c.key.empty()) cj["key"] = c.key;  // physical key (PyTorch's __dcp_shard_k)
      cj["offsets"] = c.offsets;
      cj["sizes"] = c.sizes;
      cj["byte_range"] = {c.begin, c.end};
      chunks.push_back(std::move(cj));
    }
    j["chunks"] = std::move(chunks);
    j["problem"] = t.has_problem;
    tensors.push_back(std::move(j));
    auto& tot = totals[std::string(DTypeName(t.dtype))];
    tot[0] += 1;
    tot[1] += t.numel();
    tot[2] += t.bytes();
  }
  root["tensors"] = std::move(tensors);
  ordered_json tj = ordered_json::object();
  for (const auto& [d, v] : totals) {
    tj[d] = {{"tensors", v[0]}, {"parameters", v[1]}, {"bytes", v[2]}};
  }
  root["totals"] = std::move(tj);
  ordered_json quantized = ordered_json::array();
  for (const quant::QuantPair& q : ck.quantized()) {
    if (keep && !keep(q.output) && !keep(q.weight)) continue;
    quantized.push_back({{"weight", q.output},
                         {"shape", q.output_shape},
                         {"scheme", q.scheme == quant::Scheme::kMxfp4 ? "mxfp4" : "fp8_block"},
                         {"block", {q.block.rows, q.block.cols}},
                         {"codes", q.weight},
                         {"scales", q.scale},
                         {"description", q.Describe()}});
  }
  root["quantized"] = std::move(quantized);
  ordered_json problems = ordered_json::array();
  for (const Problem& p : ck.problems()) problems.push_back(ProblemJson(p));
  root["problems"] = std::move(problems);
  root["completeness"] = CompletenessJson(ck.completeness());
  return root;
}

}  // namespace safeshard
