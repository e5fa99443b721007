#include "core/diff/diff.h"

#include <tuple>

#include "core/io/sigbus_guard.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/consolidate/dtype_cast.h"
#include "core/format/dtype.h"
#include "core/util/format.h"
#include "core/util/parallel.h"
#include "core/util/status_macros.h"

namespace safeshard {

const char* DiffKindName(DiffKind k) {
  switch (k) {
    case DiffKind::kOnlyInA: return "only in A";
    case DiffKind::kOnlyInB: return "only in B";
    case DiffKind::kDType: return "dtype";
    case DiffKind::kShape: return "shape";
    case DiffKind::kValues: return "values";
    case DiffKind::kNotCompared: return "not compared";
  }
  return "?";
}

namespace {

std::string Describe(const TensorLayout& t) {
  return absl::StrCat(DTypeName(t.dtype), " [", absl::StrJoin(t.shape, ", "), "]");
}

// A contiguous piece of a tensor's global row-major bytes, stored contiguously in one file.
struct Run {
  uint64_t start = 0;  // byte offset in the global tensor
  uint64_t size = 0;
  int file = 0;
  uint64_t at = 0;  // absolute byte offset in the file
};

// The runs of a tensor, sorted by `start`; false when a run does not start and end on a byte
// (a sub-byte dtype split inside a byte).
bool BuildRuns(const TensorLayout& t, std::vector<Run>* runs) {
  const uint64_t bits = static_cast<uint64_t>(BitsOf(t.dtype));
  const size_t k = t.shape.size();
  std::vector<uint64_t> stride(k, 1);
  for (size_t d = k; d-- > 1;) stride[d - 1] = stride[d] * t.shape[d];
  auto emit = [&](uint64_t elem, uint64_t n, const Chunk& c, uint64_t chunk_elem) {
    if ((elem * bits) % 8 != 0 || (n * bits) % 8 != 0 || (chunk_elem * bits) % 8 != 0) return false;
    Run r{elem * bits / 8, n * bits / 8, c.file, c.begin + chunk_elem * bits / 8};
    if (!runs->empty()) {
      Run& p = runs->back();
      if (p.file == r.file && p.start + p.size == r.start && p.at + p.size == r.at) {
        p.size += r.size;
        return true;
      }
    }
    runs->push_back(r);
    return true;
  };
  for (const Chunk& c : t.chunks) {
    if (k == 0) {
      if (!emit(0, 1, c, 0)) return false;
      continue;
    }
    bool empty = false;
    for (uint64_t s : c.sizes) empty |= s == 0;
    if (empty) continue;
    const uint64_t inner = c.sizes[k - 1];
    std::vector<uint64_t> idx(k - 1, 0);
    uint64_t chunk_elem = 0;
    while (true) {
      uint64_t g = c.offsets[k - 1];
      for (size_t d = 0; d + 1 < k; ++d) g += (c.offsets[d] + idx[d]) * stride[d];
      if (!emit(g, inner, c, chunk_elem)) return false;
      chunk_elem += inner;
      size_t d = k - 1;
      while (d > 0) {
        if (++idx[d - 1] < c.sizes[d - 1]) break;
        idx[d - 1] = 0;
        --d;
      }
      if (d == 0) break;
    }
  }
  std::sort(runs->begin(), runs->end(),
            [](const Run& x, const Run& y) { return x.start < y.start; });
  return true;
}

std::string FormatElement(DType dt, const char* p) {
  const int bytes = std::max(1, BitsOf(dt) / 8);
  std::string hex = "0x";
  for (int i = bytes; i-- > 0;)
    absl::StrAppendFormat(&hex, "%02x", static_cast<unsigned char>(p[i]));
  std::string value;
  switch (dt) {
    case DType::kF64:
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16: {
      double v = 0;
      CastElements(dt, p, DType::kF64, &v, 1);
      value = absl::StrFormat("%.9g", v);
      break;
    }
    case DType::kBOOL: value = p[0] ? "true" : "false"; break;
    case DType::kI8: value = absl::StrCat(static_cast<int8_t>(p[0])); break;
    case DType::kU8: value = absl::StrCat(static_cast<uint8_t>(p[0])); break;
#define SAFESHARD_INT_CASE(D, T)  \
  case D: {                       \
    T v;                          \
    std::memcpy(&v, p, sizeof v); \
    value = absl::StrCat(v);      \
    break;                        \
  }
      SAFESHARD_INT_CASE(DType::kI16, int16_t)
      SAFESHARD_INT_CASE(DType::kU16, uint16_t)
      SAFESHARD_INT_CASE(DType::kI32, int32_t)
      SAFESHARD_INT_CASE(DType::kU32, uint32_t)
      SAFESHARD_INT_CASE(DType::kI64, int64_t)
      SAFESHARD_INT_CASE(DType::kU64, uint64_t)
#undef SAFESHARD_INT_CASE
    default: break;
  }
  return value.empty() ? hex : absl::StrCat(hex, " (", value, ")");
}

// Maps each file of one side once, on first use, from any thread (one lock per file: a remote
// file downloading does not hold back reads of the others).
class Side {
 public:
  Side(FileSystem& fs, const CheckpointLayout& ck)
      : fs_(fs), ck_(ck), slots_(new Slot[ck.files().size()]) {}

