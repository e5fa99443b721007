// box_copy.h: copy the elements of a box between two row-major blocks of a global tensor —
// the inner loop of every resharding load (torch-free; used by core/dcp's reader and by
// ReadSlice).
//
//   BoxScratch scratch(rank);  // allocated before: CopyBox itself allocates nothing, so it can
//                              // run under GuardMappedAccess
//   CopyBox(src, src_offsets, src_sizes, dst, dst_offsets, dst_sizes, lo, hi, esize, scratch);
#ifndef SAFESHARD_CORE_LAYOUT_BOX_COPY_H_
#define SAFESHARD_CORE_LAYOUT_BOX_COPY_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace safeshard {

struct BoxScratch {
  explicit BoxScratch(size_t rank) : sst(rank), dst_st(rank), idx(rank) {}
  std::vector<int64_t> sst, dst_st, idx;
};

// Copies the box [lo, hi) (global coordinates) from a row-major source block (shape ssz at
// global offset so) into a row-major destination block (shape dsz at global offset dso), as
// runs as long as both layouts allow.
inline void CopyBox(const char* src, const std::vector<int64_t>& so,
                    const std::vector<int64_t>& ssz, char* dst, const std::vector<int64_t>& dso,
                    const std::vector<int64_t>& dsz, const std::vector<int64_t>& lo,
                    const std::vector<int64_t>& hi, int64_t esize, BoxScratch& scratch) {
  const size_t rank = lo.size();
  if (rank == 0) {
    std::memcpy(dst, src, esize);
    return;
  }
  std::vector<int64_t>& sst = scratch.sst;
  std::vector<int64_t>& dst_st = scratch.dst_st;
  std::fill(sst.begin(), sst.end(), 1);
  std::fill(dst_st.begin(), dst_st.end(), 1);
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
  std::vector<int64_t>& idx = scratch.idx;
  std::copy(lo.begin(), lo.begin() + k, idx.begin());
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

}  // namespace safeshard

#endif  // SAFESHARD_CORE_LAYOUT_BOX_COPY_H_
