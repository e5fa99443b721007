#include "core/dcp/hf_storage_reader.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <optional>
#include <set>
#include <thread>

#include <map>
#include "absl/synchronization/mutex.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/dcp/hf_storage_writer.h"
#include "core/io/filesystem.h"
#include "core/io/sigbus_guard.h"
#include "core/io/url.h"
#include "core/layout/box_copy.h"
#include "core/layout/layout.h"
#include "core/util/parallel.h"
#include "core/util/status_macros.h"

namespace safeshard {
namespace {

// Remote reads: ranges closer than this are fetched as one request (a round trip costs about as
// much as this many bytes on a fast link); at least this many fetch threads.
constexpr uint64_t kCoalesceBytes = 256 << 10;
constexpr int kMinFetchThreads = 8;

// Large ranges are fetched as pieces of at most this size, in parallel.
constexpr uint64_t kFetchPiece = 16 << 20;

struct Fetched {
  int file;
  uint64_t begin, end;           // absolute bytes in the file
  std::unique_ptr<char[]> data;  // end - begin bytes (not zero-filled first)
};

// The bytes of chunk `c` that request `r` needs, as whole rows of the chunk's first dimension
// (a contiguous range): [begin, end) in the file; nullopt when the request misses the chunk.
std::optional<std::pair<uint64_t, uint64_t>> NeededRows(const TensorLayout& t, const Chunk& c,
                                                        const LoadRequest& r) {
  const size_t rank = t.shape.size();
  if (static_cast<size_t>(r.dest.dim()) != rank || c.offsets.size() != rank) return std::nullopt;
  if (rank == 0) return std::make_pair(c.begin, c.end);
  for (size_t d = 0; d < rank; ++d) {
    const int64_t off = r.offsets.empty() ? 0 : r.offsets[d];
    const int64_t lo = std::max<int64_t>(off, static_cast<int64_t>(c.offsets[d]));
    const int64_t hi = std::min<int64_t>(off + r.dest.size(static_cast<int64_t>(d)),
                                         static_cast<int64_t>(c.offsets[d] + c.sizes[d]));
    if (lo >= hi) return std::nullopt;
  }
  uint64_t row = BitsOf(t.dtype) / 8;
  for (size_t d = 1; d < rank; ++d) row *= c.sizes[d];
  const int64_t off0 = r.offsets.empty() ? 0 : r.offsets[0];
  const uint64_t lo0 =
      static_cast<uint64_t>(std::max<int64_t>(off0, static_cast<int64_t>(c.offsets[0]))) -
      c.offsets[0];
  const uint64_t hi0 =
      static_cast<uint64_t>(std::min<int64_t>(off0 + r.dest.size(0),
                                              static_cast<int64_t>(c.offsets[0] + c.sizes[0]))) -
      c.offsets[0];
  return std::make_pair(c.begin + lo0 * row, c.begin + hi0 * row);
}

// Where the rows NeededRows() gives land in the destination when they are contiguous there too
// (the chunk and the destination span the same full extent in every dimension but the first,
// the destination is contiguous and of the stored dtype); nullptr otherwise.
char* DirectDestination(const TensorLayout& t, const Chunk& c, const LoadRequest& r) {
  const size_t rank = t.shape.size();
  if (rank == 0 || !r.dest.is_contiguous() || static_cast<size_t>(r.dest.dim()) != rank)
    return nullptr;
  absl::StatusOr<DType> want = DTypeOfTorch(r.dest.scalar_type());
  if (!want.ok() || (*want != t.dtype && !(IsFloat8(t.dtype) && *want == DType::kU8)))
    return nullptr;
  for (size_t d = 1; d < rank; ++d) {
    const int64_t off = r.offsets.empty() ? 0 : r.offsets[d];
    if (off != static_cast<int64_t>(c.offsets[d]) ||
        r.dest.size(static_cast<int64_t>(d)) != static_cast<int64_t>(c.sizes[d])) {
      return nullptr;
    }
  }
  const int64_t off0 = r.offsets.empty() ? 0 : r.offsets[0];
  const int64_t lo0 = std::max<int64_t>(off0, static_cast<int64_t>(c.offsets[0]));
  const int64_t row = r.dest.numel() / std::max<int64_t>(1, r.dest.size(0)) * r.dest.element_size();
  return static_cast<char*>(r.dest.data_ptr()) + (lo0 - off0) * row;
}

}  // namespace

HfStorageReader::HfStorageReader(std::string path, const KeyMap* key_map, int thread_count,
                                 FileSystem* fs, std::string token)
    : path_(std::move(path)),
      key_map_(key_map),
      threads_(std::max(1, thread_count)),
      fs_(fs != nullptr ? fs : &LocalFileSystem()) {
  if (fs == nullptr && !UrlScheme(path_).empty()) {
    UrlOptions o;
    o.token = std::move(token);
    absl::StatusOr<ResolvedPath> where = ResolveUrl(path_, o);
    if (where.ok()) {
      owned_fs_ = where->fs;
      fs_ = owned_fs_.get();
      path_ = where->path;
    } else {
      fs_status_ = where.status();
    }
  }
}

HfStorageReader::~HfStorageReader() = default;

std::string HfStorageReader::Fingerprint() const {
  std::string fp;
  absl::StatusOr<FileStat> st = fs_->Stat(path_);
  if (!st.ok()) return fp;
  if (!st->is_dir) return absl::StrCat(st->size, ":", st->mtime_ns);
  absl::StatusOr<std::vector<DirEntry>> entries = fs_->List(path_);
  if (!entries.ok()) return fp;
  // One stat per file, several at once (each is a round trip on a remote file system).
  std::vector<std::string> parts(entries->size());
  ParallelFor(entries->size(), 8, [&](size_t i) {
    const DirEntry& e = (*entries)[i];
    absl::StatusOr<FileStat> f = fs_->Stat(JoinPath(path_, e.name));
    if (f.ok()) parts[i] = absl::StrCat(e.name, ":", f->size, ":", f->mtime_ns, ";");
  });
  for (const std::string& p : parts) fp += p;
  return fp;
}

absl::StatusOr<const CheckpointLayout*> HfStorageReader::ReadMetadata() {
  if (!fs_status_.ok()) return fs_status_;
  std::string fp = Fingerprint();
  if (layout_ && fp == fingerprint_) return layout_.get();
  ScanOptions so;
  so.quant_block = quant_block_;
  absl::StatusOr<CheckpointLayout> ck = CheckpointLayout::Scan(*fs_, path_, so);
  if (!ck.ok()) return ck.status();
  for (const Problem& p : ck->problems()) {
    if (IsBlocking(p.kind)) {  // not: an index missing a tensor, a total, an unscaled FP8
      return absl::FailedPreconditionError(
          absl::StrCat(path_, ": cannot load from an inconsistent checkpoint: ", p.ToString()));
    }
  }
  layout_ = std::make_unique<CheckpointLayout>(std::move(*ck));
  fingerprint_ = fp;
  files_.clear();
  maps_.clear();
  files_.resize(layout_->files().size());
  maps_.resize(layout_->files().size());
  ++metadata_reads_;
  return layout_.get();
}

absl::StatusOr<ReadableFile*> HfStorageReader::Source(int file) {
  if (!files_[file]) {
    std::string p = JoinPath(layout_->root(), layout_->files()[file].name);
    absl::StatusOr<std::unique_ptr<ReadableFile>> f = fs_->OpenRead(p);
    if (!f.ok()) return f.status();
    files_[file] = std::move(*f);
  }
  return files_[file].get();
}

absl::StatusOr<const MappedRegion*> HfStorageReader::Mapping(int file) {
  if (!maps_[file]) {
    absl::StatusOr<ReadableFile*> src = Source(file);
    if (!src.ok()) return src.status();
    absl::StatusOr<std::shared_ptr<const MappedRegion>> m = (*src)->Map();
    if (!m.ok()) return m.status();
    maps_[file] = *m;
  }
  return maps_[file].get();
}

absl::StatusOr<at::Tensor> HfStorageReader::View(const std::string& fqn) {
  absl::StatusOr<const CheckpointLayout*> ck = ReadMetadata();
  if (!ck.ok()) return ck.status();
  for (const TensorLayout& t : (*ck)->tensors()) {
    if ((key_map_ ? key_map_->Apply(t.name) : t.name) != fqn) continue;
    absl::StatusOr<c10::ScalarType> st = [&]() -> absl::StatusOr<c10::ScalarType> {
      for (c10::ScalarType s : {c10::kFloat, c10::kBFloat16, c10::kHalf, c10::kDouble, c10::kChar,
                                c10::kShort, c10::kInt, c10::kLong, c10::kByte, c10::kBool}) {
        if (*DTypeOfTorch(s) == t.dtype) return s;
      }
      if (IsFloat8(t.dtype)) return c10::kByte;
      return absl::InvalidArgumentError(absl::StrCat("no torch dtype for ", DTypeName(t.dtype)));
    }();
    if (!st.ok()) return st.status();
    if (t.chunks.size() != 1) {
      return absl::FailedPreconditionError(
          absl::StrCat("tensor \"", fqn, "\" is stored in ", t.chunks.size(), " chunks; load it"));
    }
    const Chunk& c = t.chunks[0];
    absl::StatusOr<const MappedRegion*> m = Mapping(c.file);
    if (!m.ok()) return m.status();
    const char* p = (*m)->data().data() + c.begin;
    const int64_t esize = c10::elementSize(*st);
    if (reinterpret_cast<uintptr_t>(p) % esize != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("tensor \"", fqn, "\" starts at file offset ", c.begin,
                       ", not aligned to its element size: load it into a tensor instead"));
    }
    std::shared_ptr<const MappedRegion> keep = maps_[c.file];
    std::vector<int64_t> sizes(t.shape.begin(), t.shape.end());
    return torch::from_blob(
        const_cast<char*>(p), sizes, [keep](void*) mutable { keep.reset(); },
        torch::TensorOptions().dtype(*st));
  }
  return absl::NotFoundError(absl::StrCat(path_, ": no tensor \"", fqn, "\""));
}

