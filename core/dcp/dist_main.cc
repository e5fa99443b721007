// safeshard-torch: safeshard's libtorch companion (the `safeshard` binary stays torch-free and
// runs this one for its torch subcommands, the way git runs git-<cmd>).
//
//   safeshard-torch dist-consolidate IN OUT --ranks R [consolidate options...]
//       spawns R processes that consolidate together over c10d (Gloo, FileStore rendezvous),
//       splitting the work by bytes; rank 0 publishes after every rank succeeded.
//   safeshard-torch dist-consolidate-rank IN OUT --rank r --world-size R --store F
//       one rank of the above (also usable under torchrun with --from-env).
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/consolidate/consolidate.h"
#include "core/dcp/c10d_collective.h"
#include "core/io/filesystem.h"

extern char** environ;

namespace {

int RankMain(const std::string& in, const std::string& out, int rank, int world,
             const std::string& store, bool from_env, int threads, const std::string& max_shard,
             double timeout_s) {
  safeshard::GroupOptions g;
  if (from_env) {
    absl::StatusOr<safeshard::GroupOptions> e = safeshard::GroupOptionsFromEnv();
    if (!e.ok()) {
      std::cerr << "safeshard-torch: " << e.status().message() << "\n";
      return 2;
    }
    g = *e;
  } else {
    g.rank = rank;
    g.world_size = world;
    g.file_store = store;
  }
  g.timeout = absl::Seconds(timeout_s);
  absl::StatusOr<std::unique_ptr<safeshard::Collective>> c = safeshard::NewC10dCollective(g);
  if (!c.ok()) {
    std::cerr << "safeshard-torch: " << c.status().message() << "\n";
    return 1;
  }
  safeshard::ConsolidateOptions o;
  o.threads = threads;
  o.verify = true;
  if (!max_shard.empty()) {
    absl::StatusOr<uint64_t> s = safeshard::ParseByteSize(max_shard);
    if (!s.ok()) {
      std::cerr << "safeshard-torch: " << s.status().message() << "\n";
      return 2;
    }
    o.max_shard_size = *s;
  }
  uint64_t mine = 0;
  o.progress = [&](uint64_t, uint64_t total) { mine = total; };
  absl::StatusOr<safeshard::ConsolidateResult> r =
      safeshard::Consolidate(safeshard::LocalFileSystem(), in, out, o, c->get());
  if (!r.ok()) {
    std::cerr << "safeshard-torch: rank " << g.rank << ": " << r.status().message() << "\n";
    return 1;
  }
  std::cout << absl::StrFormat("rank %d: copied %d bytes; %d bytes in %.2fs across %d ranks\n",
                               g.rank, mine, r->bytes, r->seconds, g.world_size);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"safeshard-torch: safeshard's libtorch companion (multi-process consolidation over c10d/Gloo)"};
  app.require_subcommand(1);
  std::string in, out, store, max_shard;
  int ranks = 2, rank = 0, world = 1, threads = 1;
  bool from_env = false;
  double timeout = 120;
  CLI::App* dist = app.add_subcommand(
      "dist-consolidate", "Consolidate with R cooperating processes over c10d (Gloo)");
  dist->add_option("IN", in)->required();
  dist->add_option("OUT", out)->required();
  dist->add_option("--ranks", ranks, "Number of processes")->check(CLI::Range(1, 256));
  CLI::App* one = app.add_subcommand("dist-consolidate-rank", "One rank of dist-consolidate");
  one->add_option("IN", in)->required();
  one->add_option("OUT", out)->required();
  one->add_option("--rank", rank);
  one->add_option("--world-size", world);
  one->add_option("--store", store, "FileStore rendezvous path");
  one->add_flag("--from-env", from_env, "Take RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT (torchrun)");
  for (CLI::App* a : {dist, one}) {
    a->add_option("--threads", threads, "Copy threads per process");
    a->add_option("--max-shard-size", max_shard, "Split outputs at this size");
    a->add_option("--timeout", timeout, "Seconds a rank waits for the others before failing");
  }
  CLI11_PARSE(app, argc, argv);
  if (one->parsed()) return RankMain(in, out, rank, world, store, from_env, threads, max_shard, timeout);

  // dist-consolidate: spawn the ranks (this binary again), FileStore next to the output.
  std::string rdzv = absl::StrCat("/tmp/safeshard-rdzv-", getpid());
  std::remove(rdzv.c_str());
  std::vector<pid_t> pids;
  for (int r = 0; r < ranks; ++r) {
    std::vector<std::string> args = {"/proc/self/exe", "dist-consolidate-rank", in, out,
                                     "--rank", std::to_string(r), "--world-size",
                                     std::to_string(ranks), "--store", rdzv, "--threads",
                                     std::to_string(threads), "--timeout", std::to_string(timeout)};
    if (!max_shard.empty()) {
      args.push_back("--max-shard-size");
      args.push_back(max_shard);
    }
    std::vector<char*> av;
    for (auto& a : args) av.push_back(a.data());
    av.push_back(nullptr);
    pid_t pid;
    if (posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, av.data(), environ) != 0) {
      std::cerr << "safeshard-torch: cannot start rank " << r << "\n";
      return 1;
    }
    pids.push_back(pid);
  }
  int worst = 0;
  for (pid_t p : pids) {
    int status = 0;
    waitpid(p, &status, 0);
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    worst = std::max(worst, code);
  }
  std::remove(rdzv.c_str());
  return worst;
}
