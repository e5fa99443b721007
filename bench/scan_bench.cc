// Benchmark: header-only scan of a generated 100,000-tensor, 64-file per-rank checkpoint.
// Prints the time of `safeshard verify` (a whole process: scan every header, check coverage of
// every tensor) and of the in-process CheckpointLayout::Scan as ratios to `cat` of exactly the
// header bytes of the same files (extracted beforehand, one cat process), all measured in this run.
//
// Usage: scan_bench SAFESHARD_BINARY [--tensors N] [--files F] [--reps R]
#include <sys/wait.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/proc_util.h"
#include "core/example/example.h"
#include "core/io/atomic_file.h"
#include "core/io/filesystem.h"
#include "core/layout/layout.h"

namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

}  // namespace

using safeshard::bench::Median;
using safeshard::bench::TimeCommand;

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: scan_bench SAFESHARD_BINARY [--tensors N] [--files F] [--reps R]\n";
    return 2;
  }
  std::string bin = argv[1];
  int tensors = 100000, files = 64, reps = 7;
  for (int i = 2; i + 1 < argc; i += 2) {
    std::string k = argv[i];
    int v = std::atoi(argv[i + 1]);
    if (k == "--tensors") tensors = v;
    if (k == "--files") files = v;
    if (k == "--reps") reps = v;
  }
  safeshard::FileSystem& fs = safeshard::LocalFileSystem();
  std::string root = absl::StrCat("/tmp/safeshard-scan-bench-", getpid());
  std::string ck = root + "/ckpt", hdr = root + "/headers";
  if (!fs.MakeDirs(hdr).ok()) return 1;
  std::cout << "generating " << tensors << " tensors in " << files << " files under " << root
            << "\n";
  absl::Status s =
      safeshard::WriteDcpCheckpoint(fs, ck, safeshard::ManySmallTensors(tensors), {.ranks = files});
  if (!s.ok()) {
    std::cerr << s << "\n";
    return 1;
  }
  // Baseline input: the header bytes (8-byte length + JSON) of each file, as separate files.
  uint64_t header_bytes = 0;
  std::string cat_cmd = "cat";
  absl::StatusOr<std::vector<safeshard::DirEntry>> entries = fs.List(ck);
  if (!entries.ok()) return 1;
  for (const auto& e : *entries) {
    absl::StatusOr<safeshard::Header> h = safeshard::ReadHeader(fs, ck + "/" + e.name);
    std::string all = *fs.ReadAll(ck + "/" + e.name);
    std::string out = hdr + "/" + e.name;
    if (!safeshard::WriteFileAtomically(fs, out, all.substr(0, h->data_start())).ok()) return 1;
    header_bytes += h->data_start();
    cat_cmd += " " + out;
  }
  cat_cmd += " > /dev/null";
  std::string verify_cmd = bin + " verify " + ck + " > /dev/null";
  // Warm the page cache for both.
  TimeCommand(cat_cmd);
  TimeCommand(verify_cmd);
  std::vector<double> cat_t, verify_t, scan_t;
  for (int r = 0; r < reps; ++r) {
    cat_t.push_back(TimeCommand(cat_cmd));
    verify_t.push_back(TimeCommand(verify_cmd));
    auto t0 = Clock::now();
    absl::StatusOr<safeshard::CheckpointLayout> layout = safeshard::CheckpointLayout::Scan(fs, ck);
    scan_t.push_back(Seconds(Clock::now() - t0));
    if (!layout.ok() || layout->tensors().size() != static_cast<size_t>(tensors) ||
        !layout->problems().empty()) {
      std::cerr << "scan returned a wrong result\n";
      return 1;
    }
  }
  double c = Median(cat_t), v = Median(verify_t), sc = Median(scan_t);
  std::cout << absl::StrFormat("header bytes: %d in %d files (%.1f MiB)\n", header_bytes, files,
                               header_bytes / 1048576.0);
  std::cout << absl::StrFormat("cat of header bytes (baseline): %8.2f ms  (median of %d)\n",
                               c * 1e3, reps);
  std::cout << absl::StrFormat("safeshard verify (process):    %8.2f ms  ratio %.2fx cat\n",
                               v * 1e3, v / c);
  std::cout << absl::StrFormat("CheckpointLayout::Scan (in-process): %8.2f ms  ratio %.2fx cat\n",
                               sc * 1e3, sc / c);
  std::cout << absl::StrFormat("scan throughput: %.0f tensors/s, %.1f MiB/s of header JSON\n",
                               tensors / sc, header_bytes / 1048576.0 / sc);
  std::cout << std::flush;
  safeshard::bench::Result(
      absl::StrFormat("header scan, %d tensors / %d files (in-process)", tensors, files),
      absl::StrFormat("%.3f s (%.1f MiB/s of JSON)", sc, header_bytes / 1048576.0 / sc),
      absl::StrFormat("cat of the header bytes %.4f s", c), absl::StrFormat("%.1fx cat", sc / c));
  safeshard::bench::Result("`safeshard verify`, same checkpoint (process)",
                           absl::StrFormat("%.3f s", v), absl::StrFormat("cat %.4f s", c),
                           absl::StrFormat("%.1fx cat", v / c));
  if (std::system(("rm -rf " + root).c_str()) != 0)
    std::cerr << "could not remove " << root << "\n";
  return 0;
}
