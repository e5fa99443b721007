// Benchmark: consolidate a generated >= 2 GB, 8-rank per-rank checkpoint (row, column and 2-D
// mesh sharded tensors) with `safeshard consolidate`, as a whole process, against `cp` of the
// same input bytes measured in the same run (warm page cache). Prints throughput ratios, peak
// memory (anonymous, i.e. excluding the file mappings; and ru_maxrss including them), and
// 1-vs-2-thread scaling. safeshard fsyncs its outputs (crash safety); `cp` does not, so a
// `cp + sync` baseline is printed as well. With --dir on a tmpfs (bench/run.sh uses /dev/shm)
// the same is measured in memory: fsync is free there, the rows say "on tmpfs".
//
// Usage: consolidate_bench SAFESHARD_BINARY [--hidden H] [--layers L] [--dir D]
#include <linux/magic.h>
#include <sys/statfs.h>

#include <algorithm>
#include <cstdlib>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/proc_util.h"
#include "core/example/example.h"
#include "core/io/filesystem.h"

using safeshard::bench::Run;
using safeshard::bench::RunStats;

static void Shell(const std::string& cmd) {
  if (std::system(cmd.c_str()) != 0) std::cerr << "failed: " << cmd << "\n";
}

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: consolidate_bench SAFESHARD_BINARY [--hidden H] [--layers L] [--dir D]\n";
    return 2;
  }
  std::string bin = argv[1];
  uint64_t hidden = 2048;
  int layers = 15;
  std::string root = absl::StrCat("/var/tmp/safeshard-consolidate-bench-", getpid());
  for (int i = 2; i + 1 < argc; i += 2) {
    std::string k = argv[i];
    if (k == "--hidden") hidden = std::strtoull(argv[i + 1], nullptr, 10);
    if (k == "--layers") layers = std::atoi(argv[i + 1]);
    if (k == "--dir") root = argv[i + 1];
  }
  safeshard::FileSystem& fs = safeshard::LocalFileSystem();
  std::string in = root + "/in";
  auto model =
      safeshard::TransformerLikeModel({.layers = layers, .hidden = hidden, .vocab = 32000});
  uint64_t bytes = 0;
  for (const auto& t : model) bytes += safeshard::ByteSizeOf(t.dtype, t.shape).value_or(0);
  std::cout << absl::StrFormat("generating %.2f GB (%d tensors) as 8 per-rank files in %s\n",
                               bytes / 1e9, model.size(), in);
  absl::Status s = safeshard::WriteDcpCheckpoint(fs, in, model, {.ranks = 8, .mesh_rows = 2});
  if (!s.ok()) {
    std::cerr << s << "\n";
    return 1;
  }
  std::vector<std::string> inputs;
  absl::StatusOr<std::vector<safeshard::DirEntry>> entries = fs.List(in);
  if (!entries.ok()) return 1;
  for (const auto& e : *entries) inputs.push_back(in + "/" + e.name);

  auto cp = [&](bool sync) {
    std::string dst = root + "/cp";
    Shell(("rm -rf " + dst + " && mkdir -p " + dst));
    std::vector<std::string> args = {"cp"};
    args.insert(args.end(), inputs.begin(), inputs.end());
    args.push_back(dst);
    RunStats st = Run(args);
    if (sync) {
      RunStats sy = Run({"sync", "-f", dst});
      st.seconds += sy.seconds;
    }
    return st;
  };
  auto consolidate = [&](int threads) {
    std::string out = root + "/out";
    Shell(("rm -rf " + out));
    RunStats st = Run({bin, "consolidate", in, out, "--threads", std::to_string(threads)});
    if (st.exit_code != 0) {
      std::cerr << "safeshard consolidate failed (exit " << st.exit_code << ")\n";
      std::exit(1);
    }
    return st;
  };
  // Warm the page cache, then take the best of 3 for each.
  cp(false);
  consolidate(2);
  auto best = [](std::vector<RunStats> v) {
    return *std::min_element(v.begin(), v.end(), [](const RunStats& a, const RunStats& b) {
      return a.seconds < b.seconds;
    });
  };
  RunStats cp_t = best({cp(false), cp(false), cp(false)});
  RunStats cps_t = best({cp(true), cp(true), cp(true)});
  RunStats c1 = best({consolidate(1), consolidate(1), consolidate(1)});
  RunStats c2 = best({consolidate(2), consolidate(2), consolidate(2)});
  auto gbps = [&](double s) { return bytes / s / 1e9; };
  std::cout << absl::StrFormat("cp (baseline)            %7.3f s  %6.2f GB/s\n", cp_t.seconds,
                               gbps(cp_t.seconds));
  std::cout << absl::StrFormat("cp + sync                %7.3f s  %6.2f GB/s\n", cps_t.seconds,
                               gbps(cps_t.seconds));
  std::cout << absl::StrFormat(
      "consolidate, 1 thread    %7.3f s  %6.2f GB/s  ratio %.2fx cp, %.2fx cp+sync\n", c1.seconds,
      gbps(c1.seconds), cp_t.seconds / c1.seconds, cps_t.seconds / c1.seconds);
  std::cout << absl::StrFormat(
      "consolidate, 2 threads   %7.3f s  %6.2f GB/s  ratio %.2fx cp, %.2fx cp+sync\n", c2.seconds,
      gbps(c2.seconds), cp_t.seconds / c2.seconds, cps_t.seconds / c2.seconds);
  std::cout << absl::StrFormat("2-vs-1 thread speed-up   %.2fx\n", c1.seconds / c2.seconds);
  std::cout << std::flush;
  struct statfs sfs;
  const bool tmpfs = statfs(root.c_str(), &sfs) == 0 && sfs.f_type == TMPFS_MAGIC;
  safeshard::bench::Result(
      absl::StrFormat("consolidation%s, %.2f GB 8 ranks, 2 threads", tmpfs ? " on tmpfs" : "",
                      bytes / 1e9),
      absl::StrFormat("%.3f s (peak anon %.1f MiB)", c2.seconds, c2.peak_anon_kib / 1024.0),
      absl::StrFormat("cp %.3f s; cp + sync %.3f s", cp_t.seconds, cps_t.seconds),
      absl::StrFormat("%.2fx cp time, %.2fx cp + sync", c2.seconds / cp_t.seconds,
                      c2.seconds / cps_t.seconds));
  std::cout << absl::StrFormat(
      "peak anonymous memory    %.1f MiB (1 thread), %.1f MiB (2 threads); "
      "ru_maxrss incl. mapped input pages %.1f MiB\n",
      c1.peak_anon_kib / 1024.0, c2.peak_anon_kib / 1024.0, c2.max_rss_kib / 1024.0);
  Shell(("rm -rf " + root));
  return 0;
}
