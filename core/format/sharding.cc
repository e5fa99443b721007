#include "core/format/sharding.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/format/internal/json_cursor.h"
#include "core/format/internal/json_util.h"
#include "core/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace safeshard {

using internal::Quote;

namespace {

// The fast path of ReadShardingInfo (see internal::JsonCursor): the usual shape only — every
// entry an object of saved_offsets, logical_fqn and global_shape with valid values, every key a
// tensor of `h` — read straight from the text. `sink(tensor, offsets, logical, global)` takes each
// entry and returns false for a key it has seen. Returns false for anything unusual (the DOM path
// then runs and gives the error, if there is one).
template <typename Sink>
bool ScanShardingFast(absl::string_view text, const Header& h, Sink&& sink) {
  internal::JsonCursor c(text);
  std::string scratch;
  if (!c.Eat('{')) return false;
  if (c.Eat('}')) return c.AtEnd();
  do {
    absl::string_view key;
    bool escaped;
    if (!c.String(&key, &scratch, &escaped) || !c.Eat(':')) return false;
    const TensorEntry* t = h.Find(key);
    if (t == nullptr || !c.Eat('{')) return false;
    int seen = 0;  // bits: 1 saved_offsets, 2 logical_fqn, 4 global_shape
    std::vector<uint64_t> offsets;
    std::optional<std::string> logical;
    std::optional<std::vector<uint64_t>> global;
    do {
      absl::string_view member;
      if (!c.String(&member, &scratch, &escaped) || !c.Eat(':')) return false;
      if (member == kSavedOffsetsKey && !(seen & 1)) {
        seen |= 1;
        if (!c.U64Array(&offsets) || offsets.size() != t->shape.size()) return false;
      } else if (member == kLogicalFqnKey && !(seen & 2)) {
        seen |= 2;
        if (c.Null()) continue;
        absl::string_view lf;
        if (!c.String(&lf, &scratch, &escaped) || lf.empty() || lf == kMetadataKey) return false;
        logical.emplace(lf);
      } else if (member == kGlobalShapeKey && !(seen & 4)) {
        seen |= 4;
        if (c.Null()) continue;
        global.emplace();
        if (!c.U64Array(&*global) || global->size() != t->shape.size()) return false;
      } else {
        return false;
      }
    } while (c.Eat(','));
    if (!(seen & 1) || !c.Eat('}')) return false;
    if (!sink(t, std::move(offsets), std::move(logical), std::move(global))) return false;
  } while (c.Eat(','));
  return c.Eat('}') && c.AtEnd();
}

}  // namespace

bool internal::ReadShardingInfoFast(absl::string_view text, const Header& h, ShardingInfo* info) {
  return ScanShardingFast(
      text, h,
      [&](const TensorEntry* t, std::vector<uint64_t>&& offsets,
          std::optional<std::string>&& logical, std::optional<std::vector<uint64_t>>&& global) {
        // Writers serialise a sorted map: the hint makes the inserts linear.
        const size_t n = info->saved_offsets.size();
        info->saved_offsets.emplace_hint(info->saved_offsets.end(), t->name, std::move(offsets));
        if (info->saved_offsets.size() == n) return false;  // a repeated key
        if (logical) {
          info->logical_fqn.emplace_hint(info->logical_fqn.end(), t->name, std::move(*logical));
        }
        if (global) {
          info->global_shape.emplace_hint(info->global_shape.end(), t->name, std::move(*global));
        }
        return true;
      });
}

absl::StatusOr<std::optional<ShardingInfo>> ReadShardingInfo(const Header& h,
                                                             absl::string_view file) {
  auto it = h.metadata.find(std::string(kShardingInfoKey));
  if (it == h.metadata.end()) return std::optional<ShardingInfo>();
  ShardingInfo info;
  if (!internal::ReadShardingInfoFast(it->second, h, &info)) {
    return internal::ReadShardingInfoWithDom(h, file);
  }
  for (const TensorEntry& t : h.tensors) {
    info.saved_offsets.try_emplace(t.name, std::vector<uint64_t>(t.shape.size(), 0));
  }
  return std::optional<ShardingInfo>(std::move(info));
}

absl::StatusOr<std::optional<ShardingByTensor>> ReadShardingByTensor(const Header& h,
                                                                     absl::string_view file) {
  auto it = h.metadata.find(std::string(kShardingInfoKey));
  if (it == h.metadata.end()) return std::optional<ShardingByTensor>();
  const size_t n = h.tensors.size();
  ShardingByTensor by;
  by.saved_offsets.resize(n);
  by.logical_fqn.resize(n);
  by.global_shape.resize(n);
  std::vector<bool> seen(n, false);
  const bool fast = ScanShardingFast(
      it->second, h,
      [&](const TensorEntry* t, std::vector<uint64_t>&& offsets,
          std::optional<std::string>&& logical, std::optional<std::vector<uint64_t>>&& global) {
        const size_t i = static_cast<size_t>(t - h.tensors.data());
        if (seen[i]) return false;  // a repeated key
        seen[i] = true;
        by.saved_offsets[i] = std::move(offsets);
        if (logical) by.logical_fqn[i] = std::move(*logical);
        by.global_shape[i] = std::move(global);
        return true;
      });
  if (fast) {
    for (size_t i = 0; i < n; ++i) {
      if (!seen[i]) by.saved_offsets[i].assign(h.tensors[i].shape.size(), 0);
    }
    return std::optional<ShardingByTensor>(std::move(by));
  }
  ASSIGN_OR_RETURN(std::optional<ShardingInfo> info, internal::ReadShardingInfoWithDom(h, file));
  for (size_t i = 0; i < n; ++i) {
    const std::string& name = h.tensors[i].name;
    by.saved_offsets[i] = info->saved_offsets.at(name);
    if (auto lf = info->logical_fqn.find(name); lf != info->logical_fqn.end()) {
      by.logical_fqn[i] = lf->second;
    } else {
      by.logical_fqn[i].clear();
    }
    if (auto gs = info->global_shape.find(name); gs != info->global_shape.end()) {
      by.global_shape[i] = gs->second;
    } else {
      by.global_shape[i].reset();
    }
  }
  return std::optional<ShardingByTensor>(std::move(by));
}

