#include "core/dcp/hf_storage_reader.h"

#include <cstring>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/dcp/hf_storage_writer.h"
#include "core/io/filesystem.h"
#include "core/layout/layout.h"

namespace safeshard {
namespace {

// Copies the box [lo, hi) (global coordinates) from a row-major source block (shape ssz at
// global offset so) into a row-major destination block (shape dsz at global offset dso).
void CopyBox(const char* src, const std::vector<int64_t>& so, const std::vector<int64_t>& ssz,
             char* dst, const std::vector<int64_t>& dso, const std::vector<int64_t>& dsz,
             const std::vector<int64_t>& lo, const std::vector<int64_t>& hi, int64_t esize) {
  const size_t rank = lo.size();
  if (rank == 0) {
    std::memcpy(dst, src, esize);
    return;
  }
  std::vector<int64_t> sst(rank, 1), dst_st(rank, 1);
  for (size_t d = rank; d-- > 1;) {
    sst[d - 1] = sst[d] * ssz[d];
    dst_st[d - 1] = dst_st[d] * dsz[d];
  }
  // Collapse trailing dims that the box spans fully in both source and destination.
  size_t k = rank - 1;
  int64_t run = hi[k] - lo[k];
  while (k > 0 && hi[k] - lo[k] == ssz[k] && hi[k] - lo[k] == dsz[k]) {
    --k;
    run *= hi[k] - lo[k];
  }
  std::vector<int64_t> idx(lo.begin(), lo.begin() + k);
  while (true) {
    int64_t s = 0, t = 0;
    for (size_t d = 0; d < k; ++d) {
      s += (idx[d] - so[d]) * sst[d];
      t += (idx[d] - dso[d]) * dst_st[d];
    }
    s += (lo[k] - so[k]) * sst[k];
    t += (lo[k] - dso[k]) * dst_st[k];
    std::memcpy(dst + t * esize, src + s * esize, run * esize);
    size_t d = k;
    while (d > 0) {
      --d;
      if (++idx[d] < hi[d]) break;
      idx[d] = lo[d];
      if (d == 0) return;
    }
    if (k == 0) return;
  }
}

}  // namespace

absl::Status LoadInto(const std::string& dir, std::vector<LoadRequest>& requests,
                      const KeyMap* key_map, LoadStats* stats) {
  FileSystem& fs = LocalFileSystem();
  absl::StatusOr<CheckpointLayout> ck = CheckpointLayout::Scan(fs, dir);
  if (!ck.ok()) return ck.status();
  for (const Problem& p : ck->problems()) {
    if (p.kind != ProblemKind::kNotInIndex && p.kind != ProblemKind::kIndexTotalSize) {
      return absl::FailedPreconditionError(
          absl::StrCat(dir, ": cannot load from an inconsistent checkpoint: ", p.ToString()));
    }
  }
  std::map<std::string, const TensorLayout*> by_name;
  for (const TensorLayout& t : ck->tensors()) {
    by_name[key_map != nullptr ? key_map->Apply(t.name) : t.name] = &t;
  }
  std::vector<std::shared_ptr<const MappedRegion>> maps(ck->files().size());
  std::vector<std::unique_ptr<ReadableFile>> files(ck->files().size());
  for (LoadRequest& r : requests) {
    auto it = by_name.find(r.fqn);
    if (it == by_name.end()) {
      return absl::NotFoundError(absl::StrCat(dir, ": no tensor \"", r.fqn, "\" in the checkpoint"));
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
      return absl::InvalidArgumentError(absl::StrCat("tensor \"", r.fqn, "\" has ", rank,
                                                     " dimensions, the destination ", r.dest.dim()));
    }
    if (r.offsets.empty()) r.offsets.assign(rank, 0);
    std::vector<int64_t> dsz(r.dest.sizes().begin(), r.dest.sizes().end());
    for (size_t d = 0; d < rank; ++d) {
      if (r.offsets[d] < 0 || r.offsets[d] + dsz[d] > static_cast<int64_t>(t.shape[d])) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tensor \"", r.fqn, "\": requested box lies outside its shape [",
            absl::StrJoin(t.shape, ", "), "] in dimension ", d));
      }
    }
    at::Tensor target = r.dest.is_contiguous() ? r.dest : torch::empty(r.dest.sizes(), r.dest.options());
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
      if (!maps[c.file]) {
        std::string path = JoinPath(ck->root(), ck->files()[c.file].name);
        absl::StatusOr<std::unique_ptr<ReadableFile>> f = fs.OpenRead(path);
        if (!f.ok()) return f.status();
        files[c.file] = std::move(*f);
        absl::StatusOr<std::shared_ptr<const MappedRegion>> m = files[c.file]->Map();
        if (!m.ok()) return m.status();
        maps[c.file] = *m;
        if (stats) stats->files_mapped++;
      }
      absl::string_view data = maps[c.file]->data();
      if (c.end > data.size()) {
        return absl::DataLossError(absl::StrCat(ck->files()[c.file].name, ": tensor \"", t.name,
                                                "\" bytes [", c.begin, ", ", c.end,
                                                ") lie beyond the end of the file"));
      }
      CopyBox(data.data() + c.begin, so, ssz, static_cast<char*>(target.data_ptr()), r.offsets,
              dsz, lo, hi, esize);
      covered += vol;
      if (stats) stats->bytes_copied += vol * esize;
    }
    if (covered != target.numel()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "tensor \"", r.fqn, "\": the checkpoint holds ", covered, " of the ", target.numel(),
          " requested elements"));
    }
    if (!target.is_same(r.dest)) r.dest.copy_(target);
  }
  return absl::OkStatus();
}

}  // namespace safeshard
