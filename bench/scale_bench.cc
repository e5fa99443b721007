// Benchmark: how safeshard's costs grow with the number of ranks and tensors, up to 1,024 ranks
// and 1,000,000 tensors. Checkpoints are generated as sparse files: every header is real (what
// the scan reads), the tensor bytes are holes (no disk, no page cache). Each measurement runs in a
// fresh child process (peak memory is that process's ru_maxrss):
//   scan    CheckpointLayout::Scan (headers, validation, coverage of every tensor): what
//           `safeshard verify` and safeshardd's detection do;
//   plan    PlanConsolidation on the scanned layout (what consolidate does before copying);
// and, per row, the work split of a 4-process dist-consolidate (max/min bytes per process).
// Prints a Markdown table with the growth factor per 10x of work (1.0 = linear... a factor of
// 10 per 10x is linear; above it grows faster than linearly).
//
// With --safeshardd BIN, also the time safeshardd takes to detect a finished run of the largest
// rank count (rename into its watched root -> /v1/runs says queued).
//
// Usage: scale_bench [--max-ranks 1024] [--max-tensors 1000000] [--dir D] [--safeshardd BIN]
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/proc_util.h"
#include "core/consolidate/consolidate.h"
#include "core/format/filenames.h"
#include "core/format/header.h"
#include "core/format/manifest.h"
#include "core/format/sharding.h"
#include "core/io/atomic_file.h"
#include "core/io/filesystem.h"
#include "core/layout/layout.h"
#include "httplib.h"
#include "nlohmann/json.hpp"

namespace {

using Clock = std::chrono::steady_clock;

// Writes `ranks` per-rank files: `row_tensors` F32 [ranks * 4, 64] tensors row-sharded over all
// ranks (one chunk per rank each) and `single_tensors` F32 [16] tensors each saved by one rank
// (round robin), plus a completion manifest (ranks and sizes: no checksums).
bool Generate(const std::string& dir, int ranks, int row_tensors, int single_tensors) {
  if (!safeshard::LocalFileSystem().MakeDirs(dir).ok()) return false;
  safeshard::Manifest m;
  m.ranks = ranks;
  for (int r = 0; r < ranks; ++r) {
    safeshard::ShardingInfo info;
    std::vector<safeshard::TensorSpec> specs;
    for (int t = 0; t < row_tensors; ++t) {
      const std::string name = absl::StrCat("model.layers.", t / 8, ".w", t % 8, ".weight");
      specs.push_back({name, safeshard::DType::kF32, {4, 64}});
      info.saved_offsets[name] = {static_cast<uint64_t>(r) * 4, 0};
    }
    for (int t = r; t < single_tensors; t += ranks) {
      const std::string name = absl::StrCat("model.experts.", t, ".bias");
      specs.push_back({name, safeshard::DType::kF32, {16}});
      info.saved_offsets[name] = {0};
    }
    absl::StatusOr<safeshard::Header> h =
        safeshard::LayoutHeader(std::move(specs), safeshard::ShardedFileMetadata(info));
    if (!h.ok()) {
      std::cerr << h.status() << "\n";
      return false;
    }
    const std::string name = safeshard::ShardFileName(r, 1, 1);
    const std::string path = dir + "/" + name;
    const std::string head = safeshard::SerializeHeader(*h);
    const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || write(fd, head.data(), head.size()) != static_cast<ssize_t>(head.size()) ||
        ftruncate(fd, static_cast<off_t>(h->file_size())) != 0) {
      return false;
    }
    close(fd);
    m.files.push_back({name, h->file_size(), std::nullopt, {}});
  }
  return safeshard::WriteFileAtomically(safeshard::LocalFileSystem(),
                                        dir + "/" + std::string(safeshard::kManifestFileName),
                                        safeshard::SerializeManifest(m))
      .ok();
}

struct Row {
  int ranks = 0, tensors = 0;
  uint64_t chunks = 0, header_bytes = 0;
  double scan = 0, plan = 0;
  double peak_mib = 0;
  double balance = 0;  // max/min bytes per process of a 4-process dist-consolidate
  bool ok = false;
};

