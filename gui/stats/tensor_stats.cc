#include "gui/stats/tensor_stats.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>

#include "absl/strings/str_cat.h"
#include "core/io/sigbus_guard.h"
#include "core/util/status_macros.h"

namespace safeshard {
namespace {

// Decodes an 8-bit float with `exp_bits` exponent bits (E4M3 "fn": no infinities, 0x7f/0xff NaN;
// E5M2: IEEE-like with infinities).
double DecodeF8(uint8_t v, DType t) {
  const bool sign = v & 0x80;
  double out;
  if (t == DType::kF8_E8M0) {  // unsigned power of two, 0xff NaN
    if (v == 0xff) return std::numeric_limits<double>::quiet_NaN();
    return std::ldexp(1.0, static_cast<int>(v) - 127);
  }
  if (t == DType::kF8_E4M3FNUZ || t == DType::kF8_E5M2FNUZ) {  // no inf, no -0: 0x80 is NaN
    if (v == 0x80) return std::numeric_limits<double>::quiet_NaN();
    const bool e4 = t == DType::kF8_E4M3FNUZ;
    const int mbits = e4 ? 3 : 2, bias = e4 ? 8 : 16;
    const int e = (v & 0x7f) >> mbits, m = v & ((1 << mbits) - 1);
    out = e == 0 ? std::ldexp(static_cast<double>(m) / (1 << mbits), 1 - bias)
                 : std::ldexp(1 + static_cast<double>(m) / (1 << mbits), e - bias);
    return sign ? -out : out;
  }
  if (t == DType::kF8_E4M3) {
    const int e = (v >> 3) & 0xf, m = v & 0x7;
    if (e == 0xf && m == 0x7) return std::numeric_limits<double>::quiet_NaN();
    out = e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1 + m / 8.0, e - 7);
  } else {  // E5M2
    const int e = (v >> 2) & 0x1f, m = v & 0x3;
    if (e == 0x1f)
      return m ? std::numeric_limits<double>::quiet_NaN()
               : std::numeric_limits<double>::infinity() * (sign ? -1 : 1);
    out = e == 0 ? std::ldexp(m / 4.0, -14) : std::ldexp(1 + m / 4.0, e - 15);
  }
  return sign ? -out : out;
}

// A block of `n` elements at `p` as a double tensor.
absl::StatusOr<torch::Tensor> ToDouble(const char* p, int64_t n, DType t) {
  auto blob = [&](torch::ScalarType s) {
    return torch::from_blob(const_cast<char*>(p), {n}, torch::TensorOptions().dtype(s))
        .to(torch::kDouble);
  };
  auto manual = [&](const std::function<double(int64_t)>& f) {
    torch::Tensor out = torch::empty({n}, torch::kDouble);
    double* d = out.data_ptr<double>();
    for (int64_t i = 0; i < n; ++i) d[i] = f(i);
    return out;
  };
  switch (t) {
    case DType::kBOOL: return blob(torch::kBool);
    case DType::kU8: return blob(torch::kByte);
    case DType::kI8: return blob(torch::kChar);
    case DType::kI16: return blob(torch::kShort);
    case DType::kI32: return blob(torch::kInt);
    case DType::kI64: return blob(torch::kLong);
    case DType::kF16: return blob(torch::kHalf);
    case DType::kBF16: return blob(torch::kBFloat16);
    case DType::kF32: return blob(torch::kFloat);
    case DType::kF64: return blob(torch::kDouble);
    case DType::kU16:
      return manual([p](int64_t i) {
        uint16_t v;
        std::memcpy(&v, p + 2 * i, 2);
        return static_cast<double>(v);
      });
    case DType::kU32:
      return manual([p](int64_t i) {
        uint32_t v;
        std::memcpy(&v, p + 4 * i, 4);
        return static_cast<double>(v);
      });
    case DType::kU64:
      return manual([p](int64_t i) {
        uint64_t v;
        std::memcpy(&v, p + 8 * i, 8);
        return static_cast<double>(v);
      });
    case DType::kF8_E4M3:
    case DType::kF8_E5M2:
    case DType::kF8_E8M0:
    case DType::kF8_E4M3FNUZ:
    case DType::kF8_E5M2FNUZ: {
      double table[256];
      for (int v = 0; v < 256; ++v) table[v] = DecodeF8(static_cast<uint8_t>(v), t);
      return manual([p, &table](int64_t i) { return table[static_cast<uint8_t>(p[i])]; });
    }
    default:
      return absl::UnimplementedError(absl::StrCat("no statistics for ", DTypeName(t), " tensors"));
  }
}

}  // namespace

