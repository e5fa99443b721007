// Benchmark: idle cost of safeshardd with 1,000 finished (already consolidated) runs under its
// root and nothing changing. Reports the daemon's CPU time (user + system, from /proc) over a
// window between rescans and per full rescan, against the window's wall time.
//
// Usage: daemon_idle_bench SAFESHARDD_BINARY [--runs N] [--rescan S] [--window S]
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/proc_util.h"
#include "core/example/example.h"
#include "core/io/filesystem.h"
#include "httplib.h"
#include "nlohmann/json.hpp"

namespace {

double CpuSeconds(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::istringstream is(s.substr(s.rfind(')') + 2));
  std::string field;
  unsigned long long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && is >> field; ++i) {
    if (i == 14) utime = std::stoull(field);
    if (i == 15) stime = std::stoull(field);
  }
  return static_cast<double>(utime + stime) / sysconf(_SC_CLK_TCK);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr
        << "usage: daemon_idle_bench SAFESHARDD_BINARY [--runs N] [--rescan S] [--window S]\n";
    return 2;
  }
  int runs = 1000;
  double rescan = 60, window = 30;
  for (int i = 2; i + 1 < argc; i += 2) {
    std::string k = argv[i];
    if (k == "--runs") runs = std::atoi(argv[i + 1]);
    if (k == "--rescan") rescan = std::atof(argv[i + 1]);
    if (k == "--window") window = std::atof(argv[i + 1]);
  }
  std::string root = absl::StrCat("/var/tmp/safeshard-idle-bench-", getpid());
  safeshard::FileSystem& fs = safeshard::LocalFileSystem();
  std::vector<safeshard::ExampleTensor> model = {
      {"w", safeshard::DType::kF32, {8, 8}, safeshard::Sharding::kRow},
      {"b", safeshard::DType::kF32, {8}, safeshard::Sharding::kReplicated}};
  std::cout << "writing " << runs << " runs under " << root << "\n";
  for (int i = 0; i < runs; ++i) {
    if (!safeshard::WriteDcpCheckpoint(fs, absl::StrCat(root, "/runs/exp", i / 100, "/step-", i),
                                       model, {.ranks = 2})
             .ok()) {
      return 1;
    }
  }
  std::string state = root + "/state";
  (void)fs.MakeDirs(state);
  const safeshard::bench::Daemon daemon = safeshard::bench::StartSafeshardd(
      argv[1], root + "/runs", state,
      {"--rescan-interval", absl::StrCat(rescan), "--max-jobs", "2"});
  if (daemon.pid < 0 || daemon.port == 0) return 1;
  const pid_t pid = daemon.pid;
  const int port = daemon.port;
  httplib::Client c("127.0.0.1", port);
  auto t0 = std::chrono::steady_clock::now();
  while (true) {
    auto r = c.Get("/v1/jobs");
    int published = 0;
    if (r) {
      auto j = nlohmann::json::parse(r->body);
      for (const auto& job : j["jobs"]) published += job["state"] == "published";
    }
    if (published == runs) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  double settle = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::cout << absl::StrFormat("all %d runs consolidated in %.1f s\n", runs, settle);
  std::this_thread::sleep_for(std::chrono::seconds(2));
  double cpu0 = CpuSeconds(pid);
  std::this_thread::sleep_for(std::chrono::duration<double>(window));
  double cpu1 = CpuSeconds(pid);
  int rescans_in_window = static_cast<int>(window / rescan);
  std::cout << absl::StrFormat(
      "idle window %.0f s (rescan every %.0f s, ~%d rescans in it): daemon CPU %.3f s = %.3f%% of "
      "one core\n",
      window, rescan, rescans_in_window, cpu1 - cpu0, 100.0 * (cpu1 - cpu0) / window);
  // Cost of one full rescan of the 1,000 runs.
  double cpu2 = CpuSeconds(pid);
  auto h = c.Post("/v1/rescan",
                  {{"Authorization", "Bearer " + fs.ReadAll(state + "/token").value_or("")}}, "",
                  "application/json");
  std::this_thread::sleep_for(std::chrono::seconds(3));
  double cpu3 = CpuSeconds(pid);
  std::cout << absl::StrFormat("one forced full rescan of %d runs: %.3f s CPU\n", runs,
                               cpu3 - cpu2);
  std::cout << std::flush;
  safeshard::bench::Result(absl::StrFormat("safeshardd idle, %d finished runs", runs),
                           absl::StrFormat("%.3f s CPU in %.0f s", cpu1 - cpu0, window),
                           "one core over the same window",
                           absl::StrFormat("%.3f%% of a core; a full rescan %.3f s CPU",
                                           100.0 * (cpu1 - cpu0) / window, cpu3 - cpu2));
  kill(pid, SIGTERM);
  waitpid(pid, nullptr, 0);
  if (std::system(("rm -rf " + root).c_str()) != 0) std::cerr << "cleanup failed\n";
  return 0;
}