absl::Status LoadInto(const std::string& dir, std::vector<LoadRequest>& requests,
                      const KeyMap* key_map, LoadStats* stats) {
  HfStorageReader reader(dir, key_map);
  return reader.ReadData(requests, stats);
}

absl::Status HfStorageReader::ReadData(std::vector<LoadRequest>& requests, LoadStats* stats) {
  absl::StatusOr<const CheckpointLayout*> ck_or = ReadMetadata();
  if (!ck_or.ok()) return ck_or.status();
  const CheckpointLayout* ck = *ck_or;
  const std::string& dir = path_;
  std::map<std::string, const TensorLayout*> by_name;
  for (const TensorLayout& t : ck->tensors()) {
    by_name[key_map_ != nullptr ? key_map_->Apply(t.name) : t.name] = &t;
  }
  // Local files: map each one the requests need once, up front. Remote files: collect the rows
  // of each chunk that each request needs, coalesce nearby ranges per file and fetch them in
  // parallel with ranged GETs. Then fill the requests in parallel.
  std::vector<char> remote(ck->files().size(), 0);
  struct Span {
    int file;
    uint64_t begin, end;
  };
  std::vector<Span> spans;
  // (request, chunk) pairs whose rows are contiguous in the destination too: fetched straight
  // into the destination tensor, no intermediate buffer.
  struct Direct {
    int file;
    uint64_t begin, end;
    char* dst;
  };
  std::vector<Direct> directs;
  std::set<std::pair<size_t, const Chunk*>> direct_set;
  for (size_t ri = 0; ri < requests.size(); ++ri) {
    const LoadRequest& r = requests[ri];
    auto it = by_name.find(r.fqn);
    if (it == by_name.end()) continue;
    const TensorLayout& t = *it->second;
    for (const Chunk& c : t.chunks) {
      absl::StatusOr<ReadableFile*> src = Source(c.file);
      if (!src.ok()) return src.status();
      if (!(*src)->remote()) {
        bool fresh = !maps_[c.file];
        absl::StatusOr<const MappedRegion*> m = Mapping(c.file);
        if (!m.ok()) return m.status();
        if (fresh && stats) stats->files_mapped++;
        continue;
      }
      remote[c.file] = 1;
      std::optional<std::pair<uint64_t, uint64_t>> rows = NeededRows(t, c, r);
      if (!rows) continue;
      if (char* dst = DirectDestination(t, c, r)) {
        directs.push_back({c.file, rows->first, rows->second, dst});
        direct_set.insert({ri, &c});
      } else {
        spans.push_back({c.file, rows->first, rows->second});
      }
    }
  }
  std::vector<Fetched> fetched;
  if (!spans.empty() || !directs.empty()) {
    std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) {
      return a.file != b.file ? a.file < b.file : a.begin < b.begin;
    });
    for (const Span& sp : spans) {
      if (!fetched.empty() && fetched.back().file == sp.file &&
          sp.begin <= fetched.back().end + kCoalesceBytes) {
        fetched.back().end = std::max(fetched.back().end, sp.end);
      } else {
        fetched.push_back({sp.file, sp.begin, sp.end, nullptr});
      }
    }
    struct Piece {
      int file;
      uint64_t begin, size;  // absolute bytes in the file
      char* dst;
    };
    std::vector<Piece> pieces;
    auto split = [&](int file, uint64_t begin, uint64_t end, char* dst) {
      for (uint64_t at = 0; at < end - begin; at += kFetchPiece) {
        pieces.push_back({file, begin + at, std::min(kFetchPiece, end - begin - at), dst + at});
      }
    };
    for (Fetched& f : fetched) {
      f.data.reset(new char[f.end - f.begin]);
      split(f.file, f.begin, f.end, f.data.get());
    }
    for (const Direct& d : directs) split(d.file, d.begin, d.end, d.dst);
    std::atomic<size_t> next_piece{0};
    absl::Mutex fmu;
    absl::Status fetch_error;
    std::vector<std::thread> fetchers;
    const int n =
        std::min<int>(static_cast<int>(pieces.size()), std::max(threads_, kMinFetchThreads));
    for (int i = 0; i < n; ++i) {
      fetchers.emplace_back([&] {
        for (size_t k = next_piece++; k < pieces.size(); k = next_piece++) {
          const Piece& p = pieces[k];
          absl::Status s = files_[p.file]->ReadAt(p.begin, p.size, p.dst);
          if (!s.ok()) {
            absl::MutexLock l(&fmu);
            if (fetch_error.ok()) fetch_error = s;
          }
        }
      });
    }
    for (auto& th : fetchers) th.join();
    if (!fetch_error.ok()) return fetch_error;
    if (stats) {
      stats->ranges_fetched += static_cast<int>(pieces.size());
      for (const Fetched& f : fetched) stats->bytes_fetched += f.end - f.begin;
      for (const Direct& d : directs) stats->bytes_fetched += d.end - d.begin;
    }
  }
  std::atomic<size_t> next{0};
  std::atomic<uint64_t> copied{0};
  absl::Mutex mu;
  absl::Status first_error;
  auto fill = [&](size_t ri) -> absl::Status {
    LoadRequest& r = requests[ri];
    auto it = by_name.find(r.fqn);
    if (it == by_name.end()) {
      return absl::NotFoundError(
          absl::StrCat(dir, ": no tensor \"", r.fqn, "\" in the checkpoint"));
    }
    const TensorLayout& t = *it->second;
    absl::StatusOr<DType> want = DTypeOfTorch(r.dest.scalar_type());
    if (!want.ok()) return want.status();
    // libtorch 1.13 has no float8: FP8 tensors load into uint8 tensors, bytes unchanged.
    const bool fp8_as_u8 = IsFloat8(t.dtype) && *want == DType::kU8;
    if (*want != t.dtype && !fp8_as_u8) {
      return absl::InvalidArgumentError(absl::StrCat("tensor \"", r.fqn, "\" is stored as ",
                                                     DTypeName(t.dtype), ", requested as ",
                                                     DTypeName(*want)));
    }
    const size_t rank = t.shape.size();
    if (static_cast<size_t>(r.dest.dim()) != rank) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor \"", r.fqn, "\" has ", rank, " dimensions, the destination ", r.dest.dim()));
    }
    if (r.offsets.empty()) r.offsets.assign(rank, 0);
    std::vector<int64_t> dsz(r.dest.sizes().begin(), r.dest.sizes().end());
    for (size_t d = 0; d < rank; ++d) {
      if (r.offsets[d] < 0 || r.offsets[d] + dsz[d] > static_cast<int64_t>(t.shape[d])) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor \"", r.fqn, "\": requested box lies outside its shape [",
                         absl::StrJoin(t.shape, ", "), "] in dimension ", d));
      }
    }
    at::Tensor target =
        r.dest.is_contiguous() ? r.dest : torch::empty(r.dest.sizes(), r.dest.options());
    const int64_t esize = target.element_size();
    int64_t covered = 0;
    for (const Chunk& c : t.chunks) {
      std::vector<int64_t> lo(rank), hi(rank), so(c.offsets.begin(), c.offsets.end()),
          ssz(c.sizes.begin(), c.sizes.end());
      bool empty = false;
      int64_t vol = 1;
      for (size_t d = 0; d < rank; ++d) {
        lo[d] = std::max(r.offsets[d], so[d]);
        hi[d] = std::min(r.offsets[d] + dsz[d], so[d] + ssz[d]);
        empty |= lo[d] >= hi[d];
        vol *= std::max<int64_t>(0, hi[d] - lo[d]);
      }
      if (empty && rank > 0) continue;
      if (direct_set.count({ri, &c}) && target.is_same(r.dest)) {
        // Already fetched into place.
      } else if (remote[c.file]) {
        // The rows [lo0, hi0) of the chunk were fetched: copy from them as a sub-chunk.
        std::optional<std::pair<uint64_t, uint64_t>> rows = NeededRows(t, c, r);
        const Fetched* f = nullptr;
        for (const Fetched& x : fetched) {
          if (rows && x.file == c.file && x.begin <= rows->first && rows->second <= x.end) f = &x;
        }
        if (f == nullptr) {
          return absl::InternalError(
              absl::StrCat("tensor \"", t.name, "\": fetched bytes not found"));
        }
        std::vector<int64_t> sub_o = so, sub_sz = ssz;
        if (rank > 0) {
          sub_o[0] = lo[0];
          sub_sz[0] = hi[0] - lo[0];
        }
        BoxScratch scratch(lo.size());
        CopyBox(f->data.get() + (rows->first - f->begin), sub_o, sub_sz,
                static_cast<char*>(target.data_ptr()), r.offsets, dsz, lo, hi, esize, scratch);
      } else {
        absl::string_view data = maps_[c.file]->data();
        if (c.end > data.size()) {
          return absl::DataLossError(absl::StrCat(ck->files()[c.file].name, ": tensor \"", t.name,
                                                  "\" bytes [", c.begin, ", ", c.end,
                                                  ") lie beyond the end of the file"));
        }
        // Under GuardMappedAccess: a file truncated by another process while it is read is an
        // error naming it, not a SIGBUS that kills the training process.
        BoxScratch scratch(lo.size());
        RETURN_IF_ERROR(GuardMappedAccess(ck->files()[c.file].name, c.begin, [&] {
          CopyBox(data.data() + c.begin, so, ssz, static_cast<char*>(target.data_ptr()), r.offsets,
                  dsz, lo, hi, esize, scratch);
        }));
      }
      covered += vol;
      copied += vol * esize;
    }
    if (covered != target.numel()) {
      return absl::FailedPreconditionError(
          absl::StrCat("tensor \"", r.fqn, "\": the checkpoint holds ", covered, " of the ",
                       target.numel(), " requested elements"));
    }
    if (!target.is_same(r.dest)) r.dest.copy_(target);
    return absl::OkStatus();
  };
  std::vector<std::thread> pool;
  int threads = std::max(1, std::min<int>(threads_, static_cast<int>(requests.size())));
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&] {
      for (size_t i = next++; i < requests.size(); i = next++) {
        absl::Status s = fill(i);
        if (!s.ok()) {
          absl::MutexLock l(&mu);
          if (first_error.ok()) first_error = s;
        }
      }
    });
  }
  for (auto& t : pool) t.join();
  if (stats) stats->bytes_copied += copied.load();
  return first_error;
}

}  // namespace safeshard
