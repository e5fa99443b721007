#include "core/layout/layout.h"

#include <algorithm>
#include <atomic>
#include <set>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/strip.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/format/filenames.h"
#include "core/format/sharding.h"
#include "core/io/atomic_file.h"
#include "core/util/parallel.h"
#include "core/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace safeshard {
namespace {

std::string Q(absl::string_view s) { return nlohmann::json(std::string(s)).dump(); }

std::string Box(const std::vector<uint64_t>& lo, const std::vector<uint64_t>& hi) {
  std::vector<std::string> parts;
  for (size_t d = 0; d < lo.size(); ++d) parts.push_back(absl::StrCat(lo[d], ":", hi[d]));
  return absl::StrCat("[", absl::StrJoin(parts, ", "), "]");
}

std::string ChunkBox(const Chunk& c) {
  std::vector<uint64_t> hi(c.offsets.size());
  for (size_t d = 0; d < hi.size(); ++d) hi[d] = c.offsets[d] + c.sizes[d];
  return Box(c.offsets, hi);
}

bool IsEmptyChunk(const Chunk& c) {
  for (uint64_t s : c.sizes) {
    if (s == 0) return true;
  }
  return false;
}

// Saturating element count.
unsigned __int128 Volume(const std::vector<uint64_t>& sizes) {
  unsigned __int128 v = 1;
  for (uint64_t s : sizes) v *= s;
  return v;
}

// Problems already name their file; drop a "<path>: " the underlying error starts with.
std::string WithoutPathPrefix(const std::string& message, const std::string& path) {
  absl::string_view m = message;
  return std::string(absl::ConsumePrefix(&m, path + ": ") ? m : absl::string_view(message));
}

bool IsIndexFileName(absl::string_view name) {
  return absl::EndsWith(name, ".safetensors.index.json");
}

}  // namespace

absl::string_view CheckpointKindName(CheckpointKind k) {
  switch (k) {
    case CheckpointKind::kEmpty: return "empty";
    case CheckpointKind::kSingleFile: return "single_file";
    case CheckpointKind::kHfSharded: return "hf_sharded";
    case CheckpointKind::kDcpSharded: return "dcp_sharded";
    case CheckpointKind::kMixed: return "mixed";
  }
  return "unknown";
}

absl::string_view ProblemKindName(ProblemKind k) {
  switch (k) {
    case ProblemKind::kInvalidFile: return "invalid_file";
    case ProblemKind::kGap: return "gap";
    case ProblemKind::kOverlap: return "overlap";
    case ProblemKind::kOutOfBounds: return "out_of_bounds";
    case ProblemKind::kRankMismatch: return "rank_mismatch";
    case ProblemKind::kDTypeMismatch: return "dtype_mismatch";
    case ProblemKind::kIndexMissingFile: return "index_missing_file";
    case ProblemKind::kIndexMissingTensor: return "index_missing_tensor";
    case ProblemKind::kNotInIndex: return "not_in_index";
    case ProblemKind::kIndexTotalSize: return "index_total_size";
    case ProblemKind::kInvalidIndex: return "invalid_index";
    case ProblemKind::kShardRanks: return "shard_ranks";
    case ProblemKind::kShardFileCount: return "shard_file_count";
    case ProblemKind::kDuplicateTensor: return "duplicate_tensor";
  }
  return "unknown";
}

std::string Problem::ToString() const {
  std::string out = absl::StrCat(ProblemKindName(kind), ": ");
  if (!file.empty()) absl::StrAppend(&out, file, ": ");
  if (!tensor.empty()) absl::StrAppend(&out, "tensor ", Q(tensor), ": ");
  absl::StrAppend(&out, message);
  return out;
}

uint64_t TensorLayout::numel() const {
  uint64_t n = 1;
  for (uint64_t d : shape) n *= d;
  return n;
}

uint64_t TensorLayout::bytes() const {
  absl::StatusOr<uint64_t> b = ByteSizeOf(dtype, shape);
  return b.ok() ? *b : 0;
}

