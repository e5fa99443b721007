// Remap protocol: plan from headers (collisions refused before writing); every output file is
// written under a temporary name (new header + one copied byte range), fsynced and renamed; the
// index json goes last. In place, all temporary files are complete before the first rename.
#include "core/remap/remap.h"
#include "core/format/internal/json_util.h"

#include <unistd.h>

#include <cstdlib>
#include <optional>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/format/filenames.h"
#include "core/format/index_json.h"
#include "core/format/manifest.h"
#include "core/format/sharding.h"
#include "core/io/atomic_file.h"
#include "core/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace safeshard {

absl::StatusOr<RemapPlan> PlanRemap(const CheckpointLayout& layout, const KeyMap& key_map,
                                    const IndexJson* index) {
  for (const FileInfo& f : layout.files()) {
    if (!f.header) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot remap: ", JoinPath(layout.root(), f.name),
                       " is invalid: ", f.error.value_or("")));
    }
  }
  if (index == nullptr && layout.index()) index = &*layout.index();
  std::vector<std::string> keys;
  for (const TensorLayout& t : layout.tensors()) keys.push_back(t.name);
  RemapPlan plan;
  if (index != nullptr) {
    for (const auto& [k, v] : index->weight_map) {
      if (layout.FindTensor(k) != nullptr) continue;
      // An index entry whose tensor is stored under its new name already (an in-place remap
      // interrupted between its renames): not a collision, the rename is just done.
      const std::string mapped = key_map.Apply(k);
      if (mapped != k && layout.FindTensor(mapped) != nullptr && key_map.Apply(mapped) == mapped) {
        plan.renames[k] = mapped;
        continue;
      }
      keys.push_back(k);
    }
  }
  using Renames = std::map<std::string, std::string>;
  ASSIGN_OR_RETURN(Renames mapped, key_map.MapAll(keys));
  for (auto& [a, b] : mapped) plan.renames[a] = b;
  for (const auto& [a, b] : plan.renames) {
    if (b.empty() || b == kMetadataKey) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor \"", a, "\" would be renamed to \"", b,
                       "\", which is not a valid tensor name in a safetensors file"));
    }
    plan.changed += a != b;
  }
  return plan;
}

namespace {

// In place: the journal of a remap in progress (its renames and the index it removed), so that a
// run interrupted between its renames is finished by the next one, exactly.
constexpr char kRemapJournal[] = ".safeshard-remap-journal.json";

}  // namespace