  std::string Path(int file) const { return JoinPath(ck_.root(), ck_.files()[file].name); }

  absl::StatusOr<absl::string_view> Bytes(int file, uint64_t at, uint64_t n,
                                          const std::string& tensor) {
    std::shared_ptr<const MappedRegion> m;
    {
      Slot& s = slots_[file];
      std::lock_guard<std::mutex> l(s.mu);
      if (!s.map) {
        ASSIGN_OR_RETURN(MappedInput in,
                         MapUnchanged(fs_, JoinPath(ck_.root(), ck_.files()[file].name),
                                      IdentityOf(ck_.files()[file])));
        s.map = std::move(in.map);
      }
      m = s.map;
    }
    const absl::string_view d = m->data();
    if (at > d.size() || n > d.size() - at) {
      return absl::DataLossError(absl::StrCat(
          JoinPath(ck_.root(), ck_.files()[file].name), ": tensor \"", tensor, "\": bytes [", at,
          ", ", at + n, ") lie beyond the end of the file (", d.size(), " bytes)"));
    }
    return d.substr(at, n);
  }

 private:
  struct Slot {
    std::mutex mu;
    std::shared_ptr<const MappedRegion> map;
  };
  FileSystem& fs_;
  const CheckpointLayout& ck_;
  std::unique_ptr<Slot[]> slots_;
};

bool IsFloat(DType t) {
  return CanCast(t, DType::kF64);
}

void SetFirstIndex(const TensorLayout& t, uint64_t first, TensorDiff* d) {
  d->first_element = first;
  d->first_index.assign(t.shape.size(), 0);
  uint64_t rest = first;
  for (size_t k = t.shape.size(); k-- > 0;) {
    if (t.shape[k] == 0) break;
    d->first_index[k] = rest % t.shape[k];
    rest /= t.shape[k];
  }
}

// Walks the runs of A and B together over the tensor's global order, in units of `ua` bytes of A
// and `ub` bytes of B (1 and 1: bytes; the element sizes: elements), at most `max_units` at a
// time: fn(bytes of A, bytes of B, units, global index of the first unit).
template <typename Fn>
absl::Status WalkTogether(const TensorLayout& ta, Side& sa, const std::vector<Run>& ra, uint64_t ua,
                          const TensorLayout& tb, Side& sb, const std::vector<Run>& rb, uint64_t ub,
                          uint64_t max_units, const DiffOptions& o, Fn&& fn) {
  size_t i = 0, j = 0;
  uint64_t ia = 0, jb = 0;  // units consumed of ra[i], rb[j]
  while (i < ra.size() && j < rb.size()) {
    if (o.cancel && o.cancel->load()) return absl::CancelledError("diff cancelled");
    const uint64_t n = std::min({ra[i].size / ua - ia, rb[j].size / ub - jb, max_units});
    ASSIGN_OR_RETURN(absl::string_view pa,
                     sa.Bytes(ra[i].file, ra[i].at + ia * ua, n * ua, ta.name));
    ASSIGN_OR_RETURN(absl::string_view pb,
                     sb.Bytes(rb[j].file, rb[j].at + jb * ub, n * ub, tb.name));
    // Both are mappings: touch every page under the SIGBUS guard first (a file truncated by
    // another process becomes an error naming it), then compare with the guard still up.
    for (const auto& [side, bytes, file, at] : {std::tuple<Side*, absl::string_view, int, uint64_t>{
                                                    &sa, pa, ra[i].file, ra[i].at + ia * ua},
                                                std::tuple<Side*, absl::string_view, int, uint64_t>{
                                                    &sb, pb, rb[j].file, rb[j].at + jb * ub}}) {
      const std::string path = side->Path(file);
      RETURN_IF_ERROR(GuardMappedAccess(path, at, [&] {
        volatile char sink = 0;
        for (size_t k = 0; k < bytes.size(); k += 4096) sink = sink + bytes[k];
        if (!bytes.empty()) sink = sink + bytes[bytes.size() - 1];
      }));
    }
    RETURN_IF_ERROR(GuardMappedAccess(sa.Path(ra[i].file), ra[i].at + ia * ua,
                                      [&] { fn(pa.data(), pb.data(), n, ra[i].start / ua + ia); }));
    ia += n;
    jb += n;
    if (ia * ua == ra[i].size) ++i, ia = 0;
    if (jb * ub == rb[j].size) ++j, jb = 0;
  }
  if (i < ra.size() ||
      j < rb.size()) {  // both tile the same tensor: cannot happen without a problem
    return absl::InternalError(
        absl::StrCat("tensor \"", ta.name, "\": the chunks of A and B cover different sizes"));
  }
  return absl::OkStatus();
}

// Differing elements: how many, and the first with both values.
struct Mismatches {
  uint64_t count = 0, first = 0;
  // The first differing element's bytes. Add runs under GuardMappedAccess, so it only copies
  // bytes (no allocation, nothing a jump could skip); they are formatted in Report.
  DType da = DType::kU8, db = DType::kU8;
  char ca[16] = {}, cb[16] = {};
  void Add(uint64_t element, DType dtype_a, const char* pa, DType dtype_b, const char* pb) {
    if (count++ == 0) {
      first = element;
      da = dtype_a;
      db = dtype_b;
      std::memcpy(ca, pa, std::max(1, BitsOf(da) / 8));
      std::memcpy(cb, pb, std::max(1, BitsOf(db) / 8));
    }
  }
  // Fills `d` (kind values) when there are any; `criterion` follows "elements differ".
  bool Report(const TensorLayout& t, const std::string& criterion, const std::string& suffix,
              TensorDiff* d) const {
    if (count == 0) return false;
    d->kind = DiffKind::kValues;
    d->differing_elements = count;
    SetFirstIndex(t, first, d);
    const std::string a = FormatElement(da, ca), b = FormatElement(db, cb);
    d->first_a = a;
    d->first_b = b;
    d->detail = absl::StrCat(Grouped(count), " of ", Grouped(t.numel()), " elements differ",
                             criterion, "; first at [", absl::StrJoin(d->first_index, ", "),
                             "]: A ", a, ", B ", b, suffix);
    return true;
  }
};

// Compares two float tensors of equal shape (dtypes may differ) value by value within the
// tolerances, decoding blocks of elements to double.
absl::Status CompareNumeric(const TensorLayout& ta, Side& sa, const TensorLayout& tb, Side& sb,
                            const DiffOptions& o, TensorDiff* d, bool* differ) {
  std::vector<Run> ra, rb;
  BuildRuns(ta, &ra);  // whole-byte dtypes: always aligned
  BuildRuns(tb, &rb);
  const uint64_t ea = BitsOf(ta.dtype) / 8, eb = BitsOf(tb.dtype) / 8;
  constexpr uint64_t kBlock = 1 << 16;
  std::vector<double> va(kBlock), vb(kBlock);
  Mismatches m;
  double max_diff = 0;
  RETURN_IF_ERROR(WalkTogether(ta, sa, ra, ea, tb, sb, rb, eb, kBlock, o,
                               [&](const char* pa, const char* pb, uint64_t n, uint64_t global) {
                                 CastElements(ta.dtype, pa, DType::kF64, va.data(), n);
                                 CastElements(tb.dtype, pb, DType::kF64, vb.data(), n);
                                 for (uint64_t k = 0; k < n; ++k) {
                                   const double a = va[k], b = vb[k];
                                   bool same;
                                   if (std::isnan(a) || std::isnan(b)) {
                                     same = std::isnan(a) && std::isnan(b);
                                   } else if (std::isinf(a) || std::isinf(b)) {
                                     same = a == b;
                                   } else {
                                     const double diff = std::fabs(a - b);
                                     max_diff = std::max(max_diff, diff);
                                     same = diff <= o.atol + o.rtol * std::fabs(b);
                                   }
                                   if (!same)
                                     m.Add(global + k, ta.dtype, pa + k * ea, tb.dtype,
                                           pb + k * eb);
                                 }
                               }));
  d->max_abs_diff = max_diff;
  *differ = m.Report(
      ta, absl::StrCat(" beyond atol=", o.atol, " rtol=", o.rtol),
      absl::StrCat("; max |A-B| = ", absl::StrFormat("%.6g", max_diff),
                   ta.dtype != tb.dtype
                       ? absl::StrCat(" (A ", DTypeName(ta.dtype), ", B ", DTypeName(tb.dtype), ")")
                       : std::string()),
      d);
  return absl::OkStatus();
}

// Compares the bytes of two tensors of equal dtype and shape. Fills `d` when they differ.
absl::Status CompareValues(const TensorLayout& ta, Side& sa, const TensorLayout& tb, Side& sb,
                           const DiffOptions& o, TensorDiff* d, bool* differ) {
  std::vector<Run> ra, rb;
  if (!BuildRuns(ta, &ra) || !BuildRuns(tb, &rb)) {
    d->kind = DiffKind::kNotCompared;
    d->detail =
        absl::StrCat(DTypeName(ta.dtype), " elements are split inside a byte: values not compared");
    *differ = true;
    return absl::OkStatus();
  }
  const uint64_t ebytes = static_cast<uint64_t>(std::max(1, BitsOf(ta.dtype) / 8));
  Mismatches m;
  RETURN_IF_ERROR(WalkTogether(ta, sa, ra, 1, tb, sb, rb, 1, UINT64_MAX, o,
                               [&](const char* pa, const char* pb, uint64_t n, uint64_t global) {
                                 if (std::memcmp(pa, pb, n) == 0) return;
                                 // Element by element (runs hold whole elements: both start on
                                 // element boundaries).
                                 for (uint64_t k = 0; k < n; k += ebytes) {
                                   const uint64_t len = std::min(ebytes, n - k);
                                   if (std::memcmp(pa + k, pb + k, len) != 0)
                                     m.Add((global + k) / ebytes, ta.dtype, pa + k, tb.dtype,
                                           pb + k);
                                 }
                               }));
  *differ = m.Report(ta, "", "", d);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<DiffReport> DiffCheckpoints(FileSystem& fa, const CheckpointLayout& a,
                                           FileSystem& fb, const CheckpointLayout& b,
                                           const DiffOptions& o) {
  // A file whose header cannot be read hides which tensors it holds: every "only in" would be a
  // guess, so there is no comparison.
  for (const auto* side : {&a, &b}) {
    for (const FileInfo& f : side->files()) {
      if (f.error) {
        const std::string path = JoinPath(side->root(), f.name);
        return absl::FailedPreconditionError(absl::StrCat(
            absl::StrContains(*f.error, path) ? "" : path + ": ", *f.error,
            " (which tensors this file holds is unknown, so the checkpoints cannot be compared)"));
      }
    }
  }
  DiffReport rep;
  auto wanted = [&](const std::string& n) { return !o.filter || o.filter(n); };
  // Pairs present on both sides, and the one-sided names.
  std::vector<std::pair<const TensorLayout*, const TensorLayout*>> both;
  for (const TensorLayout& t : a.tensors()) {
    if (!wanted(t.name)) continue;
    const TensorLayout* u = b.FindTensor(t.name);
    if (u == nullptr) {
      rep.diffs.push_back({DiffKind::kOnlyInA, t.name, Describe(t)});
    } else {
      both.push_back({&t, u});
    }
  }
  for (const TensorLayout& t : b.tensors()) {
    if (wanted(t.name) && a.FindTensor(t.name) == nullptr)
      rep.diffs.push_back({DiffKind::kOnlyInB, t.name, Describe(t)});
  }
  rep.in_both = both.size();

  std::vector<TensorDiff> result(both.size());
  std::vector<char> differs(both.size(), 0);
  std::vector<size_t> to_compare;
  uint64_t total = 0;
  for (size_t k = 0; k < both.size(); ++k) {
    const TensorLayout& ta = *both[k].first;
    const TensorLayout& tb = *both[k].second;
    TensorDiff& d = result[k];
    d.name = ta.name;
    const bool numeric = o.numeric() && IsFloat(ta.dtype) && IsFloat(tb.dtype);
    if (ta.dtype != tb.dtype && !numeric) {
      d.kind = DiffKind::kDType;
      d.detail = absl::StrCat("A ", Describe(ta), ", B ", Describe(tb));
      differs[k] = 1;
    } else if (ta.shape != tb.shape) {
      d.kind = DiffKind::kShape;
      d.detail = absl::StrCat("A ", Describe(ta), ", B ", Describe(tb));
      differs[k] = 1;
    } else if (!o.headers_only && (ta.has_problem || tb.has_problem)) {
      d.kind = DiffKind::kNotCompared;
      d.detail = absl::StrCat(
          ta.has_problem ? "A" : "B",
          " does not hold it exactly (a gap, overlap or conflict; see `safeshard verify`)");
      differs[k] = 1;
    } else if (!o.headers_only) {
      to_compare.push_back(k);
      total += ta.bytes();
      if (ta.dtype != tb.dtype) ++rep.across_dtypes;
    } else if (ta.dtype != tb.dtype) {  // headers only: another dtype cannot be checked by value
      d.kind = DiffKind::kDType;
      d.detail = absl::StrCat("A ", Describe(ta), ", B ", Describe(tb),
                              " (headers only: values not compared)");
      differs[k] = 1;
    }
  }

  Side sa(fa, a), sb(fb, b);
  std::mutex mu;
  absl::Status first_error;
  std::atomic<uint64_t> done{0};
  ParallelFor(to_compare.size(), o.threads, [&](size_t n) {
    {
      std::lock_guard<std::mutex> l(mu);
      if (!first_error.ok()) return;
    }
    const size_t k = to_compare[n];
    bool differ = false;
    const TensorLayout& ta = *both[k].first;
    const TensorLayout& tb = *both[k].second;
    absl::Status s = o.numeric() && IsFloat(ta.dtype) && IsFloat(tb.dtype)
                         ? CompareNumeric(ta, sa, tb, sb, o, &result[k], &differ)
                         : CompareValues(ta, sa, tb, sb, o, &result[k], &differ);
    if (!s.ok()) {
      std::lock_guard<std::mutex> l(mu);
      if (first_error.ok()) first_error = s;
      return;
    }
    differs[k] = differ;
    const uint64_t now = done += both[k].first->bytes();
    if (o.progress) {
      std::lock_guard<std::mutex> l(mu);
      o.progress(now, total);
    }
  });
  if (!first_error.ok()) return first_error;
  rep.bytes_compared = done.load();
  for (size_t k = 0; k < both.size(); ++k) {
    if (differs[k]) {
      rep.diffs.push_back(std::move(result[k]));
    } else {
      ++rep.identical;
    }
  }
  std::sort(rep.diffs.begin(), rep.diffs.end(), [](const TensorDiff& x, const TensorDiff& y) {
    return x.name != y.name ? x.name < y.name : x.kind < y.kind;
  });
  return rep;
}

}  // namespace safeshard
