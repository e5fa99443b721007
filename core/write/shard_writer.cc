#include "core/write/shard_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <optional>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/format/filenames.h"
#include "core/format/header.h"
#include "core/format/internal/json_util.h"
#include "core/format/manifest.h"
#include "core/format/sharding.h"
#include "core/io/atomic_file.h"
#include "core/layout/layout.h"
#include "core/util/parallel.h"
#include "core/util/status_macros.h"

namespace safeshard {
namespace {

constexpr absl::string_view kRecordPrefix = ".safeshard-commit-";
constexpr char kLockName[] = ".safeshard-commit.lock";

// ".safeshard-commit-00003-of-00008.json": rank 3's record of a save by 8 ranks.
std::string RecordName(int rank, int world) {
  return absl::StrFormat("%s%05d-of-%05d.json", kRecordPrefix, rank, world);
}

std::string Shape(const std::vector<uint64_t>& s) {
  return absl::StrCat("[", absl::StrJoin(s, ", "), "]");
}

struct PlannedFile {
  std::string name;
  Header header;
  std::map<std::string, const ShardBuffer*> by_key;  // physical key -> buffer
};

}  // namespace

ShardWriter::ShardWriter(std::string dir, int rank, int world_size,
                         std::map<std::string, int> fqn_to_index, int threads)
    : dir_(std::move(dir)),
      rank_(rank),
      world_(world_size),
      fqn_to_index_(std::move(fqn_to_index)),
      threads_(std::max(1, threads)) {}

absl::Status ShardWriter::CheckGroup(int rank, int world_size,
                                     const std::map<std::string, int>& fqn_to_index) {
  if (world_size < 1 || world_size > (1 << 20) || rank < 0 || rank >= world_size) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", rank, " is not a rank of a group of ",
                                                   world_size, " (0 <= rank < world_size)"));
  }
  for (const auto& [fqn, idx] : fqn_to_index) {
    if (idx < 1 || idx > 99999) {
      return absl::InvalidArgumentError(absl::StrCat("fqn_to_index_mapping: tensor ",
                                                     internal::Quote(fqn), ": file index ", idx,
                                                     " is not in 1..99999"));
    }
  }
  return absl::OkStatus();
}

absl::Status ShardWriter::Add(ShardBuffer b) {
  const std::string name = internal::Quote(b.fqn);
  if (committed_) return absl::FailedPreconditionError("this rank already committed");
  RETURN_IF_ERROR(CheckGroup(rank_, world_, fqn_to_index_));
  if (b.fqn.empty()) return absl::InvalidArgumentError("a tensor needs a name");
  if (b.offsets.empty()) b.offsets.assign(b.shape.size(), 0);
  if (b.global_shape.empty()) {
    for (size_t d = 0; d < b.shape.size(); ++d) b.global_shape.push_back(b.offsets[d] + b.shape[d]);
  }
  if (b.offsets.size() != b.shape.size() || b.global_shape.size() != b.shape.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor ", name, ": the chunk has ", b.shape.size(), " dimensions, offsets ",
                     b.offsets.size(), " and global_shape ", b.global_shape.size()));
  }
  for (size_t d = 0; d < b.shape.size(); ++d) {
    if (b.offsets[d] > b.global_shape[d] || b.shape[d] > b.global_shape[d] - b.offsets[d]) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", name, ": a chunk of shape ", Shape(b.shape), " at offsets ",
                       Shape(b.offsets), " lies outside the global shape ", Shape(b.global_shape)));
    }
  }
  if (IsSubByte(b.dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor ", name, ": ", DTypeName(b.dtype), " chunks are not supported"));
  }
  RETURN_IF_ERROR(NumElements(b.shape).status());
  if (b.data == nullptr && NumElements(b.shape).value_or(0) > 0) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", name, ": no data"));
  }
  for (const ShardBuffer& o : buffers_) {
    if (o.fqn != b.fqn) continue;
    if (o.dtype != b.dtype || o.global_shape != b.global_shape) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor ", name, ": this chunk is ", DTypeName(b.dtype), " ", Shape(b.global_shape),
          ", an earlier one ", DTypeName(o.dtype), " ", Shape(o.global_shape)));
    }
    bool disjoint = false;
    for (size_t d = 0; d < b.shape.size() && !disjoint; ++d) {
      disjoint =
          b.offsets[d] + b.shape[d] <= o.offsets[d] || o.offsets[d] + o.shape[d] <= b.offsets[d];
    }
    if (!disjoint && NumElements(b.shape).value_or(0) > 0 && NumElements(o.shape).value_or(0) > 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", name, ": the chunk at offsets ", Shape(b.offsets), " of shape ",
                       Shape(b.shape), " overlaps one added before at ", Shape(o.offsets),
                       " of shape ", Shape(o.shape)));
    }
  }
  if (!fqn_to_index_.empty() && !fqn_to_index_.count(b.fqn)) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor ", name, " is not in fqn_to_index_mapping"));
  }
  buffers_.push_back(std::move(b));
  return absl::OkStatus();
}