absl::StatusOr<RemapResult> Remap(FileSystem& fs, const std::string& input,
                                  const std::string& output_dir, const KeyMap& key_map,
                                  const RemapOptions& o) {
  ASSIGN_OR_RETURN(CheckpointLayout layout, CheckpointLayout::Scan(fs, input));
  if (layout.files().empty()) {
    return absl::InvalidArgumentError(absl::StrCat(input, ": no .safetensors files"));
  }
  if (layout.tensors().empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        input,
        ": holds no tensors (its files' headers list none); nothing to remap, nothing written"));
  }
  FileSystem& out_fs = o.output_fs != nullptr ? *o.output_fs : fs;
  const bool same = &out_fs == &fs &&
                    (SameDirectory(fs, output_dir, layout.root()) ||
                     DirName(JoinPath(output_dir, "x")) == DirName(JoinPath(layout.root(), "x")));
  if (same && !o.in_place) {
    return absl::InvalidArgumentError(
        "the output directory is the input directory; pass --in-place to rewrite it");
  }
  if (!same && o.in_place) {
    return absl::InvalidArgumentError("--in-place rewrites the input; give no separate output");
  }
  if (!same && &out_fs == &fs) RETURN_IF_ERROR(CheckOutputIsNotInput(fs, layout, output_dir));
  RemapResult result;
  // Every write goes through the output directory's descriptor, opened once (in place: the
  // input's own directory): a symlink planted in its place later redirects nothing.
  std::unique_ptr<FileSystem> out_dir;  // outlives the AtomicFiles that point into it
  std::optional<DirectoryLock> lock;
  if (same) {
    ASSIGN_OR_RETURN(out_dir, fs.OpenBeneath(layout.root()));
    ASSIGN_OR_RETURN(DirectoryLock l, DirectoryLock::Acquire(*out_dir, ""));
    lock.emplace(std::move(l));
    RETURN_IF_ERROR(CleanStaleTempFiles(*out_dir, "").status());  // of a killed earlier run
  }
  // The index: the scanned one, or, in place after an interrupted run, the one it moved aside.
  std::optional<IndexJson> index = layout.index();
  std::string index_file = layout.index_file();
  // In place, an interrupted run left its journal: the renames it was applying and the index
  // it had moved aside. Resuming applies exactly those renames (never the rules a second time
  // to names already renamed), whatever rules this run was given.
  const std::string journal_path = JoinPath(layout.root(), kRemapJournal);
  bool resuming = false;
  if (same && out_dir->Stat(std::string(kRemapJournal)).ok()) {
    ASSIGN_OR_RETURN(std::string text, out_dir->ReadAll(std::string(kRemapJournal)));
    nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || !j.contains("renames") || !j["renames"].is_object() ||
        !j.contains("index_file") || !j["index_file"].is_string()) {
      return absl::DataLossError(absl::StrCat(journal_path,
                                              ": the journal of an interrupted remap is "
                                              "unreadable; restore the directory from a copy"));
    }
    RemapPlan plan;
    for (auto it = j["renames"].begin(); it != j["renames"].end(); ++it) {
      if (!it.value().is_string())
        return absl::DataLossError(absl::StrCat(journal_path, ": malformed"));
      plan.renames[it.key()] = it.value().get<std::string>();
    }
    std::set<std::string> renamed;
    for (const auto& [from, to] : plan.renames) renamed.insert(to);
    for (const TensorLayout& t : layout.tensors()) {
      if (!plan.renames.count(t.name)) plan.renames[t.name] = t.name;  // already renamed
    }
    for (const auto& [from, to] : plan.renames) plan.changed += from != to;
    index_file = j["index_file"].get<std::string>();
    if (j.contains("index") && j["index"].is_string()) {
      ASSIGN_OR_RETURN(IndexJson idx, ParseIndexJson(j["index"].get<std::string>(), journal_path));
      index = std::move(idx);
    }
    result.plan = std::move(plan);
    resuming = true;
  } else {
    ASSIGN_OR_RETURN(result.plan, PlanRemap(layout, key_map, index ? &*index : nullptr));
  }
  const std::map<std::string, std::string>& ren = result.plan.renames;
  if (!same) {
    // Planned (collisions refused) before anything exists in the output.
    ASSIGN_OR_RETURN(std::vector<std::string> made, MakeDirsNoting(out_fs, output_dir));
    // Again now that OUT exists: "IN/new/.." only resolves to IN once "new" is there (and
    // "new" is taken away again).
    if (&out_fs == &fs && SameDirectory(fs, output_dir, layout.root())) {
      RemoveMadeDirs(out_fs, made);
      return absl::InvalidArgumentError(
          "the output directory is the input directory; pass --in-place to rewrite it");
    }
    ASSIGN_OR_RETURN(out_dir, out_fs.OpenBeneath(output_dir));
    if (&out_fs == &fs && SameOpenedDirectory(*out_dir, layout.root())) {
      return absl::InvalidArgumentError(
          "the output directory is (now) the input directory; pass --in-place to rewrite it");
    }
    ASSIGN_OR_RETURN(DirectoryLock l, DirectoryLock::Acquire(*out_dir, ""));
    lock.emplace(std::move(l));

    // Only a provable earlier result may be replaced (never per-rank shards, never a file no
    // earlier result claims), and only with --overwrite.
    RETURN_IF_ERROR(ClearEarlierResult(*out_dir, output_dir, o.overwrite).status());
  }

  std::vector<AtomicFile> outputs;
  std::vector<ManifestFile> manifest_files;
  for (const FileInfo& f : layout.files()) {
    if (o.cancel && o.cancel->load()) return absl::CancelledError("remap cancelled");
    Header h = *f.header;
    ASSIGN_OR_RETURN(std::optional<ShardingInfo> info, ReadShardingInfo(*f.header, f.name));
    // The rename applies to logical names; a physical key "{fqn}.__dcp_shard_{k}" follows its
    // tensor's new name, so the file stays consistent with its DCP_SHARDING_INFO.
    auto new_key = [&](const std::string& key) {
      if (!info) return ren.at(key);
      const std::string& logical = info->LogicalName(key);
      const std::string& renamed = ren.at(logical);
      if (key == logical) return renamed;
      if (absl::StartsWith(key, logical + std::string(kPhysicalShardInfix))) {
        return renamed + key.substr(logical.size());
      }
      return key;
    };
    for (TensorEntry& t : h.tensors) t.name = new_key(t.name);
    h.Reindex();
    if (info) {
      ShardingInfo renamed;
      for (const auto& [k, v] : info->saved_offsets) {
        const std::string nk = new_key(k);
        renamed.saved_offsets[nk] = v;
        if (info->logical_fqn.count(k)) renamed.logical_fqn[nk] = ren.at(info->LogicalName(k));
        if (auto gs = info->global_shape.find(k); gs != info->global_shape.end()) {
          renamed.global_shape[nk] = gs->second;
        }
      }
      h.metadata[std::string(kShardingInfoKey)] = SerializeShardingInfo(renamed);
    }
    std::string prefix = SerializeHeader(h);
    h.header_size = prefix.size() - 8;
    // The new header is built from the scan: copy only from the file the scan saw.
    ASSIGN_OR_RETURN(std::unique_ptr<ReadableFile> src,
                     fs.OpenRead(JoinPath(layout.root(), f.name)));
    RETURN_IF_ERROR(CheckUnchanged(*src, IdentityOf(f)));
    ASSIGN_OR_RETURN(AtomicFile out, AtomicFile::Create(*out_dir, f.name));
    RETURN_IF_ERROR(out.file().Allocate(prefix.size() + h.buffer_size));
    RETURN_IF_ERROR(out.file().WriteAt(0, prefix));
    RETURN_IF_ERROR(
        out.file().CopyFrom(*src, f.header->data_start(), prefix.size(), h.buffer_size));
    RETURN_IF_ERROR(out.file().Sync());
    if (layout.manifest()) {
      ASSIGN_OR_RETURN(std::unique_ptr<ReadableFile> written, out_dir->OpenRead(out.temp_path()));
      ASSIGN_OR_RETURN(ManifestFile mf, ChecksumFile(*written, h));
      mf.name = f.name;
      manifest_files.push_back(std::move(mf));
    }
    // Written and synced: its descriptor goes now (a 1,000+-rank remap stays under the
    // open-file limit); the rename waits until every file is ready.
    RETURN_IF_ERROR(out.CloseFile());
    result.bytes_copied += h.buffer_size;
    result.files.push_back(f.name);
    outputs.push_back(std::move(out));
  }
  // Other files (config.json, tokenizer, ...) go along unchanged.
  if (!same) {
    FileStat st = fs.Stat(input).value_or(FileStat{});
    if (st.is_dir) {
      ASSIGN_OR_RETURN(std::vector<DirEntry> entries, fs.List(input));
      for (const DirEntry& e : entries) {
        if (e.is_dir || IsTempFileName(e.name) || absl::EndsWith(e.name, ".safetensors") ||
            e.name == layout.index_file() || e.name == kManifestFileName ||
            e.name == kRemapJournal) {
          continue;
        }
        if (!o.overwrite && out_dir->Stat(e.name).ok()) continue;  // a file of the user's in OUT
        // Streamed (in the kernel where it can), never read into memory: optimizer states of
        // many GB may sit beside the weights. Only regular files go along.
        absl::StatusOr<std::unique_ptr<ReadableFile>> src = fs.OpenRead(JoinPath(input, e.name));
        if (!src.ok() && src.status().code() == absl::StatusCode::kFailedPrecondition) continue;
        if (!src.ok()) return src.status();
        ASSIGN_OR_RETURN(AtomicFile copy, AtomicFile::Create(*out_dir, e.name));
        if ((*src)->size() > 0) {
          RETURN_IF_ERROR(copy.file().CopyFrom(**src, 0, 0, (*src)->size()));
        }
        RETURN_IF_ERROR(copy.Commit());
      }
    }
  }
  if (o.cancel && o.cancel->load()) return absl::CancelledError("remap cancelled");
  if (same && !resuming) {
    // Every new file is complete under its temporary name. Before the first one replaces its
    // original: the journal (renames + the old index), then the index stops saying "finished".
    nlohmann::json j;
    nlohmann::json renames = nlohmann::json::object();
    for (const auto& [from, to] : ren) renames[from] = to;
    j["renames"] = std::move(renames);
    j["index_file"] = index ? index_file : std::string();
    j["index"] = index ? nlohmann::json(SerializeIndexJson(*index)) : nlohmann::json();
    RETURN_IF_ERROR(
        WriteFileAtomically(*out_dir, std::string(kRemapJournal), internal::DumpJson(j, 2)));
    if (index) RETURN_IF_ERROR(out_dir->Remove(index_file));
    RETURN_IF_ERROR(out_dir->SyncDir(""));
  } else if (same && resuming && index && out_dir->Stat(index_file).ok()) {
    RETURN_IF_ERROR(out_dir->Remove(index_file));
  }
  int committed = 0;
  const char* crash_after = std::getenv("SAFESHARD_TEST_REMAP_CRASH_AFTER");
  for (AtomicFile& a : outputs) {
    RETURN_IF_ERROR(a.Commit());
    if (crash_after != nullptr && ++committed == std::atoi(crash_after)) _exit(86);  // tests only
  }
  if (layout.manifest()) {
    // The renamed files' own sizes and checksums (the input's would describe other bytes).
    Manifest m = *layout.manifest();
    m.files = std::move(manifest_files);
    RETURN_IF_ERROR(
        WriteFileAtomically(*out_dir, std::string(kManifestFileName), SerializeManifest(m)));
    result.files.push_back(kManifestFileName);
  }
  if (index) {
    IndexJson idx = *index;
    idx.weight_map.clear();
    for (const auto& [k, v] : index->weight_map) idx.weight_map[ren.at(k)] = v;
    RETURN_IF_ERROR(WriteFileAtomically(*out_dir, index_file, SerializeIndexJson(idx)));
    result.files.push_back(index_file);
  }
  if (same && out_dir->Stat(std::string(kRemapJournal)).ok()) {
    RETURN_IF_ERROR(out_dir->Remove(std::string(kRemapJournal)));  // finished: nothing to resume
    RETURN_IF_ERROR(out_dir->SyncDir(""));
  }
  return result;
}

}  // namespace safeshard