const TensorLayout* CheckpointLayout::FindTensor(absl::string_view name) const {
  auto it = std::lower_bound(tensors_.begin(), tensors_.end(), name,
                             [](const TensorLayout& t, absl::string_view n) { return t.name < n; });
  return it != tensors_.end() && it->name == name ? &*it : nullptr;
}

uint64_t CheckpointLayout::total_tensor_bytes() const {
  uint64_t n = 0;
  for (const TensorLayout& t : tensors_) n += t.bytes();
  return n;
}

absl::StatusOr<Header> ReadHeader(FileSystem& fs, const std::string& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<ReadableFile> f, fs.OpenRead(path));
  return ReadHeader(*f);
}

absl::StatusOr<Header> ReadHeader(const ReadableFile& file) {
  const ReadableFile* f = &file;
  const std::string& path = file.path();
  const uint64_t size = f->size();
  std::string prefix(std::min<uint64_t>(size, 64), '\0');
  RETURN_IF_ERROR(f->ReadAt(0, prefix.size(), prefix.data()));
  ASSIGN_OR_RETURN(uint64_t n, ParseHeaderLength(prefix, size, path));
  // The header's first bytes came with the prefix; read only the rest (remote files: no byte
  // is fetched twice).
  const size_t have = std::min<uint64_t>(n, prefix.size() - std::min<size_t>(prefix.size(), 8));
  std::string json = prefix.substr(std::min<size_t>(prefix.size(), 8), have);
  if (have < n) {
    json.resize(n);
    RETURN_IF_ERROR(f->ReadAt(8 + have, n - have, json.data() + have));
  }
  return ParseHeader(json, size, path);
}

ScannedIdentity IdentityOf(const FileInfo& info) {
  return {info.size, info.header->data_start(), info.header->fingerprint};
}

absl::Status CheckUnchanged(const ReadableFile& file, const ScannedIdentity& scanned,
                            std::optional<absl::string_view> header_bytes) {
  auto changed = [&](const std::string& how) {
    return absl::AbortedError(absl::StrCat(file.path(), ": changed since it was scanned (", how,
                                           "); nothing was written from it. Run again once its writer has finished"));
  };
  if (file.size() != scanned.size) {
    return changed(absl::StrCat("it had ", scanned.size, " bytes, now ", file.size()));
  }
  std::string buf;
  if (!header_bytes) {
    buf.resize(scanned.data_start - 8);
    RETURN_IF_ERROR(file.ReadAt(8, buf.size(), buf.data()));
    header_bytes = buf;
  }
  if (header_bytes->size() != scanned.data_start - 8 || HeaderFingerprint(*header_bytes) != scanned.fingerprint) {
    return changed("its header, bytes [8, " + std::to_string(scanned.data_start) + "), differs");
  }
  return absl::OkStatus();
}

absl::StatusOr<MappedInput> MapUnchanged(FileSystem& fs, const std::string& path, const ScannedIdentity& scanned) {
  MappedInput in;
  ASSIGN_OR_RETURN(in.file, fs.OpenRead(path));
  ASSIGN_OR_RETURN(in.map, in.file->Map());
  const absl::string_view bytes = in.map->data();
  RETURN_IF_ERROR(CheckUnchanged(*in.file, scanned,
                                 bytes.size() >= scanned.data_start && scanned.data_start >= 8
                                     ? std::optional<absl::string_view>(bytes.substr(8, scanned.data_start - 8))
                                     : std::nullopt));
  return in;
}

