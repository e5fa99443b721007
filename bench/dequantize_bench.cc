// Benchmark: dequantize a generated >= 1 GB FP8 block-quantized model (DeepSeek-V3 layout:
// X.weight F8_E4M3 [8192, 4096] + X.weight_scale_inv F32 [64, 32], 128x128 blocks, in 4 HF
// files with a config.json) to BF16 with `safeshard consolidate --dequantize bf16`, as a whole
// process, against `cp` of the same input bytes and a plain `safeshard consolidate` (byte copy)
// measured in the same run (warm page cache). The output is twice the input (BF16 vs FP8).
// Prints time ratios, peak anonymous memory (sampled RssAnon: excludes the file mappings) and
// whether it stays under 64 MiB plus one block row (the bound of issue 14).
//
// Usage: dequantize_bench SAFESHARD_BINARY [--tensors N] [--dir D]
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/proc_util.h"
#include "core/format/header.h"

using safeshard::bench::Run;
using safeshard::bench::RunStats;

namespace {

void Shell(const std::string& cmd) {
  if (std::system(cmd.c_str()) != 0) std::cerr << "failed: " << cmd << "\n";
}

// Writes one safetensors file of FP8 weights and their F32 scales: random codes (a fast
// xorshift, NaN codes included as in any byte stream), scales around 1e-3 like real ones.
bool WriteFile(const std::string& path, const std::vector<std::string>& names, uint64_t rows,
               uint64_t cols, uint64_t* seed) {
  std::vector<safeshard::TensorSpec> specs;
  const uint64_t sr = (rows + 127) / 128, sc = (cols + 127) / 128;
  for (const std::string& n : names) {
    specs.push_back({n, safeshard::DType::kF8_E4M3, {rows, cols}});
    specs.push_back({n + "_scale_inv", safeshard::DType::kF32, {sr, sc}});
  }
  absl::StatusOr<safeshard::Header> h = safeshard::LayoutHeader(specs, {{"format", "pt"}});
  if (!h.ok()) return false;
  std::ofstream f(path, std::ios::binary);
  f << safeshard::SerializeHeader(*h);
  std::string buf;
  for (const safeshard::TensorEntry& t : h->tensors) {
    buf.resize(t.size());
    if (t.dtype == safeshard::DType::kF32) {
      for (uint64_t i = 0; i < t.size() / 4; ++i) {
        *seed ^= *seed << 13, *seed ^= *seed >> 7, *seed ^= *seed << 17;
        const float v = 1e-3f * (1.0f + static_cast<float>(*seed % 1000) / 1000.0f);
        std::memcpy(&buf[4 * i], &v, 4);
      }
    } else {
      for (uint64_t i = 0; i + 8 <= buf.size(); i += 8) {
        *seed ^= *seed << 13, *seed ^= *seed >> 7, *seed ^= *seed << 17;
        std::memcpy(&buf[i], seed, 8);
      }
    }
    f.write(buf.data(), static_cast<std::streamsize>(buf.size()));
  }
  return static_cast<bool>(f);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: dequantize_bench SAFESHARD_BINARY [--tensors N] [--dir D]\n";
    return 2;
  }
  const std::string bin = argv[1];
  int tensors = 32;  // 32 x 32 MiB = 1.07 GB of FP8 codes
  std::string root = absl::StrCat("/var/tmp/safeshard-dequantize-bench-", getpid());
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    if (k == "--tensors") tensors = std::max(4, std::atoi(argv[i + 1]));
    if (k == "--dir") root = argv[i + 1];
  }
  const uint64_t rows = 8192, cols = 4096;
  const std::string in = root + "/in";
  Shell("rm -rf " + root + " && mkdir -p " + in);
  uint64_t seed = 0x9E3779B97F4A7C15ull;
  const int files = 4;
  std::vector<std::string> inputs;
  for (int f = 0; f < files; ++f) {
    std::vector<std::string> names;
    for (int t = f; t < tensors; t += files) {
      names.push_back(absl::StrCat("model.layers.", t, ".mlp.down_proj.weight"));
    }
    const std::string path = absl::StrFormat("%s/model-%05d-of-%05d.safetensors", in, f + 1, files);
    if (!WriteFile(path, names, rows, cols, &seed)) {
      std::cerr << "cannot write " << path << "\n";
      return 1;
    }
    inputs.push_back(path);
  }
  {
    std::ofstream cfg(in + "/config.json");
    cfg << R"({"model_type": "deepseek_v3", "torch_dtype": "bfloat16", "quantization_config": )"
        << R"({"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", )"
        << R"("weight_block_size": [128, 128]}})"
        << "\n";
  }
  const uint64_t code_bytes = static_cast<uint64_t>(tensors) * rows * cols;
  std::cout << absl::StrFormat(
      "generated %.2f GB of FP8 codes (%d weights [%d, %d] + F32 128x128 block scales) in %d "
      "files; BF16 output %.2f GB\n",
      code_bytes / 1e9, tensors, rows, cols, files, 2 * code_bytes / 1e9);

  auto cp = [&] {
    const std::string dst = root + "/cp";
    Shell("rm -rf " + dst + " && mkdir -p " + dst);
    std::vector<std::string> args = {"cp"};
    args.insert(args.end(), inputs.begin(), inputs.end());
    args.push_back(dst);
    return Run(args);
  };
  auto consolidate = [&](int threads, bool dequantize) {
    const std::string out = root + "/out";
    Shell("rm -rf " + out);
    std::vector<std::string> args = {bin, "consolidate", in,
                                     out, "--threads",   std::to_string(threads)};
    if (dequantize) {
      args.push_back("--dequantize");
      args.push_back("bf16");
    }
    RunStats st = Run(args);
    if (st.exit_code != 0) {
      std::cerr << "safeshard consolidate failed (exit " << st.exit_code << ")\n";
      std::exit(1);
    }
    return st;
  };
  auto best = [](std::vector<RunStats> v) {
    return *std::min_element(v.begin(), v.end(), [](const RunStats& a, const RunStats& b) {
      return a.seconds < b.seconds;
    });
  };
  cp();  // warm the page cache
  consolidate(2, true);
  const RunStats cp_t = best({cp(), cp(), cp()});
  const RunStats copy2 = best({consolidate(2, false), consolidate(2, false)});
  const RunStats d1 = best({consolidate(1, true), consolidate(1, true)});
  const RunStats d2 = best({consolidate(2, true), consolidate(2, true)});
  auto gbps = [&](double s) { return code_bytes / s / 1e9; };
  std::cout << absl::StrFormat("cp of the input (baseline)      %7.3f s  %6.2f GB/s in\n",
                               cp_t.seconds, gbps(cp_t.seconds));
  std::cout << absl::StrFormat(
      "consolidate (byte copy), 2 thr  %7.3f s  %6.2f GB/s in   %.2fx cp time\n", copy2.seconds,
      gbps(copy2.seconds), copy2.seconds / cp_t.seconds);
  std::cout << absl::StrFormat(
      "--dequantize bf16, 1 thread     %7.3f s  %6.2f GB/s in   %.2fx cp time\n", d1.seconds,
      gbps(d1.seconds), d1.seconds / cp_t.seconds);
  std::cout << absl::StrFormat(
      "--dequantize bf16, 2 threads    %7.3f s  %6.2f GB/s in   %.2fx cp time\n", d2.seconds,
      gbps(d2.seconds), d2.seconds / cp_t.seconds);
  std::cout << absl::StrFormat("2-vs-1 thread speed-up          %.2fx\n", d1.seconds / d2.seconds);
  std::cout << std::flush;
  safeshard::bench::Result(
      absl::StrFormat("dequantize FP8 -> BF16, %.2f GB of codes, 2 threads", code_bytes / 1e9),
      absl::StrFormat("%.3f s (peak anon %.1f MiB)", d2.seconds, d2.peak_anon_kib / 1024.0),
      absl::StrFormat("cp of the input %.3f s", cp_t.seconds),
      absl::StrFormat("%.1fx cp time", d2.seconds / cp_t.seconds));
  // One block row of a weight: 128 rows of BF16 output (the unit a whole-block reader holds).
  const double block_row_mib = 128.0 * cols * 2 / (1 << 20);
  const double bound_mib = 64 + block_row_mib;
  const double peak = std::max(d1.peak_anon_kib, d2.peak_anon_kib) / 1024.0;
  std::cout << absl::StrFormat(
      "peak anonymous memory           %.1f MiB (1 thread), %.1f MiB (2 threads): %s the bound "
      "of 64 MiB + one block row (%.1f MiB)\n",
      d1.peak_anon_kib / 1024.0, d2.peak_anon_kib / 1024.0, peak < bound_mib ? "under" : "OVER",
      bound_mib);
  Shell("rm -rf " + root);
  return peak < bound_mib ? 0 : 1;
}