absl::StatusOr<std::optional<ShardingInfo>> internal::ReadShardingInfoWithDom(
    const Header& h, absl::string_view file) {
  auto it = h.metadata.find(std::string(kShardingInfoKey));
  if (it == h.metadata.end()) return std::optional<ShardingInfo>();
  auto bad = [&](absl::string_view what) {
    return absl::DataLossError(
        absl::StrCat(file, ": __metadata__ DCP_SHARDING_INFO (byte offset 8): ", what));
  };
  ShardingInfo info;
  nlohmann::json root;
  std::vector<std::pair<std::string, nlohmann::json>> members;
  internal::StrictParseResult pr =
      internal::ParseJsonStrict(it->second.begin(), it->second.end(), &root, &members);
  if (!pr.ok) return bad(absl::StrCat("not valid JSON: ", pr.error));
  if (pr.duplicate) return bad(absl::StrCat("key ", Quote(*pr.duplicate), " repeated"));
  if (!root.is_object()) return bad("not a JSON object");
  for (const auto& member : members) {
    const std::string& fqn = member.first;  // (a structured binding cannot be captured by clang 14)
    const nlohmann::json& value = member.second;
    const TensorEntry* t = h.Find(fqn);
    if (t == nullptr) {
      return bad(absl::StrCat("names tensor ", Quote(fqn), " which the file does not hold"));
    }
    auto so = value.is_object() ? value.find(kSavedOffsetsKey) : value.end();
    if (!value.is_object() || so == value.end() || !so->is_array()) {
      return bad(absl::StrCat("tensor ", Quote(fqn), ": expected {\"saved_offsets\": [...]}"));
    }
    auto read_dims = [&](const nlohmann::json& arr, absl::string_view what,
                         std::vector<uint64_t>* out) -> absl::Status {
      for (const auto& o : arr) {
        uint64_t v;
        if (!internal::ReadU64(o, &v)) {
          return bad(absl::StrCat("tensor ", Quote(fqn), ": ", what, " entry ", o.dump(),
                                  " is not a non-negative integer"));
        }
        out->push_back(v);
      }
      if (out->size() != t->shape.size()) {
        return bad(absl::StrCat("tensor ", Quote(fqn), ": ", out->size(), " ", what,
                                " entries for a tensor of rank ", t->shape.size()));
      }
      return absl::OkStatus();
    };
    std::vector<uint64_t> offsets;
    RETURN_IF_ERROR(read_dims(*so, kSavedOffsetsKey, &offsets));
    info.saved_offsets[fqn] = std::move(offsets);
    if (auto lf = value.find(kLogicalFqnKey); lf != value.end() && !lf->is_null()) {
      if (!lf->is_string() || lf->get_ref<const std::string&>().empty()) {
        return bad(absl::StrCat("tensor ", Quote(fqn), ": logical_fqn ", lf->dump(),
                                " is not a non-empty string"));
      }
      if (lf->get_ref<const std::string&>() == kMetadataKey) {
        return bad(absl::StrCat("tensor ", Quote(fqn), ": logical_fqn cannot be __metadata__"));
      }
      info.logical_fqn[fqn] = lf->get<std::string>();
    }
    if (auto gs = value.find(kGlobalShapeKey); gs != value.end() && !gs->is_null()) {
      if (!gs->is_array()) {
        return bad(
            absl::StrCat("tensor ", Quote(fqn), ": global_shape ", gs->dump(), " is not an array"));
      }
      std::vector<uint64_t> shape;
      RETURN_IF_ERROR(read_dims(*gs, kGlobalShapeKey, &shape));
      info.global_shape[fqn] = std::move(shape);
    }
  }
  for (const TensorEntry& t : h.tensors) {
    info.saved_offsets.try_emplace(t.name, std::vector<uint64_t>(t.shape.size(), 0));
  }
  return std::optional<ShardingInfo>(std::move(info));
}

const std::string& ShardingInfo::LogicalName(const std::string& key) const {
  auto it = logical_fqn.find(key);
  return it == logical_fqn.end() ? key : it->second;
}

std::string PhysicalShardKey(absl::string_view fqn, int k) {
  return absl::StrCat(fqn, kPhysicalShardInfix, k);
}

std::string SerializeShardingInfo(const ShardingInfo& info) {
  std::string out = "{";
  bool first = true;
  for (const auto& [key, offsets] : info.saved_offsets) {
    if (!first) out += ", ";
    first = false;
    absl::StrAppend(&out, Quote(key), ": {");
    if (auto lf = info.logical_fqn.find(key); lf != info.logical_fqn.end()) {
      absl::StrAppend(&out, "\"logical_fqn\": ", Quote(lf->second), ", ");
    }
    absl::StrAppend(&out, "\"saved_offsets\": [", absl::StrJoin(offsets, ", "), "]");
    if (auto gs = info.global_shape.find(key); gs != info.global_shape.end()) {
      absl::StrAppend(&out, ", \"global_shape\": [", absl::StrJoin(gs->second, ", "), "]");
    }
    out += "}";
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
