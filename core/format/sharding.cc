#include "core/format/sharding.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/format/internal/json_util.h"
#include "nlohmann/json.hpp"

namespace safeshard {

using internal::Quote;

absl::StatusOr<std::optional<ShardingInfo>> ReadShardingInfo(const Header& h,
                                                             absl::string_view file) {
  auto it = h.metadata.find(std::string(kShardingInfoKey));
  if (it == h.metadata.end()) return std::optional<ShardingInfo>();
  auto bad = [&](absl::string_view what) {
    return absl::DataLossError(
        absl::StrCat(file, ": __metadata__ DCP_SHARDING_INFO (byte offset 8): ", what));
  };
  nlohmann::json root;
  std::vector<std::pair<std::string, nlohmann::json>> members;
  internal::StrictParseResult pr =
      internal::ParseJsonStrict(it->second.begin(), it->second.end(), &root, &members);
  if (!pr.ok) return bad(absl::StrCat("not valid JSON: ", pr.error));
  if (pr.duplicate) return bad(absl::StrCat("key ", Quote(*pr.duplicate), " repeated"));
  if (!root.is_object()) return bad("not a JSON object");
  ShardingInfo info;
  for (const auto& [fqn, value] : members) {
    const TensorEntry* t = h.Find(fqn);
    if (t == nullptr) {
      return bad(absl::StrCat("names tensor ", Quote(fqn), " which the file does not hold"));
    }
    auto so = value.is_object() ? value.find("saved_offsets") : value.end();
    if (!value.is_object() || so == value.end() || !so->is_array()) {
      return bad(absl::StrCat("tensor ", Quote(fqn), ": expected {\"saved_offsets\": [...]}"));
    }
    std::vector<uint64_t> offsets;
    for (const auto& o : *so) {
      uint64_t v;
      if (!internal::ReadU64(o, &v)) {
        return bad(absl::StrCat("tensor ", Quote(fqn), ": offset ", o.dump(),
                                " is not a non-negative integer"));
      }
      offsets.push_back(v);
    }
    if (offsets.size() != t->shape.size()) {
      return bad(absl::StrCat("tensor ", Quote(fqn), ": ", offsets.size(),
                              " saved_offsets for a tensor of rank ", t->shape.size()));
    }
    info.saved_offsets[fqn] = std::move(offsets);
  }
  for (const TensorEntry& t : h.tensors) {
    info.saved_offsets.try_emplace(t.name, std::vector<uint64_t>(t.shape.size(), 0));
  }
  return std::optional<ShardingInfo>(std::move(info));
}

std::string SerializeShardingInfo(const ShardingInfo& info) {
  std::string out = "{";
  bool first = true;
  for (const auto& [fqn, offsets] : info.saved_offsets) {
    if (!first) out += ", ";
    first = false;
    absl::StrAppend(&out, Quote(fqn), ": {\"saved_offsets\": [", absl::StrJoin(offsets, ", "),
                    "]}");
  }
  out += "}";
  return out;
}

std::map<std::string, std::string> ShardedFileMetadata(const ShardingInfo& info) {
  return {{std::string(kShardingInfoKey), SerializeShardingInfo(info)},
          {std::string(kDcpVersionKey), std::string(kDcpVersion)},
          {std::string(kFormatKey), std::string(kFormatPt)}};
}

}  // namespace safeshard