// Measures in a child: scan, plan, peak RSS; the balance from the plan.
Row Measure(const std::string& dir, int ranks, int tensors) {
  int pipefd[2];
  if (pipe(pipefd) != 0) return {};
  const pid_t pid = fork();
  if (pid == 0) {
    close(pipefd[0]);
    Row r;
    auto t0 = Clock::now();
    absl::StatusOr<safeshard::CheckpointLayout> ck =
        safeshard::CheckpointLayout::Scan(safeshard::LocalFileSystem(), dir);
    r.scan = std::chrono::duration<double>(Clock::now() - t0).count();
    if (ck.ok() && !ck->HasBlockingProblem() && ck->completeness().proven) {
      for (const safeshard::TensorLayout& t : ck->tensors()) r.chunks += t.chunks.size();
      for (const safeshard::FileInfo& f : ck->files())
        r.header_bytes += f.header ? f.header->data_start() : 0;
      t0 = Clock::now();
      absl::StatusOr<safeshard::ConsolidationPlan> plan = safeshard::PlanConsolidation(*ck, {});
      r.plan = std::chrono::duration<double>(Clock::now() - t0).count();
      if (plan.ok()) {
        std::vector<uint64_t> b = safeshard::BytesPerRank(*plan, 4);
        const uint64_t lo = *std::min_element(b.begin(), b.end());
        const uint64_t hi = *std::max_element(b.begin(), b.end());
        r.balance = lo > 0 ? static_cast<double>(hi) / static_cast<double>(lo) : 0;
        r.ok = true;
      }
    } else if (!ck.ok()) {
      std::cerr << ck.status() << "\n";
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    r.peak_mib = ru.ru_maxrss / 1024.0;
    (void)!write(pipefd[1], &r, sizeof(r));
    _exit(0);
  }
  close(pipefd[1]);
  Row r;
  if (read(pipefd[0], &r, sizeof(r)) != sizeof(r)) r.ok = false;
  close(pipefd[0]);
  waitpid(pid, nullptr, 0);
  r.ranks = ranks;
  r.tensors = tensors;
  return r;
}

double PerTenX(double t1, double t2, double n1, double n2) {
  if (t1 <= 0 || n2 <= n1) return 0;
  return std::pow(t2 / t1, 1.0 / std::log10(n2 / n1));
}

void PrintTable(const std::string& title, const std::vector<Row>& rows, bool by_ranks) {
  std::cout << "\n" << title << "\n\n";
  std::cout << "| ranks | tensors | chunks | header bytes | scan (verify) | x per 10x | plan | "
               "x per 10x | peak memory | 4-process balance (max/min bytes) |\n";
  std::cout << "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  for (size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    std::string g_scan = "", g_plan = "";
    if (i > 0) {
      const double n1 = static_cast<double>(rows[i - 1].chunks), n2 = static_cast<double>(r.chunks);
      g_scan = absl::StrFormat("%.1f", PerTenX(rows[i - 1].scan, r.scan, n1, n2));
      g_plan = absl::StrFormat("%.1f", PerTenX(rows[i - 1].plan, r.plan, n1, n2));
    }
    (void)by_ranks;
    std::cout << absl::StrFormat(
        "| %d | %d | %d | %.1f MB | %.3f s | %s | %.3f s | %s | %.0f MiB | %s |\n", r.ranks,
        r.tensors, r.chunks, r.header_bytes / 1e6, r.scan, g_scan, r.plan, g_plan, r.peak_mib,
        r.ok ? absl::StrFormat("%.3f", r.balance) : "failed");
  }
}

