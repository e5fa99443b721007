// Benchmark: a 4-rank save of a generated >= 2 GB state dict with the HF storage writer (per-rank
// DCP shards, fsynced) against `dd conv=fsync` of the same bytes per rank, run in parallel in the
// same run; the resident memory each rank needs beyond its tensors while saving; and a load with
// resharding (4-way saved -> 4-way column-sharded) against `cat` of the files (warm cache).
//
// Usage: dcp_bench SAFESHARD_TORCH_BINARY [--layers L] [--hidden H] [--dir D]
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <regex>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/proc_util.h"
#include "core/io/filesystem.h"

using safeshard::bench::Run;

namespace {

std::string Capture(const std::string& cmd) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  pclose(p);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: dcp_bench SAFESHARD_TORCH_BINARY [--layers L] [--hidden H] [--dir D]\n";
    return 2;
  }
  std::string bin = argv[1];
  int layers = 15;
  int hidden = 2048;
  std::string root = absl::StrCat("/var/tmp/safeshard-dcp-bench-", getpid());
  for (int i = 2; i + 1 < argc; i += 2) {
    std::string k = argv[i];
    if (k == "--layers") layers = std::atoi(argv[i + 1]);
    if (k == "--hidden") hidden = std::atoi(argv[i + 1]);
    if (k == "--dir") root = argv[i + 1];
  }
  std::string ckpt = root + "/ckpt";
  std::cout << "saving with 4 ranks (tensors are generated first; only the save is timed)\n";
  std::string out = Capture(absl::StrCat(bin, " save-example ", ckpt, " --ranks 4 --layers ",
                                         layers, " --hidden ", hidden, " --vocab 32000"));
  std::regex re(
      R"(rank (\d+): wrote \S+ \((\d+) tensor bytes\) in ([0-9.]+) s; .*: ([0-9.]+) MiB)");
  double save_s = 0, mem = 0;
  uint64_t bytes = 0, per_rank_max = 0;
  for (std::sregex_iterator it(out.begin(), out.end(), re), end; it != end; ++it) {
    uint64_t b = std::stoull((*it)[2]);
    bytes += b;
    per_rank_max = std::max(per_rank_max, b);
    save_s = std::max(save_s, std::stod((*it)[3]));
    mem = std::max(mem, std::stod((*it)[4]));
  }
  if (bytes == 0) {
    std::cerr << "save failed:\n" << out << "\n";
    return 1;
  }
  // dd of the same bytes: 4 writers in parallel, fsynced like the save.
  std::string dd;
  for (int r = 0; r < 4; ++r) {
    absl::StrAppend(&dd, "dd if=/dev/zero of=", root, "/dd", r,
                    " bs=1M count=", per_rank_max / (1 << 20), " conv=fsync status=none & ");
  }
  dd += "wait";
  double dd_s = Run({"sh", "-c", dd}).seconds;
  std::cout << absl::StrFormat(
      "save %.2f GB: %.3f s (%.2f GB/s); dd conv=fsync of the same bytes: %.3f s -> ratio %.2fx "
      "dd\n",
      bytes / 1e9, save_s, bytes / 1e9 / save_s, dd_s, dd_s / save_s);
  std::cout << std::flush;
  safeshard::bench::Result(absl::StrFormat("4-rank save over Gloo, %.2f GB", bytes / 1e9),
                           absl::StrFormat("%.3f s", save_s),
                           absl::StrFormat("dd conv=fsync %.3f s", dd_s),
                           absl::StrFormat("%.2fx dd throughput", dd_s / save_s));
  std::cout << absl::StrFormat(
      "resident memory beyond the tensors while saving: %.1f MiB (max over ranks)\n", mem);

  std::string cat = absl::StrCat("cat ", ckpt, "/*.safetensors > /dev/null");
  Run({"sh", "-c", cat});  // warm
  double cat_s = Run({"sh", "-c", cat}).seconds;
  std::string load = Capture(absl::StrCat(bin, " load-check ", ckpt, " --ranks 4 --layout col"));
  std::smatch m;
  if (!std::regex_search(load, m, std::regex(R"(\((\d+) bytes in ([0-9.]+) s\))"))) {
    std::cerr << "load-check failed:\n" << load << "\n";
    return 1;
  }
  double load_s = std::stod(m[2]);
  std::cout << absl::StrFormat(
      "load into 4-way column sharding: %.3f s (%.2f GB/s); cat of the files: %.3f s -> ratio "
      "%.2fx cat\n",
      load_s, std::stoull(m[1]) / 1e9 / load_s, cat_s, cat_s / load_s);
  std::cout << std::flush;
  safeshard::bench::Result("resharding load, 4 ranks row-saved -> column-sharded",
                           absl::StrFormat("%.3f s", load_s), absl::StrFormat("cat %.3f s", cat_s),
                           absl::StrFormat("%.2fx cat throughput", cat_s / load_s));
  if (std::system(("rm -rf " + root).c_str()) != 0) std::cerr << "cleanup failed\n";
  return 0;
}