absl::StatusOr<TensorStats> ComputeTensorStats(FileSystem& fs, const CheckpointLayout& layout,
                                               const TensorLayout& tensor, const StatsOptions& o) {
  if (IsSubByte(tensor.dtype) || tensor.dtype == DType::kC64) {
    return absl::UnimplementedError(absl::StrCat("tensor \"", tensor.name, "\": no statistics for ",
                                                 DTypeName(tensor.dtype), " values"));
  }
  torch::NoGradGuard no_grad;
  const int64_t esize = BitsOf(tensor.dtype) / 8;
  // Open each file once; local files are mapped, remote ones read block by block (ranged reads:
  // only the tensor's bytes travel).
  std::vector<std::unique_ptr<ReadableFile>> files(layout.files().size());
  std::vector<std::shared_ptr<const MappedRegion>> maps(layout.files().size());
  std::string buffer;
  auto for_each_block =
      [&](const std::function<absl::Status(const torch::Tensor&)>& fn) -> absl::Status {
    for (const Chunk& c : tensor.chunks) {
      const FileInfo& f = layout.files()[c.file];
      const std::string path = JoinPath(layout.root(), f.name);
      if (!files[c.file]) {
        ASSIGN_OR_RETURN(files[c.file], fs.OpenRead(path));
        if (!files[c.file]->remote()) {
          ASSIGN_OR_RETURN(maps[c.file], files[c.file]->Map());
        }
      }
      const uint64_t size = files[c.file]->size();
      if (c.end > size || c.begin > c.end) {
        return absl::DataLossError(absl::StrCat(path, ": tensor \"", tensor.name, "\" bytes [",
                                                c.begin, ", ", c.end, ") lie beyond the file's ",
                                                size, " bytes"));
      }
      const int64_t n = static_cast<int64_t>((c.end - c.begin) / esize);
      for (int64_t i = 0; i < n; i += static_cast<int64_t>(o.block_elements)) {
        if (o.cancel && o.cancel->load()) return absl::CancelledError("statistics cancelled");
        const int64_t len = std::min<int64_t>(static_cast<int64_t>(o.block_elements), n - i);
        const uint64_t at = c.begin + static_cast<uint64_t>(i * esize);
        buffer.resize(static_cast<size_t>(len * esize));
        if (maps[c.file]) {
          // Copied out of the mapping under GuardMappedAccess (torch code never touches the
          // mapping): a file truncated while the inspector reads it is an error naming it,
          // never a SIGBUS that closes the window.
          const char* src = maps[c.file]->data().data() + at;
          RETURN_IF_ERROR(
              GuardMappedAccess(path, at, [&] { std::memcpy(buffer.data(), src, buffer.size()); }));
        } else {
          RETURN_IF_ERROR(files[c.file]->ReadAt(at, buffer.size(), buffer.data()));
        }
        const char* p = buffer.data();
        ASSIGN_OR_RETURN(torch::Tensor x, ToDouble(p, len, tensor.dtype));
        RETURN_IF_ERROR(fn(x));
      }
    }
    return absl::OkStatus();
  };
  TensorStats s;
  double sum = 0;
  bool any = false;
  RETURN_IF_ERROR(for_each_block([&](const torch::Tensor& x) {
    s.elements += x.numel();
    s.nan += x.isnan().sum().item<int64_t>();
    s.inf += x.isinf().sum().item<int64_t>();
    s.zeros += (x == 0).sum().item<int64_t>();
    torch::Tensor fin = x.masked_select(x.isfinite());
    if (fin.numel() > 0) {
      const double lo = fin.min().item<double>(), hi = fin.max().item<double>();
      s.min = any ? std::min(s.min, lo) : lo;
      s.max = any ? std::max(s.max, hi) : hi;
      any = true;
      s.finite += fin.numel();
      sum += fin.sum().item<double>();
    }
    return absl::OkStatus();
  }));
  s.bytes_read = s.elements * esize;
  s.histogram.assign(std::max(1, o.bins), 0);
  if (s.finite > 0) {
    s.mean = sum / static_cast<double>(s.finite);
    s.hist_lo = s.min;
    s.hist_hi = s.max;
    double centered = 0;
    RETURN_IF_ERROR(for_each_block([&](const torch::Tensor& x) {
      torch::Tensor fin = x.masked_select(x.isfinite());
      if (fin.numel() == 0) return absl::OkStatus();
      centered += (fin - s.mean).square().sum().item<double>();
      // Bin i holds [lo + i w, lo + (i+1) w); the maximum goes in the last bin.
      const double w = (s.hist_hi - s.hist_lo) / s.histogram.size();
      torch::Tensor idx = w > 0 ? ((fin - s.hist_lo) / w)
                                      .floor()
                                      .clamp(0.0, static_cast<double>(s.histogram.size() - 1))
                                      .to(torch::kLong)
                                : torch::zeros({fin.numel()}, torch::kLong);
      torch::Tensor counts = torch::bincount(idx, {}, static_cast<int64_t>(s.histogram.size()));
      const int64_t* cp = counts.data_ptr<int64_t>();
      for (size_t b = 0; b < s.histogram.size(); ++b) s.histogram[b] += cp[b];
      return absl::OkStatus();
    }));
    s.std = s.finite > 1 ? std::sqrt(centered / static_cast<double>(s.finite - 1)) : 0;
  }
  const uint64_t numel = tensor.numel();
  if (s.elements < numel) {
    s.note = absl::StrCat("the chunks hold ", s.elements, " of ", numel,
                          " elements (gap): statistics cover what is stored");
  } else if (s.elements > numel) {
    s.note = absl::StrCat("the chunks hold ", s.elements, " elements for ", numel,
                          " (overlap): some are counted twice");
  }
  return s;
}

}  // namespace safeshard
