// Process helpers for whole-process benchmarks: run a command, time it, and sample its peak
// anonymous memory (heap and stacks, excluding file mappings) from /proc.
#ifndef SAFESHARD_BENCH_PROC_UTIL_H_
#define SAFESHARD_BENCH_PROC_UTIL_H_

#include <fcntl.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace safeshard::bench {

// One row of bench/results.md (bench/run.sh collects these lines into one Markdown table): what
// was measured, against which baseline measured in the same run, and the ratio.
inline void Result(const std::string& benchmark, const std::string& measured,
                   const std::string& baseline, const std::string& ratio) {
  std::printf("RESULT|%s|%s|%s|%s\n", benchmark.c_str(), measured.c_str(), baseline.c_str(),
              ratio.c_str());
  std::fflush(stdout);
}

inline double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Seconds `f` takes.
inline double TimeIt(const std::function<void()>& f) {
  auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Runs a shell command; a failure ends the benchmark (a timing of a failed command is no baseline).
inline void ShellOrDie(const std::string& cmd) {
  const int rc = std::system(cmd.c_str());
  if (rc != 0) {
    std::fprintf(stderr, "command failed (%d): %s\n", rc, cmd.c_str());
    std::exit(1);
  }
}

// Seconds a shell command takes (it must succeed).
inline double TimeCommand(const std::string& cmd) {
  return TimeIt([&] { ShellOrDie(cmd); });
}

struct RunStats {
  double seconds = 0;
  uint64_t max_rss_kib = 0;    // ru_maxrss: includes touched file-mapped pages
  uint64_t peak_anon_kib = 0;  // sampled RssAnon: heap, stacks, anonymous mappings
  int exit_code = -1;
};

inline uint64_t ReadRssAnonKib(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("RssAnon:", 0) == 0) return std::stoull(line.substr(8));
  }
  return 0;
}

inline RunStats Run(const std::vector<std::string>& args, bool quiet = true) {
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  if (quiet) posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  RunStats st;
  auto t0 = std::chrono::steady_clock::now();
  pid_t pid;
  if (posix_spawnp(&pid, argv[0], &fa, nullptr, argv.data(), environ) != 0) {
    std::fprintf(stderr, "cannot run %s\n", args[0].c_str());
    return st;
  }
  posix_spawn_file_actions_destroy(&fa);
  int status = 0;
  struct rusage ru;
  while (true) {
    pid_t r = wait4(pid, &status, WNOHANG, &ru);
    if (r == pid) break;
    uint64_t anon = ReadRssAnonKib(pid);
    if (anon > st.peak_anon_kib) st.peak_anon_kib = anon;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  st.max_rss_kib = static_cast<uint64_t>(ru.ru_maxrss);
  st.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return st;
}

// A safeshardd started for a benchmark: watching `watch`, its database, token and port file in
// `state` (which must exist), no quiet period, stderr silenced, plus `extra` flags. Waits up to
// 5 s for its API port. pid -1 when it cannot be started.
struct Daemon {
  pid_t pid = -1;
  int port = 0;
};
inline Daemon StartSafeshardd(const std::string& bin, const std::string& watch,
                              const std::string& state, const std::vector<std::string>& extra) {
  std::vector<std::string> args = {bin,
                                   "--watch",
                                   watch,
                                   "--state-db",
                                   state + "/db",
                                   "--token-file",
                                   state + "/token",
                                   "--port",
                                   "0",
                                   "--port-file",
                                   state + "/port",
                                   "--quiet-period",
                                   "0"};
  args.insert(args.end(), extra.begin(), extra.end());
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  Daemon d;
  const int r = posix_spawn(&d.pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (r != 0) {
    d.pid = -1;
    return d;
  }
  for (int i = 0; i < 500 && d.port == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    std::ifstream f(state + "/port");
    if (!(f >> d.port)) d.port = 0;
  }
  return d;
}

}  // namespace safeshard::bench

#endif  // SAFESHARD_BENCH_PROC_UTIL_H_