absl::StatusOr<ShardCommit> ShardWriter::Commit(const std::atomic<bool>* cancel) {
  if (committed_) return absl::FailedPreconditionError("this rank already committed");
  committed_ = true;
  RETURN_IF_ERROR(CheckGroup(rank_, world_, fqn_to_index_));
  auto cancelled = [&] { return cancel != nullptr && cancel->load(); };
  FileSystem& local = LocalFileSystem();
  RETURN_IF_ERROR(local.MakeDirs(dir_));
  ASSIGN_OR_RETURN(std::unique_ptr<FileSystem> d, local.OpenBeneath(dir_));
  // A save into this directory makes its earlier manifest and this rank's earlier record stale
  // (the manifest cannot be this save's: it needs this rank's record first).
  if (d->Stat(std::string(kManifestFileName)).ok())
    RETURN_IF_ERROR(d->Remove(std::string(kManifestFileName)));
  if (d->Stat(RecordName(rank_, world_)).ok())
    RETURN_IF_ERROR(d->Remove(RecordName(rank_, world_)));

  // Plan the files: one per file index holding this rank's chunks.
  int count = 1;
  for (const auto& [fqn, idx] : fqn_to_index_) count = std::max(count, idx);
  std::map<std::string, int> chunks_of;
  for (const ShardBuffer& b : buffers_) ++chunks_of[b.fqn];
  std::map<int, std::vector<const ShardBuffer*>> by_file;
  for (const ShardBuffer& b : buffers_) {
    auto it = fqn_to_index_.find(b.fqn);
    by_file[it == fqn_to_index_.end() ? 1 : it->second].push_back(&b);
  }
  std::vector<PlannedFile> files;
  for (const auto& [idx, members] : by_file) {
    PlannedFile f;
    f.name = ShardFileName(rank_, idx, count);
    ShardingInfo info;
    std::vector<TensorSpec> specs;
    std::map<std::string, int> next_k;
    for (const ShardBuffer* b : members) {
      const std::string key =
          chunks_of[b->fqn] > 1 ? PhysicalShardKey(b->fqn, next_k[b->fqn]++) : b->fqn;
      info.saved_offsets[key] = b->offsets;
      info.logical_fqn[key] = b->fqn;
      info.global_shape[key] = b->global_shape;
      specs.push_back({key, b->dtype, b->shape});
      f.by_key[key] = b;
    }
    ASSIGN_OR_RETURN(f.header, LayoutHeader(std::move(specs), ShardedFileMetadata(info)));
    files.push_back(std::move(f));
  }
  // Write them, several at once, each under a temporary name; rename them only when every one
  // is complete and synced (a failure or a cancel leaves none of this rank's new files).
  std::vector<absl::Status> status(files.size());
  std::vector<std::optional<AtomicFile>> written(files.size());
  ParallelFor(files.size(), threads_, [&](size_t i) {
    status[i] = [&]() -> absl::Status {
      const PlannedFile& f = files[i];
      ASSIGN_OR_RETURN(AtomicFile a, AtomicFile::Create(*d, f.name));
      RETURN_IF_ERROR(a.file().Allocate(f.header.file_size()));
      RETURN_IF_ERROR(a.file().WriteAt(0, SerializeHeader(f.header)));
      for (const TensorEntry& e : f.header.tensors) {
        if (cancelled()) return absl::CancelledError("commit cancelled; nothing was published");
        if (e.size() == 0) continue;
        const ShardBuffer* b = f.by_key.at(e.name);
        RETURN_IF_ERROR(
            a.file().WriteAt(f.header.data_start() + e.begin,
                             absl::string_view(static_cast<const char*>(b->data), e.size())));
      }
      RETURN_IF_ERROR(a.CloseFile());  // fsynced
      written[i].emplace(std::move(a));
      return absl::OkStatus();
    }();
  });
  for (const absl::Status& s : status) RETURN_IF_ERROR(s);
  if (cancelled()) return absl::CancelledError("commit cancelled; nothing was published");
  for (std::optional<AtomicFile>& a : written) RETURN_IF_ERROR(a->Commit());

  // This rank's record: its files with sizes and checksums (read back: what is on disk).
  ShardCommit out;
  Manifest record;
  record.ranks = world_;
  for (const PlannedFile& f : files) {
    ASSIGN_OR_RETURN(std::unique_ptr<ReadableFile> in, d->OpenRead(f.name));
    ASSIGN_OR_RETURN(ManifestFile mf, ChecksumFile(*in, f.header));
    mf.name = f.name;
    record.files.push_back(std::move(mf));
    out.files.push_back(f.name);
    for (const TensorEntry& e : f.header.tensors) out.bytes += e.size();
  }
  RETURN_IF_ERROR(WriteFileAtomically(*d, RecordName(rank_, world_), SerializeManifest(record)));

  // The set complete? Then one rank (the one that takes the lock) publishes the manifest.
  ASSIGN_OR_RETURN(std::vector<DirEntry> entries, d->List(""));
  std::set<std::string> names;
  for (const DirEntry& e : entries) names.insert(e.name);
  for (int r = 0; r < world_; ++r) {
    if (!names.count(RecordName(r, world_))) return out;  // a later rank publishes
  }
  ASSIGN_OR_RETURN(int dfd, d->OpenDirectoryFd(""));
  const int lock =
      openat(dfd, kLockName, O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, 0644);
  close(dfd);
  if (lock < 0) return out;  // another rank is publishing
  close(lock);
  absl::Status published = [&]() -> absl::Status {
    Manifest m;
    m.ranks = world_;
    // Records of another group (another world size) mean two saves met in this directory.
    for (const std::string& n : names) {
      if (absl::StartsWith(n, kRecordPrefix) &&
          !absl::EndsWith(n, absl::StrFormat("-of-%05d.json", world_))) {
        return absl::FailedPreconditionError(
            absl::StrCat(JoinPath(dir_, n),
                         " is the commit record of a save by another number of ranks: two saves "
                         "met in this directory; the manifest is not published"));
      }
    }
    for (int r = 0; r < world_; ++r) {
      const std::string rec = RecordName(r, world_);
      ASSIGN_OR_RETURN(std::unique_ptr<ReadableFile> in, d->OpenRead(rec));
      std::string text(in->size(), '\0');
      if (!text.empty()) RETURN_IF_ERROR(in->ReadAt(0, text.size(), text.data()));
      ASSIGN_OR_RETURN(Manifest part, ParseManifest(text, rec));
      for (ManifestFile& f : part.files) {
        // Each recorded file must still be what its rank wrote (a record of an earlier,
        // interrupted save would not match a file rewritten since).
        ASSIGN_OR_RETURN(FileStat st, d->Stat(f.name));
        if (st.size != f.size) {
          return absl::FailedPreconditionError(
              absl::StrCat(JoinPath(dir_, f.name), " is ", st.size, " bytes, rank ", r,
                           "'s record says ", f.size, ": the manifest is not published"));
        }
        m.files.push_back(std::move(f));
      }
    }
    std::sort(m.files.begin(), m.files.end(),
              [](const ManifestFile& a, const ManifestFile& b) { return a.name < b.name; });
    // A checkpoint file no record claims (an earlier, larger save's rank) would make the
    // manifest a lie: refuse, naming it.
    for (const std::string& n : names) {
      if (!absl::EndsWith(n, ".safetensors")) continue;
      if (m.Find(n) == nullptr) {
        return absl::FailedPreconditionError(
            absl::StrCat(JoinPath(dir_, n),
                         " is not a file of this save (an earlier save's?): remove it; the "
                         "manifest is not published"));
      }
    }
    RETURN_IF_ERROR(WriteFileAtomically(*d, std::string(kManifestFileName), SerializeManifest(m)));
    for (int r = 0; r < world_; ++r) (void)d->Remove(RecordName(r, world_));
    return absl::OkStatus();
  }();
  (void)d->Remove(kLockName);
  RETURN_IF_ERROR(published);
  out.manifest_published = true;
  return out;
}

}  // namespace safeshard
