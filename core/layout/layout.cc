#include "core/layout/layout.h"

#include <cstdio>
#include "core/format/internal/json_util.h"

#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <set>
#include <system_error>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "core/format/filenames.h"
#include "core/format/sharding.h"
#include "core/io/atomic_file.h"
#include "core/io/sigbus_guard.h"
#include "core/util/parallel.h"
#include "core/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace safeshard {
namespace {

std::string Q(absl::string_view s) {
  return internal::Quote(s);
}

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
    case ProblemKind::kGlobalShapeMismatch: return "global_shape_mismatch";
    case ProblemKind::kInvalidManifest: return "invalid_manifest";
    case ProblemKind::kManifestMissingFile: return "manifest_missing_file";
    case ProblemKind::kManifestFileSize: return "manifest_file_size";
    case ProblemKind::kManifestUnlisted: return "manifest_unlisted_file";
    case ProblemKind::kManifestRanks: return "manifest_ranks";
    case ProblemKind::kExpectedRanks: return "expected_ranks";
    case ProblemKind::kModelFileCount: return "model_file_count";
    case ProblemKind::kReference: return "reference_mismatch";
    case ProblemKind::kChecksum: return "checksum_mismatch";
    case ProblemKind::kUnproven: return "completeness_unproven";
    case ProblemKind::kNoCheckpoint: return "no_checkpoint";
    case ProblemKind::kQuantization: return "quantization";
    case ProblemKind::kUnscaledFp8: return "unscaled_fp8";
    case ProblemKind::kUnpairedScale: return "unpaired_scale";
    case ProblemKind::kUnfinishedSave: return "unfinished_save";
  }
  return "unknown";
}

bool IsBlocking(ProblemKind k) {
  switch (k) {
    case ProblemKind::kInvalidFile:
    case ProblemKind::kGap:
    case ProblemKind::kOverlap:
    case ProblemKind::kOutOfBounds:
    case ProblemKind::kRankMismatch:
    case ProblemKind::kDTypeMismatch:
    case ProblemKind::kIndexMissingFile:    // tensors the index promises are gone
    case ProblemKind::kIndexMissingTensor:  // the index promises a tensor the file lacks
    case ProblemKind::kInvalidIndex:        // an index that cannot be read proves nothing
    case ProblemKind::kShardRanks:
    case ProblemKind::kShardFileCount:
    case ProblemKind::kDuplicateTensor:
    case ProblemKind::kGlobalShapeMismatch:
    case ProblemKind::kInvalidManifest:
    case ProblemKind::kManifestMissingFile:
    case ProblemKind::kManifestFileSize:
    case ProblemKind::kManifestUnlisted:
    case ProblemKind::kManifestRanks:
    case ProblemKind::kExpectedRanks:
    case ProblemKind::kModelFileCount:
    case ProblemKind::kReference:
    case ProblemKind::kChecksum:
    case ProblemKind::kUnproven:        // only reported with --strict, where it must block
    case ProblemKind::kNoCheckpoint:    // nothing to read: never "consistent"
    case ProblemKind::kQuantization:    // weights that cannot be decoded as their scales say
    case ProblemKind::kUnfinishedSave:  // a save still running, or died: files may be mixed
      return true;
    case ProblemKind::kNotInIndex:      // the bytes are there; the index is only incomplete
    case ProblemKind::kIndexTotalSize:  // a metadata number, not data
    case ProblemKind::kUnscaledFp8:     // maybe a plain FP8 tensor; refused when dequantizing
    case ProblemKind::kUnpairedScale:   // a left-over scale; refused when dequantizing
      return false;
  }
  return true;
}

std::string Problem::ToString() const {
  std::string out = absl::StrCat(ProblemKindName(kind), ": ");
  if (!file.empty()) {
    // A name with control bytes (a newline, an escape sequence) is quoted, never printed raw:
    // it must not forge lines of a report.
    const bool plain = std::none_of(file.begin(), file.end(), [](char c) {
      return static_cast<unsigned char>(c) < 0x20 || c == 0x7f || c == '"';
    });
    absl::StrAppend(&out, plain ? file : Q(file), ": ");
  }
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
    return absl::AbortedError(
        absl::StrCat(file.path(), ": changed since it was scanned (", how,
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
  if (header_bytes->size() != scanned.data_start - 8 ||
      HeaderFingerprint(*header_bytes) != scanned.fingerprint) {
    return changed("its header, bytes [8, " + std::to_string(scanned.data_start) + "), differs");
  }
  return absl::OkStatus();
}

absl::StatusOr<MappedInput> MapUnchanged(FileSystem& fs, const std::string& path,
                                         const ScannedIdentity& scanned) {
  MappedInput in;
  ASSIGN_OR_RETURN(in.file, fs.OpenRead(path));
  ASSIGN_OR_RETURN(in.map, in.file->Map());
  const absl::string_view bytes = in.map->data();
  RETURN_IF_ERROR(
      CheckUnchanged(*in.file, scanned,
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
                             absl::StrCat("chunk ", ChunkBox(c), " (bytes [", c.begin, ", ", c.end,
                                          ")) lies outside the tensor shape [",
                                          absl::StrJoin(shape, ", "), "] in dimension ", d)});
        bad = true;
        break;
      }
    }
  }
  if (bad) return;
  // One chunk holding the whole tensor (most tensors of most checkpoints): nothing to overlap,
  // nothing missing.
  if (chunks.size() == 1 && chunks[0].sizes == shape &&
      std::all_of(chunks[0].offsets.begin(), chunks[0].offsets.end(),
                  [](uint64_t o) { return o == 0; })) {
    return;
  }

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
           absl::StrCat("chunk ", ChunkBox(a), " (bytes [", a.begin, ", ", a.end, ")) and chunk ",
                        ChunkBox(b), " in ", file_of(b), " (bytes [", b.begin, ", ", b.end,
                        ")) both hold elements ", Box(lo, hi))});
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
      problems->push_back(
          {ProblemKind::kGap, "", tensor,
           absl::StrCat(static_cast<uint64_t>(total - covered), " of ",
                        static_cast<uint64_t>(total), " elements are in no chunk")});
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
        if (d == 0) {
          d = SIZE_MAX;
          break;
        }
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
                                    " elements are in no chunk; first missing block ", Box(lo, hi),
                                    " of shape [", absl::StrJoin(shape, ", "), "]")});
}