void CheckCoverage(const std::string& tensor, const std::vector<uint64_t>& shape,
                   const std::vector<Chunk>& chunks, const std::vector<FileInfo>& files,
                   const ScanOptions& options, std::vector<Problem>* problems) {
  const size_t rank = shape.size();
  auto file_of = [&](const Chunk& c) { return files[c.file].name; };
  bool bad = false;
  for (const Chunk& c : chunks) {
    for (size_t d = 0; d < rank; ++d) {
      if (c.offsets[d] + c.sizes[d] > shape[d] || c.offsets[d] + c.sizes[d] < c.offsets[d]) {
        problems->push_back({ProblemKind::kOutOfBounds, file_of(c), tensor,
                             absl::StrCat("chunk ", ChunkBox(c), " (bytes [", c.begin, ", ",
                                          c.end, ")) lies outside the tensor shape [",
                                          absl::StrJoin(shape, ", "), "] in dimension ", d)});
        bad = true;
        break;
      }
    }
  }
  if (bad) return;

  // Overlaps: sweep along the dimension with the most distinct chunk starts.
  std::vector<const Chunk*> live;
  for (const Chunk& c : chunks) {
    if (!IsEmptyChunk(c)) live.push_back(&c);
  }
  size_t sweep = 0;
  if (rank > 0) {
    size_t best = 0;
    for (size_t d = 0; d < rank; ++d) {
      std::set<uint64_t> starts;
      for (const Chunk* c : live) starts.insert(c->offsets[d]);
      if (starts.size() > best) {
        best = starts.size();
        sweep = d;
      }
    }
    std::sort(live.begin(), live.end(), [&](const Chunk* a, const Chunk* b) {
      return a->offsets[sweep] < b->offsets[sweep];
    });
  }
  int overlaps = 0;
  for (size_t i = 0; i < live.size() && overlaps < 8; ++i) {
    for (size_t j = i + 1; j < live.size() && overlaps < 8; ++j) {
      const Chunk& a = *live[i];
      const Chunk& b = *live[j];
      if (rank > 0 && b.offsets[sweep] >= a.offsets[sweep] + a.sizes[sweep]) break;
      std::vector<uint64_t> lo(rank), hi(rank);
      bool meet = true;
      for (size_t d = 0; d < rank && meet; ++d) {
        lo[d] = std::max(a.offsets[d], b.offsets[d]);
        hi[d] = std::min(a.offsets[d] + a.sizes[d], b.offsets[d] + b.sizes[d]);
        meet = lo[d] < hi[d];
      }
      if (!meet) continue;
      ++overlaps;
      problems->push_back(
          {ProblemKind::kOverlap, file_of(a), tensor,
           absl::StrCat("chunk ", ChunkBox(a), " (bytes [", a.begin, ", ", a.end,
                        ")) and chunk ", ChunkBox(b), " in ", file_of(b), " (bytes [", b.begin,
                        ", ", b.end, ")) both hold elements ", Box(lo, hi))});
    }
  }

  // Gaps: compare covered volume; locate the first uncovered cell on a compressed grid.
  unsigned __int128 total = Volume(shape), covered = 0;
  for (const Chunk* c : live) covered += Volume(c->sizes);
  if (overlaps == 0 && covered >= total) return;
  std::vector<std::vector<uint64_t>> cuts(rank);
  unsigned __int128 cells = 1;
  for (size_t d = 0; d < rank; ++d) {
    std::vector<uint64_t>& v = cuts[d];
    v.push_back(0);
    v.push_back(shape[d]);
    for (const Chunk* c : live) {
      v.push_back(c->offsets[d]);
      v.push_back(c->offsets[d] + c->sizes[d]);
    }
    std::sort(v.begin(), v.end());
    v.erase(std::unique(v.begin(), v.end()), v.end());
    cells *= v.size() - 1;
  }
  if (total == 0) return;
  if (cells > options.max_gap_cells) {
    if (overlaps == 0) {
      problems->push_back({ProblemKind::kGap, "", tensor,
                           absl::StrCat(static_cast<uint64_t>(total - covered), " of ",
                                        static_cast<uint64_t>(total),
                                        " elements are in no chunk")});
    }
    return;
  }
  std::vector<uint8_t> hit(static_cast<size_t>(cells), 0);
  std::vector<size_t> stride(rank, 1);
  for (size_t d = rank; d-- > 1;) stride[d - 1] = stride[d] * (cuts[d].size() - 1);
  for (const Chunk* c : live) {
    std::vector<size_t> lo(rank), hi(rank);
    for (size_t d = 0; d < rank; ++d) {
      lo[d] = std::lower_bound(cuts[d].begin(), cuts[d].end(), c->offsets[d]) - cuts[d].begin();
      hi[d] = std::lower_bound(cuts[d].begin(), cuts[d].end(), c->offsets[d] + c->sizes[d]) -
              cuts[d].begin();
    }
    std::vector<size_t> idx = lo;
    while (true) {
      size_t flat = 0;
      for (size_t d = 0; d < rank; ++d) flat += idx[d] * stride[d];
      hit[flat] = 1;
      size_t d = rank;
      while (d > 0) {
        --d;
        if (++idx[d] < hi[d]) break;
        idx[d] = lo[d];
        if (d == 0) { d = SIZE_MAX; break; }
      }
      if (rank == 0 || d == SIZE_MAX) break;
    }
  }
  uint64_t missing = 0;
  std::optional<size_t> first;
  for (size_t f = 0; f < hit.size(); ++f) {
    if (hit[f]) continue;
    uint64_t vol = 1;
    size_t rem = f;
    for (size_t d = 0; d < rank; ++d) {
      size_t i = rem / stride[d];
      rem %= stride[d];
      vol *= cuts[d][i + 1] - cuts[d][i];
    }
    missing += vol;
    if (!first) first = f;
  }
  if (!first) return;
  std::vector<uint64_t> lo(rank), hi(rank);
  size_t rem = *first;
  for (size_t d = 0; d < rank; ++d) {
    size_t i = rem / stride[d];
    rem %= stride[d];
    lo[d] = cuts[d][i];
    hi[d] = cuts[d][i + 1];
  }
  problems->push_back({ProblemKind::kGap, "", tensor,
                       absl::StrCat(missing, " of ", static_cast<uint64_t>(total),
                                    " elements are in no chunk; first missing block ",
                                    Box(lo, hi), " of shape [", absl::StrJoin(shape, ", "), "]")});
}

