// Benchmark: `safeshard diff` of a generated ~1 GB, 8-rank per-rank checkpoint (row, column and
// 2-D mesh sharded tensors) against its consolidation, as a whole process, vs `cmp` of the
// consolidated file against a copy of itself — the same number of bytes read on each side, in
// the same run, warm page cache. The column- and mesh-sharded tensors make diff walk many short
// runs (one per row of each chunk), which a byte-for-byte cmp of two flat files never does.
//
// Usage: diff_bench SAFESHARD_BINARY [--hidden H] [--layers L] [--reps R]
#include <unistd.h>

#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/proc_util.h"
#include "core/example/example.h"
#include "core/io/filesystem.h"

using safeshard::bench::Median;
using safeshard::bench::ShellOrDie;
using safeshard::bench::TimeCommand;

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: diff_bench SAFESHARD_BINARY [--hidden H] [--layers L] [--reps R]\n";
    return 2;
  }
  const std::string bin = argv[1];
  uint64_t hidden = 1536;
  int layers = 10, reps = 5;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    if (k == "--hidden") hidden = std::strtoull(argv[i + 1], nullptr, 10);
    if (k == "--layers") layers = std::atoi(argv[i + 1]);
    if (k == "--reps") reps = std::atoi(argv[i + 1]);
  }
  const std::string root = absl::StrCat("/var/tmp/safeshard-diff-bench-", getpid());
  const std::string in = root + "/in", hf = root + "/hf";
  auto model =
      safeshard::TransformerLikeModel({.layers = layers, .hidden = hidden, .vocab = 32000});
  uint64_t bytes = 0;
  for (const auto& t : model) bytes += safeshard::ByteSizeOf(t.dtype, t.shape).value_or(0);
  std::cout << absl::StrFormat("generating %.2f GB (%d tensors) as 8 per-rank files in %s\n",
                               bytes / 1e9, model.size(), in);
  if (!safeshard::WriteDcpCheckpoint(safeshard::LocalFileSystem(), in, model, {.ranks = 8}).ok())
    return 1;
  ShellOrDie(absl::StrCat("'", bin, "' consolidate '", in, "' '", hf, "' > /dev/null"));
  ShellOrDie(
      absl::StrCat("cp '", hf, "/model-00001-of-00001.safetensors' '", root, "/copy.safetensors'"));
  // Warm the page cache for every file involved.
  ShellOrDie(absl::StrCat("cat '", in, "'/*.safetensors '", hf,
                          "/model-00001-of-00001.safetensors' '", root,
                          "/copy.safetensors' > /dev/null"));

  std::vector<double> cmp, diff, diff1;
  for (int r = 0; r < reps; ++r) {
    cmp.push_back(TimeCommand(absl::StrCat("cmp '", hf, "/model-00001-of-00001.safetensors' '",
                                           root, "/copy.safetensors'")));
    diff.push_back(TimeCommand(absl::StrCat("'", bin, "' diff '", in, "' '", hf, "' > /dev/null")));
    diff1.push_back(TimeCommand(
        absl::StrCat("'", bin, "' diff --threads 1 '", in, "' '", hf, "' > /dev/null")));
  }
  const double c = Median(cmp), d = Median(diff), d1 = Median(diff1);
  std::cout << absl::StrFormat(
      "cmp of the consolidated file vs a copy (baseline): %.3f s (%.0f MB/s per side)\n", c,
      bytes / 1e6 / c);
  std::cout << absl::StrFormat(
      "safeshard diff shards vs consolidated (4 threads): %.3f s  ratio %.2fx cmp\n", d, d / c);
  std::cout << absl::StrFormat(
      "safeshard diff shards vs consolidated (1 thread):  %.3f s  ratio %.2fx cmp\n", d1, d1 / c);
  std::cout << std::flush;
  safeshard::bench::Result("`safeshard diff` 8-rank shards vs their consolidation",
                           absl::StrFormat("%.3f s", d), absl::StrFormat("cmp %.3f s", c),
                           absl::StrFormat("%.2fx cmp time", d / c));
  ShellOrDie(absl::StrCat("rm -rf '", root, "'"));
  return 0;
}
