// daemon.h: safeshardd's engine — watch roots, detect finished runs, consolidate them in
// bounded concurrency with a crash-safe journal, and answer the control API.
//
//   ASSIGN_OR_RETURN(std::unique_ptr<Daemon> d, Daemon::Create(config));
//   RETURN_IF_ERROR(d->Start());   // watcher, scheduler, API server
//   ...                            // SIGTERM: d->Stop(); SIGHUP: d->Reload(new_config)
//
// Finished-run detection:
//   (a) safeshard's writer leaves `safeshard.complete.json` ({"ranks": R, "files": [{"name",
//       "size"}]}): the run is finished when every listed file has the listed size;
//   (b) PyTorch / Automodel writers leave no marker: shard rank indices dense 1..R, every header
//       valid, every tensor fully covered, nothing changed for the quiet period, and R equal to
//       expected_ranks when configured. Such runs are marked "inferred".
#ifndef SAFESHARD_DAEMON_DAEMON_H_
#define SAFESHARD_DAEMON_DAEMON_H_

#include <atomic>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "core/remap/keymap.h"
#include "daemon/api_server.h"
#include "daemon/config.h"
#include "daemon/store.h"
#include "daemon/watcher.h"
#include "nlohmann/json.hpp"

namespace safeshard::daemon {

inline constexpr char kCompletionManifest[] = "safeshard.complete.json";
// PyTorch's enable_consolidation writes shards to RUN/sharded/ and their consolidation to RUN.
inline constexpr char kShardedSubdir[] = "sharded";

// One JSON object per line on stderr: {"ts": ..., "level": ..., "msg": ..., ...fields}.
void Log(const std::string& level, const std::string& msg, nlohmann::json fields = {});

// Sends a state line (READY=1, STOPPING=1, WATCHDOG=1) to $NOTIFY_SOCKET, if set.
void NotifySystemd(const std::string& state);

class Daemon {
 public:
  static absl::StatusOr<std::unique_ptr<Daemon>> Create(Config config);
  ~Daemon();

  absl::Status Start();
  // Stops watching and scheduling; running jobs are cancelled and cleaned (or left to finish
  // when over 90% done); returns when every thread has ended.
  void Stop();
  void Reload(Config config);
  int port() const { return api_ ? api_->port() : 0; }

  // Control API operations (also used by the HTTP layer).
  nlohmann::json Health();
  nlohmann::json Runs();
  absl::StatusOr<nlohmann::json> Run(const std::string& id);
  nlohmann::json Jobs();
  std::string Metrics();
  absl::StatusOr<int64_t> RequestConsolidate(const std::string& run_id_or_path);
  absl::StatusOr<int64_t> RequestRemap(const std::string& run_id_or_path,
                                       const std::vector<KeyMap::Rule>& rules,
                                       const std::string& output);
  absl::Status CancelJob(int64_t id);
  void RequestRescan();
  bool CheckToken(const std::string& authorization_header) const;
  // Logs a failed journal write (never discarded silently) and counts it.
  void Journaled(const absl::Status& s, const char* what);
  std::atomic<uint64_t> journal_errors_{0};
  // A request path must resolve (symlinks too) to somewhere under a watch root.
  // `path` resolved (symlinks of its existing part included) when it lies under a watch root, or
  // under the output root too with `outputs`; kPermissionDenied otherwise.
  absl::StatusOr<std::string> ResolveUnderRoots(const std::string& path,
                                                bool outputs = false) const;

 private:
  explicit Daemon(Config c, std::unique_ptr<Store> s);
  struct ActiveJob {
    std::atomic<bool> cancel{false};
    std::atomic<uint64_t> done{0}, total{0};
    std::thread thread;
    bool finished = false;
  };

  void SchedulerLoop();
  void ScanRoots();
  void ScanTrees(std::vector<std::string> roots, bool recursive, int64_t now);
  void EvaluateRun(const std::string& dir, int64_t now);
  void StartDueJobs();
  void NoteDeadline(int64_t t);
  void RunJob(JobRecord job);
  void ApplyRetention(const RunRecord& run);
  std::string OutputFor(const std::string& run_dir) const;
  // Why a run needs a person before it can be consolidated (a symlinked shard or manifest, an
  // output outside the roots or on its source); empty when it can proceed.
  std::string WhyParked(const std::string& dir, const std::string& output) const;
  // Whether `output` holds an index published after every source file of `dir` last changed.
  bool PublishedAfterSources(const std::string& dir, const std::string& output) const;
  // Why `output` may not be written for the run at `source`; empty when it may.
  std::string WhyOutputRefused(const std::string& source, const std::string& output) const;
  absl::StatusOr<RunRecord> FindRun(const std::string& id_or_path);
  Config config() const;

  mutable absl::Mutex mu_;
  absl::Mutex requests_mu_;  // API requests that check, then add a job: one at a time
  Config config_;
  std::unique_ptr<Store> store_;
  std::string token_;
  std::atomic<bool> stopping_{false};
  // Under mu_: what the scheduler has to look at next.
  bool dirty_ = true;                  // a full rescan (start, overflow, API, timer)
  bool schedule_ = false;              // a job ended: start queued ones
  std::set<std::string> dirty_dirs_;   // directories with file events (looked at alone)
  std::set<std::string> dirty_trees_;  // directories that appeared (looked at recursively)
  int64_t last_full_scan_ms_ = 0;
  int64_t next_deadline_ms_ = 0;  // under mu_: earliest quiet-period end or retry (0: none)
  std::map<int64_t, std::unique_ptr<ActiveJob>> active_;  // under mu_
  std::thread scheduler_;
  std::unique_ptr<Watcher> watcher_;
  std::unique_ptr<ApiServer> api_;

  // Metrics.
  std::atomic<uint64_t> bytes_consolidated_{0}, jobs_published_{0}, jobs_failed_{0}, rescans_{0};
  std::atomic<double> seconds_total_{0};
  std::atomic<int> max_running_seen_{0};
};

}  // namespace safeshard::daemon

#endif  // SAFESHARD_DAEMON_DAEMON_H_
