// sharding.h: DCP sharding metadata stored in per-rank safetensors files.
//
// PyTorch's HuggingFaceStorageWriter (save_sharded=True) writes, in each rank's file,
// `__metadata__` = {"DCP_SHARDING_INFO": "<json string>", "DCP_VERSION": "1.0", "format": "pt"}
// where the JSON string is `{"key": {"saved_offsets": [o0, o1, ...]}, ...}`: the offsets of this
// rank's chunk within the global tensor. Older writers key it by the tensor's name (fqn).
// PyTorch's newest writer adds `"logical_fqn": "fqn"` to every entry and, when one rank holds
// several chunks of one tensor (strided FSDP2+TP sharding), stores them under physical keys
// `"{fqn}.__dcp_shard_{k}"` (k = 0, 1, ...) in one file; PR #189945 adds `"global_shape": [...]`
// per entry so that a lost trailing chunk is visible. All three forms are read; the writer
// emits logical_fqn and global_shape.
//
//   ASSIGN_OR_RETURN(std::optional<ShardingInfo> info, ReadShardingInfo(header, "shard-..."));
//   if (info) { const std::vector<uint64_t>& off = info->saved_offsets.at("w"); }
//   header.metadata = ShardedFileMetadata(info);  // when writing
#ifndef SAFESHARD_CORE_FORMAT_SHARDING_H_
#define SAFESHARD_CORE_FORMAT_SHARDING_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/format/header.h"

namespace safeshard {

inline constexpr absl::string_view kShardingInfoKey = "DCP_SHARDING_INFO";
inline constexpr absl::string_view kDcpVersionKey = "DCP_VERSION";
inline constexpr absl::string_view kDcpVersion = "1.0";
inline constexpr absl::string_view kFormatKey = "format";
inline constexpr absl::string_view kFormatPt = "pt";

inline constexpr absl::string_view kLogicalFqnKey = "logical_fqn";
inline constexpr absl::string_view kSavedOffsetsKey = "saved_offsets";
inline constexpr absl::string_view kGlobalShapeKey = "global_shape";
inline constexpr absl::string_view kPhysicalShardInfix = ".__dcp_shard_";

struct ShardingInfo {
  // Physical key (the tensor's name in the file) -> offsets of that chunk within the global
  // tensor (one per dimension).
  std::map<std::string, std::vector<uint64_t>> saved_offsets;
  // Physical key -> logical tensor name, when the entry carries logical_fqn.
  std::map<std::string, std::string> logical_fqn;
  // Physical key -> global shape of the logical tensor, when the entry carries global_shape.
  std::map<std::string, std::vector<uint64_t>> global_shape;

  // The logical tensor a physical key belongs to (the key itself for older writers).
  const std::string& LogicalName(const std::string& key) const;
};

// "{fqn}.__dcp_shard_{k}": the physical key of the k-th chunk of `fqn` held by one rank.
std::string PhysicalShardKey(absl::string_view fqn, int k);

// Reads DCP_SHARDING_INFO from `h`. nullopt if the file has none (a plain safetensors file).
// Errors (kDataLoss) when the string is not valid JSON of the documented shape, names a tensor
// the file does not hold, or has a different number of offsets than the tensor has dimensions.
// A tensor of the file that the info does not mention is at offset 0 in every dimension.
absl::StatusOr<std::optional<ShardingInfo>> ReadShardingInfo(const Header& h,
                                                             absl::string_view file);

// The same information arranged by the header's tensor order, for scans: no maps, no name
// lookups. [i] describes h.tensors[i].
struct ShardingByTensor {
  std::vector<std::vector<uint64_t>> saved_offsets;  // zeros for a tensor the info omits
  std::vector<std::string> logical_fqn;              // empty: the tensor's own name
  std::vector<std::optional<std::vector<uint64_t>>> global_shape;
};

// ReadShardingInfo's result (and its errors, the same) as a ShardingByTensor.
absl::StatusOr<std::optional<ShardingByTensor>> ReadShardingByTensor(const Header& h,
                                                                     absl::string_view file);

namespace internal {
// ReadShardingInfo's strict DOM path alone (every error), for tests and the fuzz target:
// ReadShardingInfo reads the usual shape directly and falls back to this for anything else.
absl::StatusOr<std::optional<ShardingInfo>> ReadShardingInfoWithDom(const Header& h,
                                                                    absl::string_view file);
// The fast path alone: true when it read `text` (the DCP_SHARDING_INFO string) into `*info`
// (the tensors it does not mention not added); false when it leaves the text to the DOM path.
bool ReadShardingInfoFast(absl::string_view text, const Header& h, ShardingInfo* info);
}  // namespace internal

// The DCP_SHARDING_INFO string as Python's json.dumps writes it:
// {"a": {"saved_offsets": [0, 4]}, "b": {"saved_offsets": [0]}}  (in `info` key order), and with
// logical names: {"w.__dcp_shard_0": {"logical_fqn": "w", "saved_offsets": [0, 0],
// "global_shape": [8, 4]}, ...}.
std::string SerializeShardingInfo(const ShardingInfo& info);

// {"DCP_SHARDING_INFO": ..., "DCP_VERSION": "1.0", "format": "pt"}.
std::map<std::string, std::string> ShardedFileMetadata(const ShardingInfo& info);

}  // namespace safeshard

#endif  // SAFESHARD_CORE_FORMAT_SHARDING_H_