namespace {

using NameIndex = std::pair<absl::string_view, uint32_t>;

// Sorts by name (unique names) with multikey quicksort (Bentley & Sedgewick): partitions on one
// byte at a time, so the long prefixes tensor names share are compared once per partition step,
// not once per comparison as std::sort's memcmp does. The largest part is handled by the loop
// and the others by recursion, so the depth stays O(log n) whatever the names.
void SortNames(NameIndex* a, size_t n, size_t depth) {
  while (n > 1) {
    auto byte = [depth](const NameIndex& x) {
      return depth < x.first.size() ? static_cast<int>(static_cast<unsigned char>(x.first[depth]))
                                    : -1;
    };
    if (n <= 12) {
      for (size_t i = 1; i < n; ++i) {
        for (size_t j = i; j > 0 && a[j].first.substr(depth) < a[j - 1].first.substr(depth); --j) {
          std::swap(a[j], a[j - 1]);
        }
      }
      return;
    }
    const int x = byte(a[0]), y = byte(a[n / 2]), z = byte(a[n - 1]);
    const int v = std::max(std::min(x, y), std::min(std::max(x, y), z));  // median of three
    size_t lt = 0, i = 0, gt = n;
    while (i < gt) {
      const int c = byte(a[i]);
      if (c < v) {
        std::swap(a[lt++], a[i++]);
      } else if (c > v) {
        std::swap(a[i], a[--gt]);
      } else {
        ++i;
      }
    }
    // Parts: [0, lt) below, [lt, gt) equal at this byte, [gt, n) above.
    const size_t below = lt, equal = gt - lt, above = n - gt;
    if (v < 0) {  // the equal part ended here: one name at most (names are unique)
      SortNames(a, below, depth);
      a += gt;
      n = above;
      continue;
    }
    if (equal >= below && equal >= above) {
      SortNames(a, below, depth);
      SortNames(a + gt, above, depth);
      a += lt;
      n = equal;
      ++depth;
    } else if (below >= above) {
      SortNames(a + lt, equal, depth + 1);
      SortNames(a + gt, above, depth);
      n = below;
    } else {
      SortNames(a, below, depth);
      SortNames(a + lt, equal, depth + 1);
      a += gt;
      n = above;
    }
  }
}

// What a directory without safetensors files holds instead, and what to do about it.
std::string NoSafetensorsHint(FileSystem& fs, const std::string& dir,
                              const std::vector<DirEntry>& entries) {
  std::vector<std::string> distcp, pickles, subdirs, others;
  size_t looked = 0;
  for (const DirEntry& e : entries) {
    if (e.is_dir && !e.is_symlink) {
      if (looked++ >= 64) continue;  // bounded: a run root with thousands of steps
      absl::StatusOr<std::vector<DirEntry>> inner = fs.List(JoinPath(dir, e.name));
      if (inner.ok() && std::any_of(inner->begin(), inner->end(), [](const DirEntry& x) {
            return absl::EndsWith(x.name, ".safetensors") || IsIndexFileName(x.name);
          })) {
        subdirs.push_back(e.name + "/");
      }
    } else if (absl::EndsWith(e.name, ".distcp")) {
      distcp.push_back(e.name);
    } else if (absl::EndsWith(e.name, ".bin") || absl::EndsWith(e.name, ".pt") ||
               absl::EndsWith(e.name, ".pth") || absl::EndsWith(e.name, ".ckpt")) {
      pickles.push_back(e.name);
    } else {
      others.push_back(e.name);
    }
  }
  auto some = [](const std::vector<std::string>& v) {
    std::vector<std::string> q;
    for (size_t i = 0; i < v.size() && i < 3; ++i) q.push_back(internal::Quote(v[i]));
    return absl::StrCat(absl::StrJoin(q, ", "),
                        v.size() > 3 ? absl::StrCat(" and ", v.size() - 3, " more") : "");
  };
  if (!subdirs.empty()) {
    return absl::StrCat("no .safetensors files here, but ", subdirs.size(), " subdirector",
                        subdirs.size() == 1 ? "y holds" : "ies hold", " checkpoints (",
                        some(subdirs), "): open one of them");
  }
  if (!distcp.empty()) {
    return absl::StrCat(
        "no .safetensors files: this is a torch.distributed.checkpoint save in its own .distcp "
        "format (",
        some(distcp),
        "), which safeshard does not read; save with "
        "HuggingFaceStorageWriter, or convert with "
        "torch.distributed.checkpoint.format_utils.dcp_to_torch_save");
  }
  if (!pickles.empty()) {
    return absl::StrCat("no .safetensors files: ", some(pickles), " ",
                        pickles.size() == 1 ? "is" : "are",
                        " PyTorch pickle weights, which safeshard does not read; convert with "
                        "transformers' save_pretrained(..., safe_serialization=True)");
  }
  if (others.empty()) return "no .safetensors files: the directory is empty";
  return absl::StrCat("no .safetensors files: none of its ", others.size(), " entries is one (",
                      some(others), ")");
}

}  // namespace

