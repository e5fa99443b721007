// safeshardd: watches training output directories and consolidates every finished run.
// See `safeshardd --help` and README.md.
#include <signal.h>

#include <iostream>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "core/io/atomic_file.h"
#include "core/io/filesystem.h"
#include "core/util/rlimit.h"
#include "core/util/version.h"
#include "daemon/config.h"
#include "daemon/daemon.h"

namespace {

struct Flags {
  std::string config_file, state_db, api_address, token_file, port_file, output_template,
      output_root, max_shard_size;
  std::vector<std::string> watch;
  int port = -1, max_jobs = 0, threads_per_job = 0, expected_ranks = -1;
  double quiet = -1, rescan = -1;
};

absl::StatusOr<safeshard::daemon::Config> LoadConfig(const Flags& f) {
  safeshard::daemon::Config c;
  if (!f.config_file.empty()) {
    absl::StatusOr<std::string> text = safeshard::ReadOptionFile(f.config_file);
    if (!text.ok()) return text.status();
    absl::StatusOr<safeshard::daemon::Config> parsed = safeshard::daemon::ParseConfig(*text);
    if (!parsed.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(f.config_file, ": ", parsed.status().message()));
    }
    c = *parsed;
  }
  for (const std::string& w : f.watch) c.watch_roots.push_back(w);
  if (!f.state_db.empty()) c.state_db = f.state_db;
  if (!f.api_address.empty()) c.api_address = f.api_address;
  if (!f.token_file.empty()) c.token_file = f.token_file;
  if (!f.output_template.empty()) c.output_template = f.output_template;
  if (!f.output_root.empty()) c.output_root = f.output_root;
  if (!f.max_shard_size.empty()) {
    c.files_mode = "max_shard_size";
    c.max_shard_size = f.max_shard_size;
  }
  if (f.port >= 0) c.api_port = f.port;
  if (f.max_jobs > 0) c.max_concurrent_jobs = f.max_jobs;
  if (f.threads_per_job > 0) c.threads_per_job = f.threads_per_job;
  if (f.expected_ranks >= 0) c.expected_ranks = f.expected_ranks;
  if (f.quiet >= 0) c.quiet_period_seconds = f.quiet;
  if (f.rescan > 0) c.rescan_interval_seconds = f.rescan;
  // Flags go through the same checks as the file (e.g. --max-shard-size 5XB is refused here,
  // not discovered by every job).
  absl::Status valid = safeshard::daemon::ValidateConfig(c);
  if (!valid.ok()) return valid;
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  safeshard::RaiseOpenFileLimit();  // 1,000+ rank files
  CLI::App app{
      "safeshardd: watches training output directories and consolidates each finished run of "
      "per-rank DCP shards into the HF layout, crash-safely, with a local HTTP control API "
      "(GET /v1/health /v1/runs /v1/runs/{id} /v1/jobs /metrics; POST /v1/runs/{id}/consolidate "
      "/v1/runs/{id}/remap /v1/rescan /v1/jobs/{id}/cancel with the bearer token). SIGTERM stops "
      "cleanly, SIGHUP reloads the configuration.",
      "safeshardd"};
  Flags f;
  app.set_version_flag("--version", std::string("safeshardd ") + safeshard::kVersion);
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.add_option("--config", f.config_file, "JSON configuration file (see README)");
  app.add_option("--watch", f.watch, "Directory to watch, recursively (repeatable)")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  app.add_option("--state-db", f.state_db,
                 "SQLite journal (default ~/.local/state/safeshard/safeshardd.db)");
  app.add_option("--api-address", f.api_address, "Address to listen on (default 127.0.0.1)");
  app.add_option("--port", f.port, "API port (default 8470; 0 picks a free one)");
  app.add_option("--port-file", f.port_file, "Write the API port here once listening");
  app.add_option("--token-file", f.token_file, "Bearer token file, created 0600 if missing");
  app.add_option("--output-root", f.output_root,
                 "Directory outputs may also be written under (default: only inside the watch "
                 "roots; the daemon writes nowhere else)");
  app.add_option("--output-template", f.output_template,
                 "Where output goes: {parent}/{name}-hf by default ({root} also known)");
  app.add_option("--max-shard-size", f.max_shard_size, "Split outputs at this size (e.g. 5GB)");
  app.add_option("--max-jobs", f.max_jobs, "Concurrent consolidations (default 2)");
  app.add_option("--threads-per-job", f.threads_per_job, "Copy threads per job (default 2)");
  app.add_option("--expected-ranks", f.expected_ranks, "Rank files a run must have (0: any)");
  app.add_option("--quiet-period", f.quiet,
                 "Seconds a marker-less run must stay unchanged (default 30)");
  app.add_option("--rescan-interval", f.rescan, "Seconds between full rescans (default 60)");
  CLI11_PARSE(app, argc, argv);

  // Signals are taken synchronously by this thread; every other thread blocks them.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);

  absl::StatusOr<safeshard::daemon::Config> cfg = LoadConfig(f);
  if (!cfg.ok()) {
    safeshard::daemon::Log("error", std::string(cfg.status().message()));
    return 2;
  }
  absl::StatusOr<std::unique_ptr<safeshard::daemon::Daemon>> d =
      safeshard::daemon::Daemon::Create(*cfg);
  if (!d.ok()) {
    safeshard::daemon::Log("error", std::string(d.status().message()));
    return 2;
  }
  absl::Status st = (*d)->Start();
  if (!st.ok()) {
    safeshard::daemon::Log("error", std::string(st.message()));
    return 1;
  }
  if (!f.port_file.empty()) {
    (void)safeshard::WriteFileAtomically(safeshard::LocalFileSystem(), f.port_file,
                                         std::to_string((*d)->port()));
  }
  safeshard::daemon::NotifySystemd("READY=1");
  while (true) {
    int sig = 0;
    sigwait(&set, &sig);
    if (sig == SIGHUP) {
      absl::StatusOr<safeshard::daemon::Config> again = LoadConfig(f);
      if (again.ok()) {
        (*d)->Reload(*again);
      } else {
        safeshard::daemon::Log("error", "configuration not reloaded",
                               {{"error", std::string(again.status().message())}});
      }
      continue;
    }
    safeshard::daemon::Log("info", "stopping", {{"signal", sig}});
    safeshard::daemon::NotifySystemd("STOPPING=1");
    (*d)->Stop();
    safeshard::daemon::Log("info", "stopped");
    return 0;
  }
}
