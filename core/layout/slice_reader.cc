#include "core/layout/slice_reader.h"

#include <map>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/format/internal/json_util.h"
#include "core/io/sigbus_guard.h"
#include "core/layout/box_copy.h"
#include "core/util/status_macros.h"

namespace safeshard {

absl::Status ReadSlice(FileSystem& fs, const CheckpointLayout& ck, const std::string& fqn,
                       const std::vector<uint64_t>& offsets, const std::vector<uint64_t>& sizes,
                       void* out, uint64_t out_bytes, SliceStats* stats) {
  const TensorLayout* t = ck.FindTensor(fqn);
  if (t == nullptr) {
    return absl::NotFoundError(
        absl::StrCat(ck.root(), ": no tensor ", internal::Quote(fqn), " in the checkpoint"));
  }
  const std::string name = internal::Quote(fqn);
  if (t->has_problem) {
    return absl::FailedPreconditionError(
        absl::StrCat(ck.root(), ": tensor ", name,
                     " has problems (a gap, an overlap or disagreeing chunks): run safeshard "
                     "verify"));
  }
  if (IsSubByte(t->dtype)) {
    return absl::UnimplementedError(
        absl::StrCat("tensor ", name, ": ", DTypeName(t->dtype), " slices are not byte-aligned"));
  }
  const size_t rank = t->shape.size();
  if (offsets.size() != rank || sizes.size() != rank) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", name, " has ", rank,
                                                   " dimensions; offsets and sizes give ",
                                                   offsets.size(), " and ", sizes.size()));
  }
  uint64_t numel = 1;
  for (size_t d = 0; d < rank; ++d) {
    if (offsets[d] > t->shape[d] || sizes[d] > t->shape[d] - offsets[d]) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", name, ": the box at [", absl::StrJoin(offsets, ", "),
                       "] of sizes [", absl::StrJoin(sizes, ", "), "] lies outside its shape [",
                       absl::StrJoin(t->shape, ", "), "] in dimension ", d));
    }
    numel *= sizes[d];
  }
  const int64_t esize = BitsOf(t->dtype) / 8;
  if (out_bytes != numel * esize) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor ", name, ": the box holds ", numel, " ", DTypeName(t->dtype), " elements (",
        numel * esize, " bytes), the destination ", out_bytes, " bytes"));
  }
  if (numel == 0) return absl::OkStatus();
  const std::vector<int64_t> dso(offsets.begin(), offsets.end()), dsz(sizes.begin(), sizes.end());
  std::map<int, MappedInput> open;  // each file opened (and checked) once
  uint64_t covered = 0;
  for (const Chunk& c : t->chunks) {
    std::vector<int64_t> lo(rank), hi(rank), so(c.offsets.begin(), c.offsets.end()),
        ssz(c.sizes.begin(), c.sizes.end());
    uint64_t vol = 1;
    for (size_t d = 0; d < rank; ++d) {
      lo[d] = std::max(dso[d], so[d]);
      hi[d] = std::min(dso[d] + dsz[d], so[d] + ssz[d]);
      vol *= static_cast<uint64_t>(std::max<int64_t>(0, hi[d] - lo[d]));
    }
    if (vol == 0) continue;
    const FileInfo& f = ck.files()[c.file];
    if (!f.header) return absl::DataLossError(*f.error);
    const std::string path = JoinPath(ck.root(), f.name);
    auto it = open.find(c.file);
    if (it == open.end()) {
      ASSIGN_OR_RETURN(std::unique_ptr<ReadableFile> file, fs.OpenRead(path));
      MappedInput in;
      if (file->remote()) {
        RETURN_IF_ERROR(CheckUnchanged(*file, IdentityOf(f)));
        in.file = std::move(file);
      } else {
        ASSIGN_OR_RETURN(in, MapUnchanged(fs, path, IdentityOf(f)));
      }
      it = open.emplace(c.file, std::move(in)).first;
    }
    BoxScratch scratch(rank);
    char* dst = static_cast<char*>(out);
    if (it->second.map) {
      absl::string_view data = it->second.map->data();
      if (c.end > data.size()) {
        return absl::DataLossError(absl::StrCat(path, ": tensor ", name, " bytes [", c.begin, ", ",
                                                c.end, ") lie beyond the end of the file"));
      }
      RETURN_IF_ERROR(GuardMappedAccess(path, c.begin, [&] {
        CopyBox(data.data() + c.begin, so, ssz, dst, dso, dsz, lo, hi, esize, scratch);
      }));
    } else {
      // Remote: the rows [lo0, hi0) of the chunk's first dimension, one ranged read.
      uint64_t row = esize;
      for (size_t d = 1; d < rank; ++d) row *= c.sizes[d];
      const uint64_t r0 = rank == 0 ? 0 : static_cast<uint64_t>(lo[0] - so[0]);
      const uint64_t r1 = rank == 0 ? 1 : static_cast<uint64_t>(hi[0] - so[0]);
      std::string buf((r1 - r0) * row, '\0');
      RETURN_IF_ERROR(it->second.file->ReadAt(c.begin + r0 * row, buf.size(), buf.data()));
      std::vector<int64_t> sub_o = so, sub_sz = ssz;
      if (rank > 0) {
        sub_o[0] = lo[0];
        sub_sz[0] = hi[0] - lo[0];
      }
      CopyBox(buf.data(), sub_o, sub_sz, dst, dso, dsz, lo, hi, esize, scratch);
    }
    covered += vol;
    if (stats != nullptr) {
      stats->bytes_copied += vol * esize;
      ++stats->chunks_read;
    }
  }
  if (covered != numel) {
    return absl::FailedPreconditionError(
        absl::StrCat("tensor ", name, ": the checkpoint holds ", covered, " of the ", numel,
                     " requested elements (a gap, or overlapping chunks: run safeshard verify)"));
  }
  return absl::OkStatus();
}

}  // namespace safeshard
