// jobs.cc: safeshardd's scheduler and job runner — starts queued jobs within the concurrency
// bound, runs consolidations and remaps, records the outcome, retries with backoff, applies
// retention.
#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "core/consolidate/consolidate.h"
#include "core/format/filenames.h"
#include "core/format/manifest.h"
#include "core/io/atomic_file.h"
#include "core/io/filesystem.h"
#include "core/layout/layout.h"
#include "core/remap/remap.h"
#include "daemon/daemon.h"
#include "daemon/internal.h"

namespace safeshard::daemon {

using namespace detail;  // NOLINT(build/namespaces): the daemon's own helpers
using nlohmann::json;

void Daemon::StartDueJobs() {
  absl::StatusOr<std::vector<JobRecord>> jobs = store_->ListJobs();
  if (!jobs.ok()) return;
  const int64_t now = NowMs();
  Config c = config();
  absl::MutexLock l(&mu_);
  // Reap finished job threads.
  for (auto it = active_.begin(); it != active_.end();) {
    if (it->second->finished) {
      if (it->second->thread.joinable()) it->second->thread.join();
      it = active_.erase(it);
    } else {
      ++it;
    }
  }
  for (const JobRecord& j : *jobs) {
    if (static_cast<int>(active_.size()) >= c.max_concurrent_jobs) break;
    bool waiting_retry = j.state == JobState::kFailed && j.retryable && j.attempts < c.max_attempts;
    if (waiting_retry && j.next_attempt_ms > now &&
        (next_deadline_ms_ == 0 || j.next_attempt_ms < next_deadline_ms_)) {
      next_deadline_ms_ = j.next_attempt_ms;
    }
    bool due = j.state == JobState::kQueued || (waiting_retry && j.next_attempt_ms <= now);
    if (!due || active_.count(j.id)) continue;
    auto a = std::make_unique<ActiveJob>();
    ActiveJob* raw = a.get();
    active_[j.id] = std::move(a);
    max_running_seen_ = std::max<int>(max_running_seen_, static_cast<int>(active_.size()));
    raw->thread = std::thread([this, j] { RunJob(j); });
  }
}

void Daemon::SchedulerLoop() {
  // Sleeps until something happens (an inotify event, an API call, a job ending) or a deadline
  // passes (periodic rescan, end of a run's quiet period, a retry's backoff): no polling, so an
  // idle daemon costs no CPU between rescans.
  const char* wd = std::getenv("WATCHDOG_USEC");
  const int64_t watchdog_ms = wd ? std::atoll(wd) / 2000 : 0;
  int64_t last_watchdog = 0;
  while (!stopping_) {
    bool scan = false, schedule = false;
    std::set<std::string> dirs, trees;
    {
      absl::MutexLock l(&mu_);
      const int64_t now = NowMs();
      int64_t next =
          last_full_scan_ms_ + static_cast<int64_t>(config_.rescan_interval_seconds * 1000);
      if (next_deadline_ms_ > 0) next = std::min(next, next_deadline_ms_);
      if (watchdog_ms > 0) next = std::min(next, last_watchdog + watchdog_ms);
      auto wake = [this] {
        return dirty_ || schedule_ || !dirty_dirs_.empty() || !dirty_trees_.empty() ||
               stopping_.load();
      };
      if (!wake() && next > now) {
        mu_.AwaitWithTimeout(absl::Condition(&wake), absl::Milliseconds(next - now));
      }
      dirs.swap(dirty_dirs_);
      trees.swap(dirty_trees_);
      schedule = schedule_ || !dirs.empty() || !trees.empty();
      schedule_ = false;
      const int64_t t = NowMs();
      if (dirty_ || t - last_full_scan_ms_ >= config_.rescan_interval_seconds * 1000 ||
          (next_deadline_ms_ > 0 && t >= next_deadline_ms_)) {
        scan = true;
        schedule = true;
        dirty_ = false;
        next_deadline_ms_ = 0;
        last_full_scan_ms_ = t;
      }
    }
    if (stopping_) break;
    if (watchdog_ms > 0 && NowMs() - last_watchdog >= watchdog_ms) {
      NotifySystemd("WATCHDOG=1");
      last_watchdog = NowMs();
    }
    if (scan) {
      ScanRoots();
    } else if (!dirs.empty() || !trees.empty()) {
      // Only where something happened: cheap however many finished runs lie under the roots.
      ScanTrees(std::vector<std::string>(trees.begin(), trees.end()), true, NowMs());
      ScanTrees(std::vector<std::string>(dirs.begin(), dirs.end()), false, NowMs());
    }
    if (schedule) StartDueJobs();
  }
}

void Daemon::NoteDeadline(int64_t t) {
  absl::MutexLock l(&mu_);
  if (next_deadline_ms_ == 0 || t < next_deadline_ms_) next_deadline_ms_ = t;
}

void Daemon::RunJob(JobRecord j) {
  ActiveJob* a;
  {
    absl::MutexLock l(&mu_);
    a = active_.at(j.id).get();
  }
  Config c = config();
  absl::StatusOr<std::optional<RunRecord>> run_or = store_->GetRun(j.run_id);
  RunRecord run = run_or.ok() && run_or->has_value() ? **run_or : RunRecord{};
  if (std::string refused = WhyOutputRefused(run.path, j.output); !refused.empty()) {
    // The output was fine when the job was queued and is not now (e.g. a directory swapped for a
    // symlink): nothing is written.
    j.state = JobState::kFailed;
    j.retryable = false;
    j.error = refused;
    j.finished_ms = NowMs();
    Journaled(store_->UpdateJob(j), "UpdateJob");
    Log("error", "job refused: its output is not safe to write", {{"job", j.id}, {"why", refused}});
    if (j.kind == JobKind::kConsolidate && !run.id.empty()) {
      // The run needs a person now: shown as parked with the reason, never "queued" forever.
      run.state = RunState::kParked;
      run.detail = refused;
      Journaled(store_->UpsertRun(run), "UpsertRun");
    }
    absl::MutexLock l(&mu_);
    a->finished = true;
    schedule_ = true;
    return;
  }
  j.state = JobState::kRunning;
  j.attempts++;
  j.started_ms = NowMs();
  j.error.clear();
  Journaled(store_->UpdateJob(j), "UpdateJob");
  // A remap job is about its output only: its source run's state is the consolidation's.
  const bool owns_run = j.kind == JobKind::kConsolidate;
  const RunRecord run_before = run;
  if (owns_run) {
    run.state = RunState::kRunning;
    Journaled(store_->UpsertRun(run), "UpsertRun");
  }
  Log("info", "job started",
      {{"job", j.id}, {"run", run.id}, {"kind", Name(j.kind)}, {"attempt", j.attempts}});

  bool shards, manifest;
  std::string fp_before = Fingerprint(run.path, &shards, &manifest);
  absl::Status status;
  int64_t last_db = 0;
  if (j.kind == JobKind::kRemap) {
    absl::StatusOr<KeyMap> km = KeyMap::FromJson(j.rules);
    if (!km.ok()) {
      status = km.status();
    } else {
      RemapOptions ro;
      ro.cancel = &a->cancel;
      ro.overwrite = true;
      status = Remap(RootsFs(), run.path, j.output, *km, ro).status();
    }
  } else {
    // The one typed spec (validated at start and reload), resolved here: a reference model
    // that cannot be read fails the job with its error, never "one file".
    absl::StatusOr<std::unique_ptr<ResolvedConsolidation>> resolved =
        ResolveConsolidateSpec(LocalFileSystem(), c.ConsolidateSpecFor(run.path));
    if (!resolved.ok()) status = resolved.status();
    ConsolidateOptions o = resolved.ok() ? (*resolved)->options : ConsolidateOptions{};
    o.cancel = &a->cancel;
    o.progress = [&](uint64_t done, uint64_t total) {
      a->done = done;
      a->total = total;
      int64_t now = NowMs();
      if (now - last_db > 1000 || done == total) {
        last_db = now;
        j.bytes_done = static_cast<int64_t>(done);
        j.bytes_total = static_cast<int64_t>(total);
        if (done == total) j.state = JobState::kVerifying;
        Journaled(store_->UpdateJob(j), "UpdateJob");
      }
    };
    if (status.ok()) {
      absl::StatusOr<ConsolidateResult> r = Consolidate(RootsFs(), run.path, j.output, o);
      status = r.status();
      if (r.ok()) {
        j.seconds = r->seconds;
        j.bytes_total = j.bytes_done = static_cast<int64_t>(r->bytes);
        if (r->verify) j.verify_bytes = static_cast<int64_t>(r->verify->bytes_checked);
        bytes_consolidated_ += r->bytes;
        seconds_total_ = seconds_total_ + r->seconds;
      }
    }
  }
  std::string fp_after = Fingerprint(run.path, &shards, &manifest);
  if (status.ok() && fp_after != fp_before) {
    // The run changed under us: the output does not describe it; withdraw the done signal.
    if (absl::StatusOr<std::unique_ptr<FileSystem>> out = RootsFs().OpenBeneath(j.output);
        out.ok()) {
      if (absl::Status s = (*out)->Remove(std::string(kIndexFileName)); !s.ok()) {
        Log("error", "could not withdraw the index of an output whose run changed",
            {{"output", j.output}, {"error", std::string(s.message())}});
      }
    }
    status = absl::AbortedError("the run changed while it was being consolidated; will retry");
  }
  j.finished_ms = NowMs();
  if (status.ok()) {
    j.state = JobState::kPublished;
    j.error.clear();
    jobs_published_++;
    if (j.kind == JobKind::kConsolidate) {
      run.state = RunState::kPublished;
      run.detail = "published:" + fp_after;
    } else if (run.state == RunState::kRunning) {
      run.state = RunState::kPublished;
    }
    Log("info", "job published",
        {{"job", j.id},
         {"run", run.id},
         {"output", j.output},
         {"bytes", j.bytes_total},
         {"seconds", j.seconds}});
  } else {
    jobs_failed_++;
    j.error = std::string(status.message());
    switch (status.code()) {
      case absl::StatusCode::kFailedPrecondition:
      case absl::StatusCode::kInvalidArgument:
        j.state = JobState::kParked;  // needs a person: coverage gap, conflicting keys, bad options
        j.retryable = false;
        run.state = RunState::kParked;
        run.detail = j.error;
        break;
      case absl::StatusCode::kCancelled:
        if (stopping_) {
          j.state = JobState::kQueued;  // the daemon is stopping: resume on the next start
        } else {
          j.state = JobState::kCancelled;
          run.state = RunState::kParked;
          run.detail = "cancelled through the API";
        }
        j.retryable = false;
        break;
      default:
        j.state = JobState::kFailed;
        j.retryable = j.attempts < c.max_attempts;
        j.next_attempt_ms = NowMs() + BackoffMs(j.attempts);
        run.state = j.retryable ? RunState::kQueued : RunState::kFailed;
        run.detail = j.error;
        break;
    }
    Log(j.state == JobState::kQueued ? "info" : "error", "job did not publish",
        {{"job", j.id},
         {"run", run.id},
         {"state", Name(j.state)},
         {"error", j.error},
         {"retryable", j.retryable},
         {"next_attempt_ms", j.next_attempt_ms}});
  }
  Journaled(store_->UpdateJob(j), "UpdateJob");
  if (owns_run) {
    Journaled(store_->UpsertRun(run), "UpsertRun");
  } else {
    run = run_before;  // untouched by a remap's outcome
  }
  if (status.ok() && j.kind == JobKind::kConsolidate) ApplyRetention(run);
  absl::MutexLock l(&mu_);
  a->finished = true;
  schedule_ = true;
}

void Daemon::ApplyRetention(const RunRecord& run) {
  Config c = config();
  if (c.retention == "keep") return;
  auto drop_sources = [](const std::string& dir) {
    // Deletions through the run's own descriptor, reached through no symlink: a directory on the
    // way swapped for a link cannot point them at another directory's files.
    absl::StatusOr<std::unique_ptr<FileSystem>> run_dir = RootsFs().OpenBeneath(dir);
    if (!run_dir.ok()) {
      Log("warning", "retention skipped a run",
          {{"path", dir}, {"error", std::string(run_dir.status().message())}});
      return;
    }
    absl::StatusOr<std::vector<DirEntry>> entries = (*run_dir)->List("");
    if (!entries.ok()) return;
    for (const DirEntry& e : *entries) {
      if (!e.is_symlink && (IsShardName(e.name) || e.name == kCompletionManifest)) {
        if (absl::Status s = (*run_dir)->Remove(e.name); !s.ok()) {
          Log("warning", "retention could not remove a source file",
              {{"path", dir}, {"error", std::string(s.message())}});
        }
      }
    }
    Log("info", "removed source shards after a verified consolidation", {{"path", dir}});
  };
  if (c.retention == "delete") {
    drop_sources(run.path);
    return;
  }
  // keep_last K: among published runs in the same parent directory, keep the newest K sources.
  absl::StatusOr<std::vector<RunRecord>> runs = store_->ListRuns();
  if (!runs.ok()) return;
  std::vector<RunRecord> siblings;
  for (const RunRecord& r : *runs) {
    if (r.state == RunState::kPublished && DirName(r.path) == DirName(run.path))
      siblings.push_back(r);
  }
  std::sort(siblings.begin(), siblings.end(), [](const RunRecord& a, const RunRecord& b) {
    return a.last_change_ms > b.last_change_ms;
  });
  for (size_t i = c.keep_last; i < siblings.size(); ++i) drop_sources(siblings[i].path);
}

}  // namespace safeshard::daemon
