// filenames.h: HF checkpoint file names and their file indices.
//
//   ModelFileName(1, 2)    == "model-00001-of-00002.safetensors"
//   ShardFileName(0, 1, 2) == "shard-00001-model-00001-of-00002.safetensors"  // rank 0
//   ASSIGN_OR_RETURN(FileIndex fi, ParseFileIndex("model-00002-of-00008.safetensors"));
//   // fi.index == 2, fi.count == 8, fi.shard == nullopt
//   FileIndexAssignment a = AssignFileIndices({"b.safetensors", "a.safetensors"});
//   // not parseable -> sorted-name order with a warning: a -> 1, b -> 2
#ifndef SAFESHARD_CORE_FORMAT_FILENAMES_H_
#define SAFESHARD_CORE_FORMAT_FILENAMES_H_

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace safeshard {

inline constexpr absl::string_view kSafetensorsSuffix = ".safetensors";
inline constexpr absl::string_view kIndexFileName = "model.safetensors.index.json";
inline constexpr absl::string_view kDiffusersIndexFileName =
    "diffusion_pytorch_model.safetensors.index.json";
inline constexpr absl::string_view kSingleFileName = "model.safetensors";

// "model-{index:05}-of-{count:05}.safetensors"; index is 1-based.
std::string ModelFileName(int index, int count);
// "shard-{rank+1:05}-model-{index:05}-of-{count:05}.safetensors"; rank is 0-based.
std::string ShardFileName(int rank, int index, int count);

struct FileIndex {
  int index = 1;             // 1-based model file index
  int count = 1;             // N in "-of-N"
  std::optional<int> shard;  // 1-based shard (rank + 1) for "shard-RRRRR-..." names
};

// Parses the file index of a safetensors file name (a bare name, no directory):
// "model.safetensors" -> 1 of 1; "*-IIIII-of-NNNNN.safetensors" (also
// "model.safetensors-00002-of-00008.safetensors" and "shard-RRRRR-model-IIIII-of-NNNNN...").
// kInvalidArgument when the name carries no index or the index lies outside 1..N.
absl::StatusOr<FileIndex> ParseFileIndex(absl::string_view name);

struct FileIndexAssignment {
  std::map<std::string, int> index_of;  // file name -> 1-based index
  int count = 0;
  // Set when the parsed indices were unusable and sorted-name order was used instead.
  std::optional<std::string> warning;
};

// Gives each of `names` (distinct safetensors file names, no directories) a file index: the
// parsed ones if every name parses and they are exactly 1..N, else sorted-file-name order.
FileIndexAssignment AssignFileIndices(std::vector<std::string> names);

// True for a plain file name: not empty, no '/', '\\', NUL, not "." or "..".
bool IsPlainFileName(absl::string_view name);

}  // namespace safeshard

#endif  // SAFESHARD_CORE_FORMAT_FILENAMES_H_
