// sharding.h: DCP sharding metadata stored in per-rank safetensors files.
//
// PyTorch's HuggingFaceStorageWriter (save_sharded=True) writes, in each rank's file,
// `__metadata__` = {"DCP_SHARDING_INFO": "<json string>", "DCP_VERSION": "1.0", "format": "pt"}
// where the JSON string is `{"fqn": {"saved_offsets": [o0, o1, ...]}, ...}`: the offsets of this
// rank's chunk within the global tensor.
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

struct ShardingInfo {
  // fqn -> offsets of this file's chunk within the global tensor (one per dimension).
  std::map<std::string, std::vector<uint64_t>> saved_offsets;
};

// Reads DCP_SHARDING_INFO from `h`. nullopt if the file has none (a plain safetensors file).
// Errors (kDataLoss) when the string is not valid JSON of the documented shape, names a tensor
// the file does not hold, or has a different number of offsets than the tensor has dimensions.
// A tensor of the file that the info does not mention is at offset 0 in every dimension.
absl::StatusOr<std::optional<ShardingInfo>> ReadShardingInfo(const Header& h,
                                                             absl::string_view file);

// The DCP_SHARDING_INFO string as Python's json.dumps writes it:
// {"a": {"saved_offsets": [0, 4]}, "b": {"saved_offsets": [0]}}  (in `info` key order).
std::string SerializeShardingInfo(const ShardingInfo& info);

// {"DCP_SHARDING_INFO": ..., "DCP_VERSION": "1.0", "format": "pt"}.
std::map<std::string, std::string> ShardedFileMetadata(const ShardingInfo& info);

}  // namespace safeshard

#endif  // SAFESHARD_CORE_FORMAT_SHARDING_H_
