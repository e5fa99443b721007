// remap.h: rename the tensors of a checkpoint without re-encoding their bytes.
//
// Headers are rewritten (tensor names and DCP_SHARDING_INFO keys), each file's tensor bytes are
// copied as one range with copy_file_range (a reflink where the file system supports it), the
// index json is rewritten last. In place, every new file is written completely under a
// temporary name first, a journal of the renames (and the old index) is written and the index
// removed (so a crash never leaves it beside half-renamed files), the files replace the
// originals, and the new index is published last; a rerun after a crash applies exactly the
// journaled renames. Other files of the directory (config.json, tokenizer, ...) are
// copied as they are. Two keys mapping to one name is an error naming both.
//
//   ASSIGN_OR_RETURN(KeyMap km, KeyMap::Create({{"^model\\.", ""}}));
//   ASSIGN_OR_RETURN(RemapPlan plan, PlanRemap(layout, km));       // old -> new, for --dry-run
//   ASSIGN_OR_RETURN(RemapResult r, Remap(LocalFileSystem(), "/in", "/out", km, {}));
#ifndef SAFESHARD_CORE_REMAP_REMAP_H_
#define SAFESHARD_CORE_REMAP_REMAP_H_

#include <atomic>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/format/index_json.h"
#include "core/io/filesystem.h"
#include "core/layout/layout.h"
#include "core/remap/keymap.h"

namespace safeshard {

struct RemapPlan {
  std::map<std::string, std::string> renames;  // every tensor: old -> new (maybe unchanged)
  int changed = 0;
};

// kInvalidArgument on collisions; kFailedPrecondition if a file of the checkpoint is invalid.
// `index` replaces the layout's index json (an in-place remap resuming from the one it moved
// aside). An index entry whose tensor already carries its new name (a resumed in-place remap)
// is not a collision.
absl::StatusOr<RemapPlan> PlanRemap(const CheckpointLayout& layout, const KeyMap& key_map,
                                    const IndexJson* index = nullptr);

struct RemapOptions {
  bool in_place = false;   // rewrite the input's files (temporary files + renames)
  bool overwrite = false;  // replace an existing checkpoint in the output directory
  const std::atomic<bool>* cancel = nullptr;
  // Where the output goes when not on the input's file system (e.g. remote input, local output).
  FileSystem* output_fs = nullptr;
};

struct RemapResult {
  RemapPlan plan;
  std::vector<std::string> files;  // written file names
  uint64_t bytes_copied = 0;
};

// Writes the remapped checkpoint to `output_dir` (a new directory), or rewrites `input` when
// options.in_place (then `output_dir` must equal `input`). A single-file input is allowed.
absl::StatusOr<RemapResult> Remap(FileSystem& fs, const std::string& input,
                                  const std::string& output_dir, const KeyMap& key_map,
                                  const RemapOptions& options);

}  // namespace safeshard

#endif  // SAFESHARD_CORE_REMAP_REMAP_H_