absl::StatusOr<CheckpointLayout> CheckpointLayout::Scan(FileSystem& fs, const std::string& path,
                                                        const ScanOptions& options) {
  CheckpointLayout ck;
  ck.strict_ = options.strict;
  ASSIGN_OR_RETURN(FileStat st, fs.Stat(path));
  std::vector<std::string> names;
  bool has_manifest = false;
  if (st.is_dir) {
    ck.root_ = path;
    ASSIGN_OR_RETURN(std::vector<DirEntry> entries, fs.List(path));
    // Commit records of a ShardWriter save (".safeshard-commit-RRRRR-of-WWWWW.json") are only
    // there until the rank completing the set publishes the manifest: left over, they mean an
    // unfinished save whose files may mix with an earlier save's.
    std::map<int, std::vector<int>> committed;  // world size -> ranks with a record
    for (const DirEntry& e : entries) {
      int r = 0, w = 0;
      if (absl::StartsWith(e.name, ".safeshard-commit-") && absl::EndsWith(e.name, ".json") &&
          std::sscanf(e.name.c_str(), ".safeshard-commit-%d-of-%d.json", &r, &w) == 2) {
        committed[w].push_back(r);
      }
    }
    for (auto& [w, ranks] : committed) {
      std::sort(ranks.begin(), ranks.end());
      ck.problems_.push_back(
          {ProblemKind::kUnfinishedSave, "", "",
           absl::StrCat("a save by ", w, " ranks is unfinished: rank",
                        ranks.size() == 1 ? " " : "s ", absl::StrJoin(ranks, ", "), " committed, ",
                        w - static_cast<int>(ranks.size()),
                        " did not (still writing, or died); files of an earlier save may be mixed "
                        "in. Finish the save (or remove the .safeshard-commit-* records once "
                        "verified)")});
    }
    for (const DirEntry& e : entries) {
      if (e.name == kManifestFileName) {
        has_manifest = true;  // whatever it is: a directory or FIFO there is an invalid manifest
        continue;
      }
      if (IsTempFileName(e.name)) continue;
      // A directory under a checkpoint file's name is reported (its open fails), not skipped.
      if (e.is_dir && !absl::EndsWith(e.name, kSafetensorsSuffix)) continue;
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
    if (names.empty() && ck.index_file_.empty() && !has_manifest) {
      ck.problems_.push_back(
          {ProblemKind::kNoCheckpoint, "", "", NoSafetensorsHint(fs, path, entries)});
    }
  } else {
    ck.root_ = DirName(path);
    names.push_back(BaseName(path));
  }

  // Headers, several files at a time (remote files: requests overlap; local: parsing does).
  // The sharding info is read there too, into arrays aligned with each header's tensors, so that
  // the chunk loop below does no name lookups.
  struct FileSharding {
    std::optional<std::string> error;
    std::optional<ShardingByTensor> by;  // set for a DCP shard file
  };
  std::vector<FileSharding> sharding(names.size());
  ck.files_.resize(names.size());
  auto read_sharding = [&](size_t i) {
    absl::StatusOr<std::optional<ShardingByTensor>> by =
        ReadShardingByTensor(*ck.files_[i].header, ck.files_[i].name);
    if (!by.ok()) {
      sharding[i].error = std::string(by.status().message());
    } else {
      sharding[i].by = std::move(*by);
    }
  };
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
      read_sharding(i);
    }
  };
  // Remote files: many requests in flight hide the latency. Local files: parsing is the work,
  // so no more threads than cores (each thread's malloc arena keeps what its parses freed: 8
  // threads were 29% of the peak memory of a 1M-tensor scan, at no gain on 2 cores).
  const int threads =
      fs.remote() ? options.header_threads
                  : std::min(options.header_threads,
                             static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  ParallelFor(names.size(), threads, read_one);

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

  // Completion manifest (bounded: its size is checked before it is read).
  if (has_manifest) {
    const std::string mpath = JoinPath(ck.root_, kManifestFileName);
    absl::StatusOr<Manifest> m = [&]() -> absl::StatusOr<Manifest> {
      ASSIGN_OR_RETURN(std::unique_ptr<ReadableFile> f, fs.OpenRead(mpath));
      if (f->size() > kMaxManifestBytes) {
        return absl::DataLossError(absl::StrCat(f->size(), " bytes, over the ", kMaxManifestBytes,
                                                "-byte limit of a completion manifest"));
      }
      std::string text(f->size(), '\0');
      RETURN_IF_ERROR(f->ReadAt(0, text.size(), text.data()));
      return ParseManifest(text, kManifestFileName);
    }();
    if (m.ok()) {
      ck.manifest_ = std::move(*m);
    } else {
      ck.problems_.push_back(
          {ProblemKind::kInvalidManifest, kManifestFileName, "",
           WithoutPathPrefix(std::string(m.status().message()), std::string(kManifestFileName))});
    }
  }

  // Chunks. The map's keys view the tensors' own names (a deque does not move its elements);
  // each file's sharding info is released once its chunks are built.
  absl::flat_hash_map<absl::string_view, size_t> pos;
  std::vector<std::optional<std::vector<uint64_t>>> declared;  // global_shape per tensor
  std::vector<bool> declared_conflict;
  std::deque<TensorLayout> tensors;
  std::vector<uint32_t> dtypes;  // bit d: some chunk has DType d
  static_assert(kNumDTypes <= 32);
  std::vector<std::vector<std::string>> plain_files;  // plain files holding each tensor
  int dcp_files = 0, plain = 0;
  for (size_t fidx = 0; fidx < ck.files_.size(); ++fidx) {
    FileInfo& fi = ck.files_[fidx];
    if (!fi.header) {
      ck.problems_.push_back({ProblemKind::kInvalidFile, fi.name, "",
                              WithoutPathPrefix(*fi.error, JoinPath(ck.root_, fi.name))});
      continue;
    }
    FileSharding& sh = sharding[fidx];
    if (sh.error) {
      fi.error = *sh.error;
      ck.problems_.push_back({ProblemKind::kInvalidFile, fi.name, "",
                              WithoutPathPrefix(*fi.error, JoinPath(ck.root_, fi.name))});
      continue;
    }
    fi.dcp = sh.by.has_value();
    (fi.dcp ? dcp_files : plain)++;
    for (size_t ti = 0; ti < fi.header->tensors.size(); ++ti) {
      const TensorEntry& t = fi.header->tensors[ti];
      const std::string& logical =
          fi.dcp && !sh.by->logical_fqn[ti].empty() ? sh.by->logical_fqn[ti] : t.name;
      auto it = pos.find(logical);
      if (it == pos.end()) {
        tensors.emplace_back();
        tensors.back().name = logical;
        tensors.back().dtype = t.dtype;
        dtypes.push_back(0);
        plain_files.emplace_back();
        declared.emplace_back();
        declared_conflict.push_back(false);
        it = pos.emplace(tensors.back().name, tensors.size() - 1).first;
      }
      TensorLayout& tl = tensors[it->second];
      dtypes[it->second] |= uint32_t{1} << static_cast<int>(t.dtype);
      Chunk c;
      c.file = static_cast<int>(fidx);
      if (logical != t.name) c.key = t.name;
      c.sizes = t.shape;
      if (fi.dcp) {
        c.offsets = std::move(sh.by->saved_offsets[ti]);
      } else {
        c.offsets.assign(t.shape.size(), 0);
      }
      for (size_t d = 0; d < c.offsets.size(); ++d) {
        uint64_t end;
        if (__builtin_add_overflow(c.offsets[d], c.sizes[d], &end)) {
          ck.problems_.push_back(
              {ProblemKind::kOutOfBounds, fi.name, logical,
               absl::StrCat("chunk ", Q(t.name), " at offset ", c.offsets[d], " of size ",
                            c.sizes[d], " in dimension ", d, " ends beyond 2^64")});
          c.offsets[d] = 0;  // keep the global shape finite; the problem blocks everything
        }
      }
      if (fi.dcp && sh.by->global_shape[ti]) {
        const std::vector<uint64_t>& gs = *sh.by->global_shape[ti];
        std::optional<std::vector<uint64_t>>& d = declared[it->second];
        if (!d) {
          d = gs;
        } else if (*d != gs) {
          if (!declared_conflict[it->second]) {
            ck.problems_.push_back(
                {ProblemKind::kGlobalShapeMismatch, fi.name, logical,
                 absl::StrCat("chunk ", Q(t.name), " declares global_shape [",
                              absl::StrJoin(gs, ", "), "] but another chunk declares [",
                              absl::StrJoin(*d, ", "), "]")});
          }
          declared_conflict[it->second] = true;
        }
      }
      c.begin = fi.header->data_start() + t.begin;
      c.end = fi.header->data_start() + t.end;
      if (!fi.dcp) plain_files[it->second].push_back(fi.name);
      tl.chunks.push_back(std::move(c));
    }
    sh.by.reset();
  }
  for (size_t i = 0; i < tensors.size(); ++i) {
    TensorLayout& t = tensors[i];
    size_t before = ck.problems_.size();
    if ((dtypes[i] & (dtypes[i] - 1)) != 0) {  // more than one bit
      std::vector<std::string> ds;
      for (int d = 0; d < kNumDTypes; ++d) {
        if (dtypes[i] & (uint32_t{1} << d)) ds.emplace_back(DTypeName(static_cast<DType>(d)));
      }
      ck.problems_.push_back({ProblemKind::kDTypeMismatch, "", t.name,
                              absl::StrCat("chunks disagree on dtype: ", absl::StrJoin(ds, ", "))});
    }
    if (plain_files[i].size() > 1) {
      ck.problems_.push_back(
          {ProblemKind::kDuplicateTensor, "", t.name,
           absl::StrCat("stored whole in several files: ", absl::StrJoin(plain_files[i], ", "))});
    }
    size_t rank = t.chunks[0].sizes.size();
    bool same_rank = true;
    for (const Chunk& c : t.chunks) same_rank &= c.sizes.size() == rank;
    if (!same_rank) {
      ck.problems_.push_back(
          {ProblemKind::kRankMismatch, "", t.name, "chunks disagree on the number of dimensions"});
    } else if (declared[i] && declared[i]->size() != rank) {
      ck.problems_.push_back({ProblemKind::kGlobalShapeMismatch, "", t.name,
                              absl::StrCat("global_shape [", absl::StrJoin(*declared[i], ", "),
                                           "] has another rank than the chunks (", rank, ")")});
    } else {
      t.shape.assign(rank, 0);
      for (const Chunk& c : t.chunks) {
        for (size_t d = 0; d < rank; ++d) {
          t.shape[d] = std::max(t.shape[d], c.offsets[d] + c.sizes[d]);
        }
      }
      if (declared[i] && !declared_conflict[i]) {
        // The declared shape is the truth: chunks outside it are out of bounds, and a chunk
        // that never arrived (the highest rank's) is a gap.
        t.shape = *declared[i];
        t.declared_shape = true;
      }
      if (plain_files[i].empty() || t.chunks.size() > 1 || t.declared_shape) {
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
      size_t absent = 0;
      for (int r = 1; r <= r_max; ++r) {
        if (ranks.count(r)) continue;
        if (missing.size() < 16) missing.push_back(r);
        ++absent;
      }
      ck.problems_.push_back(
          {ProblemKind::kShardRanks, "", "",
           absl::StrCat("shard rank indices are not dense 1..", r_max, ": missing shard-",
                        absl::StrJoin(missing, ", shard-"),
                        absent > missing.size()
                            ? absl::StrCat(" and ", absent - missing.size(), " more")
                            : std::string(),
                        " (", absent == 1 ? "a rank's file is" : "ranks' files are", " absent)")});
    }
    if (counts.size() > 1) {
      ck.problems_.push_back({ProblemKind::kShardFileCount, "", "",
                              absl::StrCat("shard files disagree on the model file count: -of-",
                                           absl::StrJoin(counts, ", -of-"))});
    }
  }

  // Plain "model-0000i-of-0000N" files without an index: every i in 1..N must be here (when a
  // directory was scanned; a single file named by its path is judged alone).
  if (!ck.index_ && plain > 0 && st.is_dir) {
    std::set<int> idxs;
    std::set<int> ns;
    bool all_named = true;
    for (const FileInfo& f : ck.files_) {
      if (!f.header || f.dcp) continue;
      absl::StatusOr<FileIndex> idx = ParseFileIndex(f.name);
      if (!idx.ok() || idx->shard || idx->count < 1) {
        all_named = false;
        continue;
      }
      idxs.insert(idx->index);
      ns.insert(idx->count);
    }
    if (all_named && ns.size() == 1 && *ns.begin() > 1) {
      std::vector<int> missing;
      for (int i = 1; i <= *ns.begin() && missing.size() < 16; ++i) {
        if (!idxs.count(i)) missing.push_back(i);
      }
      if (!missing.empty()) {
        ck.problems_.push_back(
            {ProblemKind::kModelFileCount, "", "",
             absl::StrCat("the file names say -of-", *ns.begin(), " but file",
                          missing.size() == 1 ? " " : "s ", absl::StrJoin(missing, ", "), " of ",
                          *ns.begin(), " ", missing.size() == 1 ? "is" : "are",
                          " absent (and there is no index json)")});
      }
    }
  }

  // The completion manifest: every listed file present with its size, nothing unlisted, and the
  // shard files' ranks exactly 1..ranks.
  if (ck.manifest_ && ck.manifest_->kind == kManifestKindConsolidated && dcp_files > 0) {
    ck.problems_.push_back({ProblemKind::kInvalidManifest, kManifestFileName, "",
                            "says kind \"consolidated\" but the directory holds per-rank DCP "
                            "shards; it was not written for these files"});
  }
  if (ck.manifest_ && ck.manifest_->kind == kManifestKindConsolidated && ck.index_file_.empty() &&
      st.is_dir) {
    // Consolidation publishes its manifest, then its index last: a manifest without the index
    // is an output whose writer stopped before it finished.
    ck.problems_.push_back({ProblemKind::kManifestMissingFile, std::string(kIndexFileName), "",
                            "absent, while safeshard.complete.json describes a consolidated "
                            "output: the consolidation that wrote it did not finish (the index is "
                            "published last)"});
  }
  if (ck.manifest_) {
    const Manifest& m = *ck.manifest_;
    std::map<std::string, const FileInfo*> by_name;
    for (const FileInfo& f : ck.files_) by_name[f.name] = &f;
    for (const ManifestFile& mf : m.files) {
      auto f = by_name.find(mf.name);
      if (f == by_name.end()) {
        ck.problems_.push_back({ProblemKind::kManifestMissingFile, mf.name, "",
                                absl::StrCat("listed in ", kManifestFileName, " (", mf.size,
                                             " bytes) but absent: its tensors are lost")});
      } else if (f->second->size != mf.size) {
        ck.problems_.push_back(
            {ProblemKind::kManifestFileSize, mf.name, "",
             absl::StrCat("is ", f->second->size, " bytes but ", kManifestFileName, " says ",
                          mf.size, f->second->size < mf.size ? " (truncated)" : "")});
      }
    }
    for (const FileInfo& f : ck.files_) {
      if (m.Find(f.name) == nullptr) {
        ck.problems_.push_back({ProblemKind::kManifestUnlisted, f.name, "",
                                absl::StrCat("not listed in ", kManifestFileName,
                                             ": it was not part of the save the manifest "
                                             "completed (a leftover, or a file added later)")});
      }
    }
    if (m.ranks) {
      std::vector<int> missing;
      for (int r = 1; r <= *m.ranks && missing.size() < 16; ++r) {
        if (!ranks.count(r)) missing.push_back(r - 1);
      }
      std::vector<int> extra;
      for (int r : ranks) {
        if (r > *m.ranks) extra.push_back(r - 1);
      }
      if (!missing.empty() || !extra.empty()) {
        std::string msg =
            absl::StrCat(kManifestFileName, " says ", *m.ranks, " rank", *m.ranks == 1 ? "" : "s");
        if (!missing.empty()) {
          absl::StrAppend(&msg, "; no shard file of rank ", absl::StrJoin(missing, ", "));
        }
        if (!extra.empty()) {
          absl::StrAppend(&msg, "; shard files of rank ", absl::StrJoin(extra, ", "),
                          " are beyond it");
        }
        ck.problems_.push_back({ProblemKind::kManifestRanks, "", "", msg});
      }
    }
  }

  // The expected rank count (e.g. the training job's world size).
  if (options.expect_ranks > 0) {
    std::vector<int> missing;
    for (int r = 1; r <= options.expect_ranks && missing.size() < 16; ++r) {
      if (!ranks.count(r)) missing.push_back(r - 1);
    }
    std::vector<int> extra;
    for (int r : ranks) {
      if (r > options.expect_ranks) extra.push_back(r - 1);
    }
    if (!missing.empty() || !extra.empty()) {
      std::string msg = absl::StrCat("expected ", options.expect_ranks, " rank",
                                     options.expect_ranks == 1 ? "" : "s", ", found ", ranks.size(),
                                     " with shard files");
      if (!missing.empty()) absl::StrAppend(&msg, "; missing rank ", absl::StrJoin(missing, ", "));
      if (!extra.empty()) absl::StrAppend(&msg, "; unexpected rank ", absl::StrJoin(extra, ", "));
      ck.problems_.push_back({ProblemKind::kExpectedRanks, "", "", msg});
    }
  }

  // By name: an index sort, then one move per tensor (sorting the structs moved each ~log n times).
  // The names are copied into one buffer first: the sort then reads a few MiB of contiguous
  // memory instead of heap-allocated names scattered among the chunks.
  size_t name_bytes = 0;
  for (const TensorLayout& t : tensors) name_bytes += t.name.size();
  std::string names_buf;
  names_buf.reserve(name_bytes);
  std::vector<NameIndex> order(tensors.size());
  for (size_t i = 0; i < order.size(); ++i) {
    const size_t at = names_buf.size();
    names_buf += tensors[i].name;
    order[i] = {absl::string_view(names_buf).substr(at), static_cast<uint32_t>(i)};
  }
  SortNames(order.data(), order.size(), 0);
  ck.tensors_.reserve(tensors.size());
  for (const auto& [name, i] : order) ck.tensors_.push_back(std::move(tensors[i]));
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
  ck.expect_ranks_ = options.expect_ranks;
  ck.single_path_ = !st.is_dir;
  ck.FindQuantized(fs, options.quant_block);
  ck.DecideCompleteness();
  return ck;
}

void CheckpointLayout::FindQuantized(FileSystem& fs, std::optional<quant::BlockSize> given) {
  bool any = false;
  for (const TensorLayout& t : tensors_) {
    any |= absl::EndsWith(t.name, "_scale_inv") || absl::EndsWith(t.name, "_blocks");
  }
  if (!any) return;
  quant::BlockSize block;
  if (given) {
    block = *given;
  } else {
    // config.json beside the checkpoint (or beside the file scanned) says the FP8 block size
    // (DeepSeek: quantization_config.weight_block_size).
    const std::string path = JoinPath(root_, "config.json");
    absl::StatusOr<std::unique_ptr<ReadableFile>> f = fs.OpenRead(path);
    if (f.ok() && (*f)->size() <= (16u << 20)) {
      std::string text((*f)->size(), '\0');
      if (text.empty() || (*f)->ReadAt(0, text.size(), text.data()).ok()) {
        absl::StatusOr<std::optional<quant::BlockSize>> b = quant::BlockSizeFromConfig(text);
        if (!b.ok()) {
          problems_.push_back(
              {ProblemKind::kQuantization, "config.json", "", std::string(b.status().message())});
        } else if (b->has_value()) {
          block = **b;
        }
      }
    }
  }
  std::vector<quant::TensorDesc> descs;
  for (const TensorLayout& t : tensors_) descs.push_back({t.name, t.dtype, t.shape});
  quant::Pairing p = quant::FindPairs(descs, block);
  for (quant::PairProblem& q : p.problems) {
    problems_.push_back({q.blocking ? ProblemKind::kQuantization : ProblemKind::kUnpairedScale, "",
                         std::move(q.tensor), std::move(q.message)});
  }
  bool fp8_pairs = false;
  for (const quant::QuantPair& q : p.pairs) fp8_pairs |= q.scheme == quant::Scheme::kBlockFp8;
  if (fp8_pairs) {
    for (const std::string& w : p.unscaled_fp8) {
      problems_.push_back(
          {ProblemKind::kUnscaledFp8, "", w,
           absl::StrCat("FP8 weight without a block scale ", internal::Quote(w + "_scale_inv"),
                        " (other FP8 weights have one): it cannot be "
                        "dequantized; was the scale lost?")});
    }
  }
  quantized_ = std::move(p.pairs);
  for (size_t i = 0; i < quantized_.size(); ++i) {
    quant_of_[quantized_[i].weight] = i;
    quant_of_[quantized_[i].scale] = i;
  }
}

const quant::QuantPair* CheckpointLayout::QuantPairOf(absl::string_view tensor) const {
  auto it = quant_of_.find(tensor);
  return it == quant_of_.end() ? nullptr : &quantized_[it->second];
}

void CheckpointLayout::DecideCompleteness() {
  Completeness c;
  problems_.erase(std::remove_if(problems_.begin(), problems_.end(),
                                 [](const Problem& p) { return p.kind == ProblemKind::kUnproven; }),
                  problems_.end());
  auto has = [&](std::initializer_list<ProblemKind> kinds) {
    for (const Problem& p : problems_) {
      for (ProblemKind k : kinds) {
        if (p.kind == k) return true;
      }
    }
    return false;
  };
  if (manifest_ && !has({ProblemKind::kManifestMissingFile, ProblemKind::kManifestFileSize,
                         ProblemKind::kManifestUnlisted, ProblemKind::kManifestRanks,
                         ProblemKind::kInvalidManifest})) {
    c.by.push_back(kManifestFileName);
  }
  if (reference_matched_) c.by.push_back("the reference model");
  const bool per_rank = kind_ == CheckpointKind::kDcpSharded || kind_ == CheckpointKind::kMixed;
  if (per_rank) {
    if (expect_ranks_ > 0 && !has({ProblemKind::kExpectedRanks})) {
      c.by.push_back(absl::StrCat("the expected rank count (", expect_ranks_, ")"));
    }
    // global_shape proves each tensor that is present is fully covered, but not that no tensor
    // is missing: one saved only by a lost rank (a replicated tensor, say) leaves no trace.
    bool all_declared = !tensors_.empty();
    for (const TensorLayout& t : tensors_) all_declared &= t.declared_shape;
    if (c.by.empty()) {
      c.unproven = absl::StrCat(
          "the checkpoint's completeness cannot be proven: a lost highest rank leaves no trace "
          "in the other ranks' files",
          all_declared ? " (global_shape shows every tensor present is fully covered, but a "
                         "tensor saved only by a lost rank would be missing unseen)"
                       : " (nor does a lost chunk at the end of a tensor)",
          ", and there is no ", kManifestFileName,
          " and no expected rank count. Prove it with --expect-ranks N (the job's world size) "
          "or --reference MODEL_DIR");
    }
  } else if (kind_ == CheckpointKind::kHfSharded || kind_ == CheckpointKind::kSingleFile) {
    if (index_ && !has({ProblemKind::kInvalidIndex})) c.by.push_back(index_file_);
    bool named = true;
    int n = 0;
    for (const FileInfo& f : files_) {
      absl::StatusOr<FileIndex> idx = ParseFileIndex(f.name);
      named &= idx.ok() && !idx->shard && idx->count >= 1 && (n == 0 || n == idx->count);
      if (idx.ok()) n = idx->count;
    }
    if (!index_ && named && !single_path_ && !has({ProblemKind::kModelFileCount}) &&
        static_cast<int>(files_.size()) == n) {
      c.by.push_back(absl::StrCat("the file names (-of-", n, ")"));
    }
    if (c.by.empty() && kind_ == CheckpointKind::kSingleFile) {
      c.by.push_back("the file's own header (a single file)");
    }
    if (c.by.empty()) {
      c.unproven =
          absl::StrCat(files_.size(),
                       " plain safetensors files with no index json and no -of-N names: a "
                       "lost file would leave no trace. Prove it with --reference MODEL_DIR");
    }
  } else {
    c.unproven = "no safetensors files";
  }
  // A checkpoint with a blocking problem is not complete, whatever else says so.
  bool blocked = false;
  for (const Problem& p : problems_) blocked |= IsBlocking(p.kind);
  if (blocked) {
    c.by.clear();
    c.unproven = "the checkpoint has blocking problems (listed with it): it is not complete";
  }
  c.proven = c.unproven.empty();
  if (strict_ && !c.proven && !blocked) {
    problems_.push_back({ProblemKind::kUnproven, "", "", c.unproven});
  }
  completeness_ = std::move(c);
}

void CheckpointLayout::CheckAgainstReference(const CheckpointLayout& ref) {
  size_t reported = 0, differences = 0;
  auto add = [&](const std::string& tensor, std::string msg) {
    ++differences;
    if (reported++ < 50) problems_.push_back({ProblemKind::kReference, "", tensor, std::move(msg)});
  };
  for (const TensorLayout& r : ref.tensors()) {
    const TensorLayout* t = FindTensor(r.name);
    if (t == nullptr) {
      add(r.name, absl::StrCat("in the reference model (", DTypeName(r.dtype), " [",
                               absl::StrJoin(r.shape, ", "), "]) but not in this checkpoint"));
    } else if (t->shape != r.shape) {
      add(r.name, absl::StrCat("shape [", absl::StrJoin(t->shape, ", "),
                               "] but the reference has [", absl::StrJoin(r.shape, ", "), "]",
                               t->declared_shape ? "" : " (a trailing chunk may be lost)"));
    }
  }
  for (const TensorLayout& t : tensors_) {
    if (ref.FindTensor(t.name) == nullptr) add(t.name, "not in the reference model");
  }
  if (differences > reported) {
    problems_.push_back(
        {ProblemKind::kReference, "", "",
         absl::StrCat(differences - reported, " more differences from the reference model")});
  }
  reference_matched_ = differences == 0 && !ref.tensors().empty();
  DecideCompleteness();
}

bool CheckpointLayout::HasBlockingProblem() const {
  for (const Problem& p : problems_) {
    if (IsBlocking(p.kind)) return true;
  }
  return false;
}

}  // namespace safeshard

