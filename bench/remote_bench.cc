// Benchmark: remote storage over loopback against a real nginx (the test config), as ratios to
// `curl` fetching the same bytes in the same run.
//   1. header scan of a generated 100,000-tensor, 64-file checkpoint (CheckpointLayout::Scan
//      over http://) vs one curl process fetching each file's header range (keep-alive);
//   2. load of a generated 1 GiB checkpoint (4 ranks, row-sharded) into full tensors with the HF
//      storage reader vs `curl --parallel` downloading the four files.
//
// Usage: remote_bench [--tensors N] [--files F] [--gib G] [--reps R]
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/proc_util.h"
#include "core/dcp/hf_storage_reader.h"
#include "core/example/example.h"
#include "core/io/filesystem.h"
#include "core/io/http_filesystem.h"
#include "core/layout/layout.h"
#include "core/testing/nginx.h"

namespace {

constexpr char kToken[] = "bench-token";

}  // namespace

using safeshard::bench::Median;
using safeshard::bench::ShellOrDie;
using safeshard::bench::TimeIt;

int main(int argc, char** argv) {
  int tensors = 100000, files = 64, reps = 5;
  double gib = 1.0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    if (k == "--tensors") tensors = std::atoi(argv[i + 1]);
    if (k == "--files") files = std::atoi(argv[i + 1]);
    if (k == "--gib") gib = std::atof(argv[i + 1]);
    if (k == "--reps") reps = std::atoi(argv[i + 1]);
  }
  const std::string root = absl::StrCat("/var/tmp/safeshard-remote-bench-", getpid());
  std::filesystem::create_directories(root);
  auto server = safeshard::testing::NginxServer::Start(root, kToken);
  if (!server.ok()) {
    std::cerr << server.status() << "\n";
    return 1;
  }
  const std::string base = (*server)->url();
  safeshard::HttpOptions ho;
  ho.token = kToken;

  // ---- 1. header scan
  {
    absl::Status s =
        safeshard::WriteDcpCheckpoint(safeshard::LocalFileSystem(), root + "/scan",
                                      safeshard::ManySmallTensors(tensors), {.ranks = files});
    if (!s.ok()) return std::cerr << s << "\n", 1;
    auto local = safeshard::CheckpointLayout::Scan(safeshard::LocalFileSystem(), root + "/scan");
    uint64_t header_bytes = 0;
    std::ofstream cfg(root + "/curl-headers.cfg");
    cfg << "header = \"Authorization: Bearer " << kToken << "\"\n";
    for (size_t i = 0; i < local->files().size(); ++i) {
      const auto& f = local->files()[i];
      header_bytes += f.header->data_start();
      if (i) cfg << "next\nheader = \"Authorization: Bearer " << kToken << "\"\n";
      cfg << "url = \"" << base << "/scan/" << f.name << "\"\nrange = 0-"
          << f.header->data_start() - 1 << "\noutput = /dev/null\nsilent\nfail\n";
    }
    cfg.close();
    std::vector<double> ours, curl, local_scan;
    for (int r = 0; r < reps; ++r) {
      curl.push_back(
          TimeIt([&] { ShellOrDie(absl::StrCat("curl -K ", root, "/curl-headers.cfg")); }));
      local_scan.push_back(TimeIt([&] {
        (void)safeshard::CheckpointLayout::Scan(safeshard::LocalFileSystem(), root + "/scan");
      }));
      ours.push_back(TimeIt([&] {
        safeshard::HttpFileSystem fs(ho);
        auto ck = safeshard::CheckpointLayout::Scan(fs, base + "/scan");
        if (!ck.ok() || static_cast<int>(ck->tensors().size()) != tensors ||
            !ck->problems().empty()) {
          std::cerr << "remote scan failed: " << ck.status() << "\n";
          std::exit(1);
        }
      }));
    }
    std::cout << absl::StrFormat(
        "== remote header scan: %d tensors, %d files, %.1f MiB of headers ==\n", tensors, files,
        header_bytes / 1048576.0);
    std::cout << absl::StrFormat("curl (one process, keep-alive, header ranges): %.3f s\n",
                                 Median(curl));
    std::cout << absl::StrFormat("safeshard remote scan (list + ranged GETs)   : %.3f s\n",
                                 Median(ours));
    std::cout << absl::StrFormat("ratio safeshard / curl = %.2fx\n", Median(ours) / Median(curl));
    std::cout << std::flush;
    safeshard::bench::Result("remote header scan over loopback nginx",
                             absl::StrFormat("%.3f s", Median(ours)),
                             absl::StrFormat("curl %.3f s", Median(curl)),
                             absl::StrFormat("%.2fx curl time", Median(ours) / Median(curl)));
    std::cout << absl::StrFormat(
        "(the same scan of the local files: %.3f s; over http it adds %.3f s = %.2fx curl's "
        "transfer)\n",
        Median(local_scan), Median(ours) - Median(local_scan),
        (Median(ours) - Median(local_scan)) / Median(curl));
  }

  // ---- 2. 1 GiB load
  {
    const int64_t rows = 8192, cols = 4096;  // F32: 128 MiB per tensor
    const int n = std::max(1, static_cast<int>(gib * 8));
    std::vector<safeshard::ExampleTensor> model;
    for (int i = 0; i < n; ++i) {
      model.push_back({absl::StrCat("layers.", i, ".w"),
                       safeshard::DType::kF32,
                       {static_cast<uint64_t>(rows), static_cast<uint64_t>(cols)},
                       safeshard::Sharding::kRow});
    }
    absl::Status s = safeshard::WriteDcpCheckpoint(safeshard::LocalFileSystem(), root + "/load",
                                                   model, {.ranks = 4});
    if (!s.ok()) return std::cerr << s << "\n", 1;
    std::string curl_cmd = absl::StrCat(
        "curl -s --no-progress-meter --fail --parallel --parallel-max 8 -H 'Authorization: Bearer ",
        kToken, "'");
    uint64_t bytes = 0;
    for (const auto& e : std::filesystem::directory_iterator(root + "/load")) {
      if (e.path().extension() != ".safetensors") continue;
      bytes += e.file_size();
      absl::StrAppend(&curl_cmd, " ", base, "/load/", e.path().filename().string(),
                      " -o /dev/null");
    }
    ShellOrDie(
        absl::StrCat("cat ", root, "/load/*.safetensors > /dev/null"));  // warm the page cache
    std::vector<double> ours, curl;
    for (int r = 0; r < reps; ++r) {
      curl.push_back(TimeIt([&] { ShellOrDie(curl_cmd); }));
      std::vector<safeshard::LoadRequest> reqs;
      for (const auto& t : model) reqs.push_back({t.name, torch::empty({rows, cols}), {}});
      ours.push_back(TimeIt([&] {
        safeshard::HfStorageReader reader(base + "/load", nullptr, 4, nullptr, kToken);
        safeshard::LoadStats stats;
        absl::Status ls = reader.ReadData(reqs, &stats);
        if (!ls.ok()) {
          std::cerr << "remote load failed: " << ls << "\n";
          std::exit(1);
        }
      }));
    }
    std::cout << absl::StrFormat("== remote load: %.2f GiB in 4 files into %d full tensors ==\n",
                                 bytes / 1073741824.0, n);
    std::cout << absl::StrFormat("curl --parallel of the files: %.3f s (%.0f MiB/s)\n",
                                 Median(curl), bytes / 1048576.0 / Median(curl));
    std::cout << absl::StrFormat("HfStorageReader over http   : %.3f s (%.0f MiB/s)\n",
                                 Median(ours), bytes / 1048576.0 / Median(ours));
    std::cout << absl::StrFormat("ratio safeshard / curl = %.2fx\n", Median(ours) / Median(curl));
    std::cout << std::flush;
    safeshard::bench::Result("remote 1 GiB load with the HF reader",
                             absl::StrFormat("%.3f s", Median(ours)),
                             absl::StrFormat("curl --parallel %.3f s", Median(curl)),
                             absl::StrFormat("%.2fx curl time", Median(ours) / Median(curl)));
  }
  server->reset();
  std::filesystem::remove_all(root);
  return 0;
}
