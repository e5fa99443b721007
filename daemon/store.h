// store.h: safeshardd's journal — runs and jobs in SQLite (WAL mode), so a restart after a crash
// or kill -9 resumes where it stopped. Thread-safe.
//
//   ASSIGN_OR_RETURN(std::unique_ptr<Store> s, Store::Open("/var/lib/safeshard/state.db"));
//   int64_t id = *s->AddJob(job);
#ifndef SAFESHARD_DAEMON_STORE_H_
#define SAFESHARD_DAEMON_STORE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

struct sqlite3;

namespace safeshard::daemon {

// Where a run stands. Stored (and shown by the API) as the names below; a journal holding any
// other name is not ours and is moved aside at start like a corrupt one.
enum class RunState {
  kIncomplete,  // not finished, or not provably finished yet (detail says why)
  kQueued,      // finished; a consolidation job is queued
  kRunning,     // a job is working on it
  kPublished,   // its output is published (detail: "published:<fingerprint>")
  kParked,      // needs a person (detail says why); nothing is written for it
  kFailed,      // its job failed for good
};
enum class JobState { kQueued, kRunning, kVerifying, kPublished, kFailed, kParked, kCancelled };
enum class JobKind { kConsolidate, kRemap };

const char* Name(RunState s);
const char* Name(JobState s);
const char* Name(JobKind k);
std::optional<RunState> ParseRunState(absl::string_view s);
std::optional<JobState> ParseJobState(absl::string_view s);
std::optional<JobKind> ParseJobKind(absl::string_view s);

struct RunRecord {
  std::string id;  // stable: derived from the path
  std::string path;
  std::string detection;  // "manifest" (safeshard writer) or "inferred" (no marker)
  RunState state = RunState::kIncomplete;
  std::string fingerprint;  // files, sizes and mtimes when last looked at
  int64_t last_change_ms = 0;
  int64_t first_seen_ms = 0;
  std::string output;
  std::string detail;  // why incomplete/parked, or the published index
};

struct JobRecord {
  int64_t id = 0;
  std::string run_id;
  JobKind kind = JobKind::kConsolidate;
  JobState state = JobState::kQueued;
  std::string output;
  std::string rules;  // remap rules (JSON)
  int64_t bytes_done = 0, bytes_total = 0;
  std::string error;
  bool retryable = false;
  int attempts = 0;
  int64_t next_attempt_ms = 0;
  int64_t created_ms = 0, started_ms = 0, finished_ms = 0;
  double seconds = 0;
  int64_t verify_bytes = 0;
};

class Store {
 public:
  // Opens (creating) the journal and runs SQLite's quick_check. A corrupt journal is moved aside
  // as `<path>.corrupt-<unix time>` (with its -wal/-shm files) and a fresh one is created: the
  // daemon rebuilds its state from the file system (published outputs and manifests are the
  // truth). `recovered`, when given, receives a description of what was moved aside (else "").
  static absl::StatusOr<std::unique_ptr<Store>> Open(const std::string& path,
                                                     std::string* recovered = nullptr);
  ~Store();

  absl::Status UpsertRun(const RunRecord& r);
  absl::StatusOr<std::optional<RunRecord>> GetRun(const std::string& id);
  absl::StatusOr<std::vector<RunRecord>> ListRuns();

  absl::StatusOr<int64_t> AddJob(JobRecord j);
  absl::Status UpdateJob(const JobRecord& j);
  absl::StatusOr<std::optional<JobRecord>> GetJob(int64_t id);
  absl::StatusOr<std::vector<JobRecord>> ListJobs();

  // Jobs left running/verifying by a previous process: returned, and re-queued.
  absl::StatusOr<std::vector<JobRecord>> RequeueInterrupted();

 private:
  explicit Store(sqlite3* db) : db_(db) {}
  absl::Status Exec(const std::string& sql);
  absl::Mutex mu_;
  sqlite3* db_;
};

int64_t NowMs();

}  // namespace safeshard::daemon

#endif  // SAFESHARD_DAEMON_STORE_H_