namespace safeshard {

absl::StatusOr<ManifestFile> ChecksumFile(ReadableFile& file, const Header& header,
                                          bool second_thread) {
  ManifestFile out;
  out.size = file.size();
  ContentHasher whole;
  constexpr uint64_t kBlock = 8 << 20;
  std::string buf;
  // A local file is hashed straight from its mapping (the page cache, no copy into a buffer:
  // a fifth of a tmpfs consolidation's time was that copy); a truncation meanwhile is an error
  // naming the file, not a SIGBUS.
  std::shared_ptr<const MappedRegion> mapped;
  if (!file.remote() && file.size() > 0) {
    absl::StatusOr<std::shared_ptr<const MappedRegion>> m = file.Map();
    if (m.ok()) mapped = *m;
  }
  // Feeds bytes [begin, end) of the file to `whole` and to `part` (if any), block by block.
  auto feed = [&](uint64_t begin, uint64_t end, ContentHasher* part) -> absl::Status {
    for (uint64_t pos = begin; pos < end;) {
      const uint64_t n = std::min(kBlock, end - pos);
      if (mapped != nullptr) {
        const absl::string_view all = mapped->data();
        if (pos + n > all.size()) {
          return absl::DataLossError(
              absl::StrCat("the file ends at byte ", all.size(), ", before byte ", pos + n));
        }
        const absl::string_view piece = all.substr(pos, n);
        RETURN_IF_ERROR(GuardMappedAccess(file.path(), pos, [&] {
          whole.Update(piece);
          if (part != nullptr) part->Update(piece);
        }));
      } else {
        buf.resize(n);
        RETURN_IF_ERROR(file.ReadAt(pos, n, buf.data()));
        whole.Update(buf);
        if (part != nullptr) part->Update(buf);
      }
      pos += n;
    }
    return absl::OkStatus();
  };
  const uint64_t base = header.tensors.empty() ? 0 : header.data_start();
  uint64_t pos = 0;
  auto fail = [&](const absl::Status& s, absl::string_view what) {
    return absl::Status(s.code(), absl::StrCat(file.path(), ": reading ", what, ": ", s.message()));
  };
  if (base > file.size()) {
    return absl::DataLossError(absl::StrCat(file.path(), ": ", file.size(),
                                            " bytes, shorter than its header (", base, ")"));
  }
  if (second_thread && mapped != nullptr && file.size() >= (64u << 20) &&
      mapped->data().size() == file.size()) {
    // Large local file: the whole-file hash on a second thread while this one hashes the
    // tensors (one XXH3 stream cannot be split; two independent ones can run side by side).
    for (const TensorEntry& t : header.tensors) {
      if (base + t.end > file.size() || base + t.begin != pos + base) {
        return absl::DataLossError(
            absl::StrCat(file.path(), ": tensor ", Q(t.name), " bytes [", base + t.begin, ", ",
                         base + t.end, ") do not follow byte ", pos + base, " in a file of ",
                         file.size(), " bytes (it changed)"));
      }
      pos = t.end;
    }
    const absl::string_view all = mapped->data();
    absl::Status whole_status;
    auto hash_whole = [&] {
      for (uint64_t at = 0; at < all.size() && whole_status.ok(); at += kBlock) {
        const absl::string_view piece = all.substr(at, kBlock);
        whole_status = GuardMappedAccess(file.path(), at, [&] { whole.Update(piece); });
      }
    };
    std::thread whole_thread;
    try {
      whole_thread = std::thread(hash_whole);
    } catch (const std::system_error&) {
      hash_whole();  // no thread to be had: one after the other
    }
    absl::Status parts_status;
    for (const TensorEntry& t : header.tensors) {
      ContentHasher part;
      for (uint64_t at = base + t.begin; at < base + t.end && parts_status.ok(); at += kBlock) {
        const absl::string_view piece = all.substr(at, std::min(kBlock, base + t.end - at));
        parts_status = GuardMappedAccess(file.path(), at, [&] { part.Update(piece); });
      }
      if (!parts_status.ok()) break;
      out.tensor_xxh3.push_back(part.Digest());
    }
    if (whole_thread.joinable()) whole_thread.join();
    if (!parts_status.ok()) return fail(parts_status, "its tensors");
    if (!whole_status.ok()) return fail(whole_status, "the file");
    out.xxh3 = whole.Digest();
    return out;
  }
  if (absl::Status s = feed(0, base, nullptr); !s.ok()) return fail(s, "the header");
  pos = base;
  for (const TensorEntry& entry : header.tensors) {  // in data order, as every Header keeps them
    const TensorEntry* t = &entry;
    if (base + t->end > file.size() || base + t->begin != pos) {
      return absl::DataLossError(absl::StrCat(
          file.path(), ": tensor ", Q(t->name), " bytes [", base + t->begin, ", ", base + t->end,
          ") do not follow byte ", pos, " in a file of ", file.size(), " bytes (it changed)"));
    }
    ContentHasher part;
    if (absl::Status s = feed(pos, base + t->end, &part); !s.ok()) {
      return fail(s, absl::StrCat("tensor ", Q(t->name)));
    }
    out.tensor_xxh3.push_back(part.Digest());
    pos = base + t->end;
  }
  if (absl::Status s = feed(pos, file.size(), nullptr); !s.ok()) return fail(s, "trailing bytes");
  out.xxh3 = whole.Digest();
  return out;
}

absl::StatusOr<ChecksumReport> VerifyChecksums(FileSystem& fs, const CheckpointLayout& layout) {
  ChecksumReport r;
  if (!layout.manifest()) {
    return absl::FailedPreconditionError(
        absl::StrCat(layout.root(), ": no valid ", kManifestFileName,
                     " here, so there are no recorded checksums to compare with"));
  }
  // Problems name logical tensors: (file, physical key) -> logical name.
  std::map<std::pair<int, std::string>, std::string> logical;
  for (const TensorLayout& t : layout.tensors()) {
    for (const Chunk& c : t.chunks) {
      if (!c.key.empty()) logical[{c.file, c.key}] = t.name;
    }
  }
  auto logical_of = [&](int file, const std::string& key) {
    auto it = logical.find({file, key});
    return it == logical.end() ? key : it->second;
  };
  for (const ManifestFile& mf : layout.manifest()->files) {
    const FileInfo* info = nullptr;
    int file_index = -1;
    for (size_t i = 0; i < layout.files().size(); ++i) {
      if (layout.files()[i].name == mf.name) {
        info = &layout.files()[i];
        file_index = static_cast<int>(i);
      }
    }
    if (info == nullptr) continue;  // reported as manifest_missing_file
    if (!mf.xxh3) {
      r.unchecked.push_back(mf.name);
      continue;
    }
    const std::string path = JoinPath(layout.root(), mf.name);
    ASSIGN_OR_RETURN(std::unique_ptr<ReadableFile> f, fs.OpenRead(path));
    Header empty;
    const Header& h = info->header ? *info->header : empty;
    absl::StatusOr<ManifestFile> got = ChecksumFile(*f, h);
    if (!got.ok()) {
      r.problems.push_back(
          {ProblemKind::kChecksum, mf.name, "", std::string(got.status().message())});
      continue;
    }
    r.bytes += got->size;
    const std::vector<TensorEntry>& order = h.tensors;  // in data order, as every Header keeps them
    if (info->header && !mf.tensor_xxh3.empty() && mf.tensor_xxh3.size() != order.size()) {
      r.problems.push_back(
          {ProblemKind::kChecksum, mf.name, "",
           absl::StrCat("the manifest records ", mf.tensor_xxh3.size(),
                        " tensor checksums but the file holds ", order.size(), " tensors")});
    }
    if (got->xxh3 == mf.xxh3) continue;
    size_t named = 0;
    if (info->header && mf.tensor_xxh3.size() == order.size() &&
        got->tensor_xxh3.size() == order.size()) {
      for (size_t i = 0; i < order.size(); ++i) {
        if (got->tensor_xxh3[i] == mf.tensor_xxh3[i]) continue;
        ++named;
        r.problems.push_back(
            {ProblemKind::kChecksum, mf.name, logical_of(file_index, order[i].name),
             absl::StrCat("bytes [", h.data_start() + order[i].begin, ", ",
                          h.data_start() + order[i].end, ") have XXH3-64 ",
                          ChecksumHex(got->tensor_xxh3[i]), " but the manifest recorded ",
                          ChecksumHex(mf.tensor_xxh3[i]),
                          ": the tensor's data changed after it was written")});
      }
    }
    if (named == 0) {
      r.problems.push_back(
          {ProblemKind::kChecksum, mf.name, "",
           absl::StrCat("the file's XXH3-64 is ", ChecksumHex(*got->xxh3),
                        " but the manifest recorded ", ChecksumHex(*mf.xxh3),
                        info->header && mf.tensor_xxh3.size() == order.size()
                            ? absl::StrCat(" (every tensor matches: the header, bytes [0, ",
                                           h.data_start(), "), changed)")
                            : std::string())});
    }
  }
  return r;
}

absl::StatusOr<std::vector<std::string>> ReplaceableResult(FileSystem& out_dir,
                                                           const std::string& shown) {
  ASSIGN_OR_RETURN(std::vector<DirEntry> entries, out_dir.List(""));
  std::set<std::string> claimed;
  std::vector<std::string> indexes, files;
  bool manifest = false;
  auto refuse = [&](const std::string& name, absl::string_view why) {
    return absl::FailedPreconditionError(absl::StrCat(
        shown, " holds ", internal::Quote(name), ", ", why,
        ": it is never replaced (not even with --overwrite); move it away or choose another "
        "output directory"));
  };
  for (const DirEntry& e : entries) {
    if (IsTempFileName(e.name)) continue;
    if (IsIndexFileName(e.name)) {
      indexes.push_back(e.name);
      absl::StatusOr<std::string> text = out_dir.ReadAll(e.name);
      absl::StatusOr<IndexJson> idx = text.ok() ? ParseIndexJson(*text, e.name) : text.status();
      if (idx.ok()) {
        for (const auto& [tensor, file] : idx->weight_map) claimed.insert(file);
      }
    } else if (e.name == kManifestFileName) {
      absl::StatusOr<std::string> text = out_dir.ReadAll(e.name);
      absl::StatusOr<Manifest> m = text.ok() ? ParseManifest(*text, e.name) : text.status();
      if (m.ok() && m->kind == kManifestKindShards) {
        return refuse(e.name, "the completion manifest of per-rank shards (a checkpoint's source)");
      }
      if (m.ok()) {
        for (const ManifestFile& f : m->files) claimed.insert(f.name);
      }
      manifest = true;
    }
  }
  // model.safetensors, model-IIIII-of-NNNNN.safetensors and the diffusers equivalents.
  auto model_name = [](absl::string_view n) {
    auto digits = [](absl::string_view d) {
      return std::all_of(d.begin(), d.end(), [](char c) { return c >= '0' && c <= '9'; });
    };
    for (absl::string_view stem : {"diffusion_pytorch_model", "model"}) {
      absl::string_view r = n;
      if (!absl::ConsumePrefix(&r, stem)) continue;
      if (r == kSafetensorsSuffix) return true;
      if (r.size() == 27 && r[0] == '-' && digits(r.substr(1, 5)) && r.substr(6, 4) == "-of-" &&
          digits(r.substr(10, 5)) && r.substr(15) == kSafetensorsSuffix) {
        return true;
      }
    }
    return false;
  };
  for (const DirEntry& e : entries) {
    if (IsTempFileName(e.name) || !absl::EndsWith(e.name, kSafetensorsSuffix)) continue;
    if (e.is_dir || e.is_symlink) return refuse(e.name, "which is not a regular file");
    if (absl::StatusOr<FileIndex> idx = ParseFileIndex(e.name); idx.ok() && idx->shard) {
      return refuse(e.name, "a per-rank shard (a checkpoint's source)");
    }
    absl::StatusOr<Header> h = ReadHeader(out_dir, e.name);
    if (h.ok() && h->metadata.count(std::string(kShardingInfoKey))) {
      return refuse(e.name, "a per-rank shard (its header carries DCP_SHARDING_INFO)");
    }
    if (!claimed.count(e.name) && !model_name(e.name)) {
      return refuse(e.name,
                    "which no earlier result claims (neither its index nor its manifest "
                    "names it, nor is it named like a model file)");
    }
    files.push_back(e.name);
  }
  std::vector<std::string> out = indexes;
  if (manifest) out.push_back(std::string(kManifestFileName));
  out.insert(out.end(), files.begin(), files.end());
  return out;
}

absl::StatusOr<std::vector<std::string>> ClearEarlierResult(FileSystem& out_dir,
                                                            const std::string& shown,
                                                            bool overwrite) {
  ASSIGN_OR_RETURN(std::vector<std::string> old, ReplaceableResult(out_dir, shown));
  for (const std::string& n : old) {
    if (!overwrite && n != kManifestFileName) {
      return absl::AlreadyExistsError(absl::StrCat(shown, " already holds a checkpoint (",
                                                   internal::Quote(n),
                                                   "); pass --overwrite to replace it"));
    }
  }
  ASSIGN_OR_RETURN(std::vector<std::string> cleaned, CleanStaleTempFiles(out_dir, ""));
  // Index first (the old result stops being "finished"), then its manifest (which would still
  // prove the old files complete), then its files: a run that fails or is killed from here on
  // leaves nothing that looks like a whole checkpoint.
  for (const std::string& n : old) RETURN_IF_ERROR(out_dir.Remove(n));
  if (!old.empty()) RETURN_IF_ERROR(out_dir.SyncDir(""));
  return cleaned;
}

absl::Status CheckOutputIsNotInput(FileSystem& fs, const CheckpointLayout& input,
                                   const std::string& output_dir) {
  if (SameDirectory(fs, input.root(), output_dir) ||
      DirName(JoinPath(output_dir, "x")) == DirName(JoinPath(input.root(), "x"))) {
    return absl::InvalidArgumentError(
        absl::StrCat(output_dir, ": the output directory is the input directory ", input.root(),
                     "; inputs are never modified (choose another output directory)"));
  }
  // An input file may live in OUT under another name (IN/x -> ../OUT/x symlinks, as in the HF
  // cache's snapshots/ and blobs/): replacing or removing OUT's files would destroy it.
  if (!fs.local()) return absl::OkStatus();
  std::set<std::pair<dev_t, ino_t>> inputs;
  for (const FileInfo& f : input.files()) {
    struct stat st;
    if (::stat(JoinPath(input.root(), f.name).c_str(), &st) == 0)
      inputs.insert({st.st_dev, st.st_ino});
  }
  absl::StatusOr<std::vector<DirEntry>> entries = fs.List(output_dir);
  if (!entries.ok()) return absl::OkStatus();  // not there yet
  for (const DirEntry& e : *entries) {
    struct stat st;
    const std::string path = JoinPath(output_dir, e.name);
    if (::lstat(path.c_str(), &st) == 0 && inputs.count({st.st_dev, st.st_ino})) {
      return absl::InvalidArgumentError(
          absl::StrCat(output_dir, ": holds ", e.name,
                       ", which is one of the input files (reached from ", input.root(),
                       " through a link); inputs are never modified (choose another output "
                       "directory)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace safeshard