// safeshardd's detection of a finished run: the daemon watches an empty root; a finished
// `ranks`-rank run (generated beside it) is renamed into the root; the time until /v1/runs
// says it is finished (queued, running or published: detected, scanned, proven complete) is
// polled every 10 ms. Returns seconds, or a negative value on failure.
double DaemonDetection(const std::string& bin, const std::string& root, int ranks) {
  safeshard::FileSystem& fs = safeshard::LocalFileSystem();
  const std::string watch = root + "/watch", state = root + "/daemon-state";
  const std::string staging = absl::StrCat(root, "/staging-", ranks);
  if (!fs.MakeDirs(watch).ok() || !fs.MakeDirs(state).ok()) return -1;
  if (!Generate(staging, ranks, 1000, 0)) return -1;
  const safeshard::bench::Daemon daemon =
      safeshard::bench::StartSafeshardd(bin, watch, state, {"--max-jobs", "1"});
  if (daemon.pid < 0) {
    std::system(("rm -rf '" + watch + "' '" + state + "' '" + staging + "'").c_str());
    return -1;
  }
  const int port = daemon.port;
  httplib::Client c("127.0.0.1", port);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // its first (empty) scan
  const std::string run = absl::StrCat(watch, "/run-", ranks);
  double seconds = -1;
  auto t0 = Clock::now();
  if (port != 0 && rename(staging.c_str(), run.c_str()) == 0) {
    while (std::chrono::duration<double>(Clock::now() - t0).count() < 300) {
      auto r = c.Get("/v1/runs");
      bool found = false;
      if (r && r->status == 200) {
        nlohmann::json j = nlohmann::json::parse(r->body, nullptr, false);
        if (j.is_object() && j["runs"].is_array()) {
          for (const auto& x : j["runs"]) {
            found |= x["path"] == run && (x["state"] == "queued" || x["state"] == "running" ||
                                          x["state"] == "published");
          }
        }
      }
      if (found) {
        seconds = std::chrono::duration<double>(Clock::now() - t0).count();
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  kill(daemon.pid, SIGTERM);
  waitpid(daemon.pid, nullptr, 0);
  std::system(("rm -rf '" + watch + "' '" + state + "' '" + staging + "'").c_str());
  return seconds;
}

}  // namespace

int main(int argc, char** argv) {
  int max_ranks = 1024, max_tensors = 1000000;
  std::string daemon_bin;
  std::string root = absl::StrCat("/var/tmp/safeshard-scale-bench-", getpid());
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    if (k == "--max-ranks") max_ranks = std::atoi(argv[i + 1]);
    if (k == "--max-tensors") max_tensors = std::atoi(argv[i + 1]);
    if (k == "--dir") root = argv[i + 1];
    if (k == "--safeshardd") daemon_bin = argv[i + 1];
  }
  std::vector<Row> by_ranks, by_tensors;
  for (int ranks : {8, 64, 256, 1024}) {
    if (ranks > max_ranks) break;
    const std::string dir = absl::StrCat(root, "/ranks-", ranks);
    if (!Generate(dir, ranks, 1000, 0)) return 1;
    by_ranks.push_back(Measure(dir, ranks, 1000));
    std::system(("rm -rf " + dir).c_str());
  }
  for (int tensors : {1000, 10000, 100000, 1000000}) {
    if (tensors > max_tensors) break;
    const std::string dir = absl::StrCat(root, "/tensors-", tensors);
    if (!Generate(dir, 8, 0, tensors)) return 1;
    by_tensors.push_back(Measure(dir, 8, tensors));
    std::system(("rm -rf " + dir).c_str());
  }
  bool daemon_failed = false;
  double detected = -1;
  if (!daemon_bin.empty() && !by_ranks.empty()) {
    const int ranks = by_ranks.back().ranks;
    detected = DaemonDetection(daemon_bin, root, ranks);
    daemon_failed = detected < 0;
    if (daemon_failed) std::cerr << "safeshardd did not detect the run\n";
  }
  if (!daemon_failed && !daemon_bin.empty() && !by_ranks.empty()) {
    const int ranks = by_ranks.back().ranks;
    const double d = detected;
    std::cout << absl::StrFormat(
        "safeshardd: a finished %d-rank run detected and proven complete "
        "%.2f s after it appeared (the scan alone: %.2f s)\n",
        ranks, d, by_ranks.back().scan);
    safeshard::bench::Result(
        absl::StrFormat("safeshardd detects a finished %d-rank run (1,000 tensors)", ranks),
        absl::StrFormat("%.2f s from rename to queued", d),
        absl::StrFormat("the scan of that run %.2f s", by_ranks.back().scan),
        absl::StrFormat("%.2fx the scan", d / by_ranks.back().scan));
  }
  PrintTable("Ranks (1,000 tensors, each row-sharded over every rank):", by_ranks, true);
  PrintTable("Tensors (8 ranks, each tensor saved whole by one rank):", by_tensors, false);
  std::system(("rm -rf " + root).c_str());
  return daemon_failed ? 1 : 0;
}