absl::StatusOr<CheckpointLayout> CheckpointLayout::Scan(FileSystem& fs, const std::string& path,
                                                        const ScanOptions& options) {
  CheckpointLayout ck;
  ASSIGN_OR_RETURN(FileStat st, fs.Stat(path));
  std::vector<std::string> names;
  if (st.is_dir) {
    ck.root_ = path;
    ASSIGN_OR_RETURN(std::vector<DirEntry> entries, fs.List(path));
    for (const DirEntry& e : entries) {
      if (e.is_dir || IsTempFileName(e.name)) continue;
      if (absl::EndsWith(e.name, kSafetensorsSuffix)) {
        names.push_back(e.name);
      } else if (IsIndexFileName(e.name) && ck.index_file_.empty()) {
        ck.index_file_ = e.name;
      }
    }
    // Prefer the standard index names when several exist.
    for (absl::string_view pref : {kIndexFileName, kDiffusersIndexFileName}) {
      for (const DirEntry& e : entries) {
        if (e.name == pref) {
          ck.index_file_ = e.name;
          goto found;
        }
      }
    }
  found:;
  } else {
    ck.root_ = DirName(path);
    names.push_back(BaseName(path));
  }

  // Headers, several files at a time (remote files: requests overlap; local: parsing does).
  ck.files_.resize(names.size());
  auto read_one = [&](size_t i) {
    FileInfo& fi = ck.files_[i];
    fi.name = names[i];
    if (absl::StatusOr<FileIndex> idx = ParseFileIndex(fi.name); idx.ok()) {
      fi.file_index = idx->index;
      fi.shard = idx->shard;
    }
    absl::StatusOr<std::unique_ptr<ReadableFile>> f = fs.OpenRead(JoinPath(ck.root_, fi.name));
    if (!f.ok()) {
      fi.error = std::string(f.status().message());
      return;
    }
    fi.size = (*f)->size();
    absl::StatusOr<Header> h = ReadHeader(**f);
    if (!h.ok()) {
      fi.error = std::string(h.status().message());
    } else {
      fi.header = std::move(*h);
    }
  };
  ParallelFor(names.size(), options.header_threads, read_one);

  // Index json.
  if (!ck.index_file_.empty()) {
    std::string ipath = JoinPath(ck.root_, ck.index_file_);
    absl::StatusOr<std::string> text = fs.ReadAll(ipath);
    absl::StatusOr<IndexJson> idx =
        text.ok() ? ParseIndexJson(*text, ipath) : absl::StatusOr<IndexJson>(text.status());
    if (idx.ok()) {
      ck.index_ = std::move(*idx);
    } else {
      ck.problems_.push_back(
          {ProblemKind::kInvalidIndex, ck.index_file_, "", std::string(idx.status().message())});
    }
  }

  // Chunks.
  absl::flat_hash_map<std::string, size_t> pos;
  std::vector<TensorLayout> tensors;
  std::vector<std::set<DType>> dtypes;
  std::vector<std::vector<std::string>> plain_files;  // plain files holding each tensor
  int dcp_files = 0, plain = 0;
  for (size_t fidx = 0; fidx < ck.files_.size(); ++fidx) {
    FileInfo& fi = ck.files_[fidx];
    if (!fi.header) {
      ck.problems_.push_back({ProblemKind::kInvalidFile, fi.name, "", WithoutPathPrefix(*fi.error, JoinPath(ck.root_, fi.name))});
      continue;
    }
    absl::StatusOr<std::optional<ShardingInfo>> info = ReadShardingInfo(*fi.header, fi.name);
    if (!info.ok()) {
      fi.error = std::string(info.status().message());
      ck.problems_.push_back({ProblemKind::kInvalidFile, fi.name, "", WithoutPathPrefix(*fi.error, JoinPath(ck.root_, fi.name))});
      continue;
    }
    fi.dcp = info->has_value();
    (fi.dcp ? dcp_files : plain)++;
    for (const TensorEntry& t : fi.header->tensors) {
      auto [it, inserted] = pos.try_emplace(t.name, tensors.size());
      if (inserted) {
        tensors.emplace_back();
        tensors.back().name = t.name;
        tensors.back().dtype = t.dtype;
        dtypes.emplace_back();
        plain_files.emplace_back();
      }
      TensorLayout& tl = tensors[it->second];
      dtypes[it->second].insert(t.dtype);
      Chunk c;
      c.file = static_cast<int>(fidx);
      c.sizes = t.shape;
      c.offsets = fi.dcp ? (*info)->saved_offsets.at(t.name) : std::vector<uint64_t>(t.shape.size());
      c.begin = fi.header->data_start() + t.begin;
      c.end = fi.header->data_start() + t.end;
      if (!fi.dcp) plain_files[it->second].push_back(fi.name);
      tl.chunks.push_back(std::move(c));
    }
  }
  for (size_t i = 0; i < tensors.size(); ++i) {
    TensorLayout& t = tensors[i];
    size_t before = ck.problems_.size();
    if (dtypes[i].size() > 1) {
      std::vector<std::string> ds;
      for (DType d : dtypes[i]) ds.emplace_back(DTypeName(d));
      ck.problems_.push_back({ProblemKind::kDTypeMismatch, "", t.name,
                              absl::StrCat("chunks disagree on dtype: ", absl::StrJoin(ds, ", "))});
    }
    if (plain_files[i].size() > 1) {
      ck.problems_.push_back({ProblemKind::kDuplicateTensor, "", t.name,
                              absl::StrCat("stored whole in several files: ",
                                           absl::StrJoin(plain_files[i], ", "))});
    }
    size_t rank = t.chunks[0].sizes.size();
    bool same_rank = true;
    for (const Chunk& c : t.chunks) same_rank &= c.sizes.size() == rank;
    if (!same_rank) {
      ck.problems_.push_back({ProblemKind::kRankMismatch, "", t.name,
                              "chunks disagree on the number of dimensions"});
    } else {
      t.shape.assign(rank, 0);
      for (const Chunk& c : t.chunks) {
        for (size_t d = 0; d < rank; ++d) {
          t.shape[d] = std::max(t.shape[d], c.offsets[d] + c.sizes[d]);
        }
      }
      if (plain_files[i].empty() || t.chunks.size() > 1) {
        CheckCoverage(t.name, t.shape, t.chunks, ck.files_, options, &ck.problems_);
      }
    }
    t.has_problem = ck.problems_.size() > before;
  }

  // Index consistency (plain files only: the index describes an HF layout).
  if (ck.index_) {
    std::map<std::string, const FileInfo*> by_name;
    for (const FileInfo& f : ck.files_) by_name[f.name] = &f;
    std::set<std::string> missing_files;
    std::map<std::string, int> missing_count;
    uint64_t total = 0;
    for (const auto& [fqn, file] : ck.index_->weight_map) {
      auto f = by_name.find(file);
      if (f == by_name.end()) {
        missing_count[file]++;
        continue;
      }
      if (!f->second->header) continue;  // already reported
      const TensorEntry* te = f->second->header->Find(fqn);
      if (te == nullptr) {
        ck.problems_.push_back({ProblemKind::kIndexMissingTensor, file, fqn,
                                absl::StrCat("the index places it in this file, which does not "
                                             "hold it")});
      } else {
        total += te->size();
      }
    }
    for (const auto& [file, n] : missing_count) {
      ck.problems_.push_back({ProblemKind::kIndexMissingFile, file, "",
                              absl::StrCat("named by ", n, " index entr", n == 1 ? "y" : "ies",
                                           " but the file does not exist")});
    }
    for (const FileInfo& f : ck.files_) {
      if (!f.header || f.dcp) continue;
      for (const TensorEntry& t : f.header->tensors) {
        auto w = ck.index_->weight_map.find(t.name);
        if (w == ck.index_->weight_map.end()) {
          ck.problems_.push_back({ProblemKind::kNotInIndex, f.name, t.name,
                                  absl::StrCat("not listed in ", ck.index_file_)});
        }
      }
    }
    if (ck.index_->total_size && missing_count.empty() && *ck.index_->total_size != total) {
      ck.problems_.push_back({ProblemKind::kIndexTotalSize, ck.index_file_, "",
                              absl::StrCat("metadata.total_size is ", *ck.index_->total_size,
                                           " but the indexed tensors hold ", total, " bytes")});
    }
  }

  // Shard ranks must be dense 1..R, and agree on the file count.
  std::set<int> ranks;
  std::set<int> counts;
  for (const FileInfo& f : ck.files_) {
    if (f.shard) {
      ranks.insert(*f.shard);
      absl::StatusOr<FileIndex> idx = ParseFileIndex(f.name);
      if (idx.ok()) counts.insert(idx->count);
    }
  }
  if (!ranks.empty()) {
    ck.rank_count_ = static_cast<int>(ranks.size());
    int r_max = *ranks.rbegin();
    if (static_cast<int>(ranks.size()) != r_max) {
      std::vector<int> missing;
      for (int r = 1; r <= r_max; ++r) {
        if (!ranks.count(r)) missing.push_back(r);
      }
      ck.problems_.push_back(
          {ProblemKind::kShardRanks, "", "",
           absl::StrCat("shard rank indices are not dense 1..", r_max, ": missing shard-",
                        absl::StrJoin(missing, ", shard-"), " (",
                        missing.size() == 1 ? "a rank's file is" : "ranks' files are",
                        " absent)")});
    }
    if (counts.size() > 1) {
      ck.problems_.push_back({ProblemKind::kShardFileCount, "", "",
                              absl::StrCat("shard files disagree on the model file count: -of-",
                                           absl::StrJoin(counts, ", -of-"))});
    }
  }

  std::sort(tensors.begin(), tensors.end(),
            [](const TensorLayout& a, const TensorLayout& b) { return a.name < b.name; });
  ck.tensors_ = std::move(tensors);
  if (ck.files_.empty()) {
    ck.kind_ = CheckpointKind::kEmpty;
  } else if (dcp_files > 0 && plain > 0) {
    ck.kind_ = CheckpointKind::kMixed;
  } else if (dcp_files > 0) {
    ck.kind_ = CheckpointKind::kDcpSharded;
  } else if (ck.files_.size() == 1) {
    ck.kind_ = CheckpointKind::kSingleFile;
  } else {
    ck.kind_ = CheckpointKind::kHfSharded;
  }
  return ck;
}

}  // namespace safeshard
