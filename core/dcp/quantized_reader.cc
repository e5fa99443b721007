#include "core/dcp/quantized_reader.h"

#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/dcp/hf_storage_writer.h"
#include "core/layout/layout.h"
#include "core/util/parallel.h"
#include "core/util/status_macros.h"

namespace safeshard {
namespace {

absl::StatusOr<c10::ScalarType> TorchScaleType(DType t) {
  switch (t) {
    case DType::kF32: return c10::kFloat;
    case DType::kBF16: return c10::kBFloat16;
    case DType::kF16: return c10::kHalf;
    case DType::kF64: return c10::kDouble;
    case DType::kU8:
    case DType::kF8_E8M0: return c10::kByte;
    default: return absl::InvalidArgumentError(absl::StrCat("no scale type ", DTypeName(t)));
  }
}

int64_t CeilDiv(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// One quantized request: its codes and scales are loaded as stored, then decoded.
struct Job {
  size_t request = 0;
  const quant::QuantPair* pair = nullptr;
  at::Tensor codes, scales;  // the boxes covering the request
  int64_t first_value = 0;   // MXFP4: where the request starts in its first block's row
};

}  // namespace

QuantizedHfStorageReader::QuantizedHfStorageReader(std::string path, int thread_count,
                                                   std::optional<quant::BlockSize> block,
                                                   FileSystem* fs)
    : inner_(std::move(path), nullptr, thread_count, fs) {
  inner_.set_quant_block(block);
}

QuantizedHfStorageReader::~QuantizedHfStorageReader() = default;

absl::StatusOr<const CheckpointLayout*> QuantizedHfStorageReader::ReadMetadata() {
  return inner_.ReadMetadata();
}

absl::StatusOr<std::vector<quant::QuantPair>> QuantizedHfStorageReader::QuantizedWeights() {
  ASSIGN_OR_RETURN(const CheckpointLayout* ck, inner_.ReadMetadata());
  return ck->quantized();  // paired with block_ when given (the scan takes it)
}

absl::Status QuantizedHfStorageReader::ReadData(std::vector<LoadRequest>& requests,
                                                LoadStats* stats) {
  ASSIGN_OR_RETURN(std::vector<quant::QuantPair> pairs, QuantizedWeights());
  std::map<std::string, const quant::QuantPair*> by_output;
  for (const quant::QuantPair& q : pairs) by_output[q.output] = &q;
  std::vector<LoadRequest> inner;  // plain requests, and the codes and scales of the others
  std::vector<Job> jobs;
  for (size_t i = 0; i < requests.size(); ++i) {
    LoadRequest& r = requests[i];
    auto it = by_output.find(r.fqn);
    if (it == by_output.end()) {
      inner.push_back(r);  // the same destination storage: filled in place
      continue;
    }
    const quant::QuantPair& q = *it->second;
    absl::StatusOr<DType> want = DTypeOfTorch(r.dest.scalar_type());
    if (!want.ok() || !quant::IsDequantizeTarget(*want)) {
      return absl::InvalidArgumentError(absl::StrCat("tensor \"", r.fqn, "\" is quantized (",
                                                     q.Describe(),
                                                     "): load it into a BF16, F16 or F32 tensor"));
    }
    const size_t rank = q.output_shape.size();
    if (static_cast<size_t>(r.dest.dim()) != rank) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor \"", r.fqn, "\" has ", rank, " dimensions, the destination ", r.dest.dim()));
    }
    if (r.offsets.empty()) r.offsets.assign(rank, 0);
    std::vector<int64_t> lo(r.offsets), sz(r.dest.sizes().begin(), r.dest.sizes().end());
    for (size_t d = 0; d < rank; ++d) {
      if (lo[d] < 0 || lo[d] + sz[d] > static_cast<int64_t>(q.output_shape[d])) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor \"", r.fqn, "\": requested box lies outside its shape [",
                         absl::StrJoin(q.output_shape, ", "), "] in dimension ", d));
      }
    }
    if (r.dest.numel() == 0) continue;
    Job job;
    job.request = i;
    job.pair = &q;
    ASSIGN_OR_RETURN(c10::ScalarType scale_type, TorchScaleType(q.scale_dtype));
    std::vector<int64_t> code_lo = lo, code_sz = sz, scale_lo = lo, scale_sz = sz;
    if (q.scheme == quant::Scheme::kBlockFp8) {
      const int64_t br = static_cast<int64_t>(q.block.rows),
                    bc = static_cast<int64_t>(q.block.cols);
      const size_t rd = rank - 2, cd = rank - 1;
      scale_lo[rd] = lo[rd] / br;
      scale_sz[rd] = CeilDiv(lo[rd] + sz[rd], br) - scale_lo[rd];
      scale_lo[cd] = lo[cd] / bc;
      scale_sz[cd] = CeilDiv(lo[cd] + sz[cd], bc) - scale_lo[cd];
    } else {
      // The blocks [g0, g1) holding values [c0, c1) of the last dimension, whole.
      const int64_t g0 = lo.back() / 32, g1 = CeilDiv(lo.back() + sz.back(), 32);
      job.first_value = lo.back() - g0 * 32;
      code_lo.back() = g0;
      code_sz.back() = g1 - g0;
      code_lo.push_back(0);
      code_sz.push_back(16);
      scale_lo.back() = g0;
      scale_sz.back() = g1 - g0;
    }
    job.codes = torch::empty(code_sz, torch::kByte);
    job.scales = torch::empty(scale_sz, scale_type);
    inner.push_back({q.weight, job.codes, code_lo});
    inner.push_back({q.scale, job.scales, scale_lo});
    jobs.push_back(std::move(job));
  }
  RETURN_IF_ERROR(inner_.ReadData(inner, stats));

  // Decode each job into its destination (a contiguous one directly).
  ParallelFor(jobs.size(), 1, [&](size_t k) {
    Job& j = jobs[k];
    LoadRequest& r = requests[j.request];
    const quant::QuantPair& q = *j.pair;
    const DType out = *DTypeOfTorch(r.dest.scalar_type());
    const int64_t esize = r.dest.element_size();
    const unsigned char* codes = j.codes.data_ptr<uint8_t>();
    if (q.scheme == quant::Scheme::kBlockFp8) {
      at::Tensor target =
          r.dest.is_contiguous() ? r.dest : torch::empty(r.dest.sizes(), r.dest.options());
      at::Tensor scales = j.scales.to(torch::kFloat).contiguous();
      const float* s = scales.data_ptr<float>();
      const size_t rank = r.offsets.size();
      const int64_t br = static_cast<int64_t>(q.block.rows);
      const int64_t rows = r.dest.size(static_cast<int64_t>(rank) - 2);
      const int64_t cols = r.dest.size(static_cast<int64_t>(rank) - 1);
      const int64_t srows = j.scales.size(static_cast<int64_t>(rank) - 2);
      const int64_t scols = j.scales.size(static_cast<int64_t>(rank) - 1);
      const int64_t row0 = r.offsets[rank - 2], col0 = r.offsets[rank - 1];
      const int64_t lead_n = r.dest.numel() / std::max<int64_t>(1, rows * cols);
      char* dst = static_cast<char*>(target.data_ptr());
      for (int64_t lead = 0; lead < lead_n; ++lead) {
        for (int64_t m = 0; m < rows; ++m) {
          const int64_t srow = (row0 + m) / br - row0 / br;
          const int64_t at = (lead * rows + m) * cols;
          quant::DequantizeFp8Row(q.code_dtype, codes + at, static_cast<uint64_t>(cols),
                                  static_cast<uint64_t>(col0), q.block.cols,
                                  s + (lead * srows + srow) * scols, out, dst + at * esize);
        }
      }
      if (!target.is_same(r.dest)) r.dest.copy_(target);
    } else {
      // Whole blocks decoded, then the requested values of each row copied out.
      const int64_t g = j.scales.size(-1);
      const int64_t lead_n = j.scales.numel() / std::max<int64_t>(1, g);
      at::Tensor whole = torch::empty({lead_n, g * 32}, r.dest.options());
      const unsigned char* e8m0 = j.scales.data_ptr<uint8_t>();
      char* w = static_cast<char*>(whole.data_ptr());
      for (int64_t lead = 0; lead < lead_n; ++lead) {
        quant::DequantizeMxfp4(codes + lead * g * 16, 0, static_cast<uint64_t>(g * 32),
                               e8m0 + lead * g, out, w + lead * g * 32 * esize);
      }
      r.dest.copy_(whole.narrow(1, j.first_value, r.dest.size(-1)).reshape(r.dest.sizes()));
    }
  });
  return absl::OkStatus();
}

}  // namespace safeshard
