#include "daemon/store.h"

#include <cstring>

#include <ctime>

#include <unistd.h>

#include <sys/stat.h>

#include <sqlite3.h>

#include <chrono>
#include <functional>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace safeshard::daemon {
namespace {

// Minimal RAII prepared statement.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) : db_(db) {
    rc_ = sqlite3_prepare_v2(db, sql, -1, &s_, nullptr);
  }
  ~Stmt() { sqlite3_finalize(s_); }
  bool ok() const { return rc_ == SQLITE_OK; }
  absl::Status error() const {
    return absl::InternalError(absl::StrCat("sqlite: ", sqlite3_errmsg(db_)));
  }
  Stmt& Bind(int i, const std::string& v) {
    sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& Bind(int i, int64_t v) {
    sqlite3_bind_int64(s_, i, v);
    return *this;
  }
  Stmt& Bind(int i, double v) {
    sqlite3_bind_double(s_, i, v);
    return *this;
  }
  int Step() { return sqlite3_step(s_); }
  std::string Text(int c) {
    const unsigned char* t = sqlite3_column_text(s_, c);
    return t ? std::string(reinterpret_cast<const char*>(t), sqlite3_column_bytes(s_, c)) : "";
  }
  int64_t Int(int c) { return sqlite3_column_int64(s_, c); }
  double Real(int c) { return sqlite3_column_double(s_, c); }

 private:
  sqlite3* db_;
  sqlite3_stmt* s_ = nullptr;
  int rc_;
};

constexpr const char* kRunStateNames[] = {"incomplete", "queued", "running",
                                          "published",  "parked", "failed"};
constexpr const char* kJobStateNames[] = {"queued", "running", "verifying", "published",
                                          "failed", "parked",  "cancelled"};
constexpr const char* kJobKindNames[] = {"consolidate", "remap"};

template <typename E, size_t N>
std::optional<E> ParseName(const char* const (&names)[N], absl::string_view s) {
  for (size_t i = 0; i < N; ++i) {
    if (s == names[i]) return static_cast<E>(i);
  }
  return std::nullopt;
}

// The SQL list of a state column's names: "('a', 'b', ...)".
template <size_t N>
std::string SqlList(const char* const (&names)[N]) {
  std::string out = "(";
  for (size_t i = 0; i < N; ++i) absl::StrAppend(&out, i ? ", " : "", "'", names[i], "'");
  return out + ")";
}

constexpr char kJobCols[] =
    "id, run_id, kind, state, output, rules, bytes_done, bytes_total, error, retryable, attempts, "
    "next_attempt_ms, created_ms, started_ms, finished_ms, seconds, verify_bytes";

absl::StatusOr<JobRecord> ReadJob(Stmt& s) {
  JobRecord j;
  j.id = s.Int(0);
  j.run_id = s.Text(1);
  std::optional<JobKind> kind = ParseJobKind(s.Text(2));
  std::optional<JobState> state = ParseJobState(s.Text(3));
  if (!kind || !state) {
    return absl::DataLossError(absl::StrCat("the journal's job ", j.id,
                                            " has an unknown kind or state (", s.Text(2), ", ",
                                            s.Text(3), ")"));
  }
  j.kind = *kind;
  j.state = *state;
  j.output = s.Text(4);
  j.rules = s.Text(5);
  j.bytes_done = s.Int(6);
  j.bytes_total = s.Int(7);
  j.error = s.Text(8);
  j.retryable = s.Int(9) != 0;
  j.attempts = static_cast<int>(s.Int(10));
  j.next_attempt_ms = s.Int(11);
  j.created_ms = s.Int(12);
  j.started_ms = s.Int(13);
  j.finished_ms = s.Int(14);
  j.seconds = s.Real(15);
  j.verify_bytes = s.Int(16);
  return j;
}

absl::StatusOr<RunRecord> ReadRun(Stmt& s) {
  RunRecord r;
  r.id = s.Text(0);
  r.path = s.Text(1);
  r.detection = s.Text(2);
  std::optional<RunState> state = ParseRunState(s.Text(3));
  if (!state) {
    return absl::DataLossError(
        absl::StrCat("the journal's run ", r.path, " has an unknown state (", s.Text(3), ")"));
  }
  r.state = *state;
  r.fingerprint = s.Text(4);
  r.last_change_ms = s.Int(5);
  r.first_seen_ms = s.Int(6);
  r.output = s.Text(7);
  r.detail = s.Text(8);
  return r;
}

constexpr char kRunCols[] =
    "id, path, detection, state, fingerprint, last_change_ms, first_seen_ms, output, detail";

// Runs a SELECT (`bind` fills its parameters) and reads every row with `read`.
template <typename T>
absl::StatusOr<std::vector<T>> Select(sqlite3* db, const std::string& sql,
                                      const std::function<void(Stmt&)>& bind,
                                      absl::StatusOr<T> (*read)(Stmt&)) {
  Stmt s(db, sql.c_str());
  if (!s.ok()) return s.error();
  bind(s);
  std::vector<T> out;
  int rc;
  while ((rc = s.Step()) == SQLITE_ROW) {
    absl::StatusOr<T> row = read(s);
    if (!row.ok()) return row.status();
    out.push_back(std::move(*row));
  }
  // A read that stopped early (a corrupt page, I/O error, busy) is an error, never a short list.
  if (rc != SQLITE_DONE) return s.error();
  return out;
}

template <typename T>
absl::StatusOr<std::optional<T>> First(absl::StatusOr<std::vector<T>> rows) {
  if (!rows.ok()) return rows.status();
  if (rows->empty()) return std::optional<T>();
  return std::optional<T>(std::move(rows->front()));
}

}  // namespace

const char* Name(RunState s) {
  return kRunStateNames[static_cast<int>(s)];
}
const char* Name(JobState s) {
  return kJobStateNames[static_cast<int>(s)];
}
const char* Name(JobKind k) {
  return kJobKindNames[static_cast<int>(k)];
}
std::optional<RunState> ParseRunState(absl::string_view s) {
  return ParseName<RunState>(kRunStateNames, s);
}
std::optional<JobState> ParseJobState(absl::string_view s) {
  return ParseName<JobState>(kJobStateNames, s);
}
std::optional<JobKind> ParseJobKind(absl::string_view s) {
  return ParseName<JobKind>(kJobKindNames, s);
}

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

namespace {

// One value of a query (its first column of its first row), or "" with `*err` set.
std::string QueryOne(sqlite3* db, const std::string& sql, std::string* err) {
  sqlite3_stmt* st = nullptr;
  std::string out;
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr) != SQLITE_OK) {
    *err = sqlite3_errmsg(db);
  } else if (int rc = sqlite3_step(st); rc == SQLITE_ROW) {
    const unsigned char* t = sqlite3_column_text(st, 0);
    out = t ? reinterpret_cast<const char*>(t) : "";
  } else if (rc != SQLITE_DONE) {
    *err = sqlite3_errmsg(db);
  }
  sqlite3_finalize(st);
  return out;
}

// "ok", or why an intact SQLite file is not our journal: tables with other columns (another
// program's database, another version's schema), or rows with states we do not know.
std::string CheckSchema(sqlite3* db) {
  const std::pair<const char*, const char*> tables[] = {{"runs", kRunCols}, {"jobs", kJobCols}};
  for (const auto& [table, cols] : tables) {
    std::string err;
    const std::string exists =
        QueryOne(db,
                 absl::StrCat("SELECT count(*) FROM sqlite_master WHERE type='table' AND name='",
                              table, "'"),
                 &err);
    if (!err.empty()) return err;
    if (exists == "0") continue;  // created on open
    const std::string have = QueryOne(
        db, absl::StrCat("SELECT group_concat(name, ', ') FROM pragma_table_info('", table, "')"),
        &err);
    if (!err.empty()) return err;
    if (have != cols) {
      return absl::StrCat("table ", table, " has the columns (", have, "), not this version's (",
                          cols, ")");
    }
  }
  std::string err;
  const std::string bad_runs = QueryOne(
      db, absl::StrCat("SELECT count(*) FROM runs WHERE state NOT IN ", SqlList(kRunStateNames)),
      &err);
  if (err.empty() && bad_runs != "0" && !bad_runs.empty())
    return absl::StrCat(bad_runs, " run(s) with unknown states");
  const std::string bad_jobs =
      QueryOne(db,
               absl::StrCat("SELECT count(*) FROM jobs WHERE state NOT IN ",
                            SqlList(kJobStateNames), " OR kind NOT IN ", SqlList(kJobKindNames)),
               &err);
  if (err.empty() && bad_jobs != "0" && !bad_jobs.empty())
    return absl::StrCat(bad_jobs, " job(s) with unknown states or kinds");
  return "ok";
}

// "ok", or what PRAGMA quick_check (or opening, or the schema check) found wrong.
std::string QuickCheck(const std::string& path) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr) != SQLITE_OK) {
    std::string msg = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return msg;
  }
  sqlite3_busy_timeout(db, 5000);
  std::string result;
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(db, "PRAGMA quick_check", -1, &st, nullptr) != SQLITE_OK) {
    result = sqlite3_errmsg(db);
  } else {
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
      const unsigned char* t = sqlite3_column_text(st, 0);
      if (!result.empty()) result += "; ";
      result += t ? reinterpret_cast<const char*>(t) : "?";
    }
    if (rc != SQLITE_DONE) result += std::string(result.empty() ? "" : "; ") + sqlite3_errmsg(db);
  }
  sqlite3_finalize(st);
  if (result == "ok") result = CheckSchema(db);
  sqlite3_close(db);
  return result;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Store>> Store::Open(const std::string& path,
                                                   std::string* recovered) {
  if (recovered != nullptr) recovered->clear();
  struct stat existing;
  if (::stat(path.c_str(), &existing) == 0) {
    const std::string check = QuickCheck(path);
    if (absl::StrContains(check, "locked") || absl::StrContains(check, "busy")) {
      // Another process holds it (a second safeshardd?): not corruption, never moved aside.
      return absl::UnavailableError(
          absl::StrCat(path, ": the journal is in use by another process (", check,
                       "); is another safeshardd running with this state database?"));
    }
    if (check != "ok") {
      const std::string aside =
          absl::StrCat(path, ".corrupt-", static_cast<int64_t>(time(nullptr)));
      for (const char* suffix : {"", "-wal", "-shm"}) {
        const std::string from = path + suffix;
        if (::access(from.c_str(), F_OK) == 0 &&
            ::rename(from.c_str(), (aside + suffix).c_str()) != 0) {
          return absl::UnavailableError(
              absl::StrCat(path, ": the journal is corrupt (", check,
                           ") and cannot be moved aside: ", std::strerror(errno)));
        }
      }
      if (recovered != nullptr) {
        *recovered = absl::StrCat("the journal failed its check (", check, "); it was moved to ",
                                  aside, " and the state is rebuilt from the file system");
      }
    }
  }
  sqlite3* db = nullptr;
  if (sqlite3_open(path.c_str(), &db) != SQLITE_OK) {
    std::string msg = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return absl::UnavailableError(absl::StrCat(path, ": cannot open the state database: ", msg));
  }
  sqlite3_busy_timeout(db, 5000);
  std::unique_ptr<Store> s(new Store(db));
  absl::Status st = s->Exec(
      "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
      "CREATE TABLE IF NOT EXISTS runs (id TEXT PRIMARY KEY, path TEXT UNIQUE, detection TEXT,"
      " state TEXT, fingerprint TEXT, last_change_ms INTEGER, first_seen_ms INTEGER,"
      " output TEXT, detail TEXT);"
      "CREATE TABLE IF NOT EXISTS jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT,"
      " kind TEXT, state TEXT, output TEXT, rules TEXT, bytes_done INTEGER, bytes_total INTEGER,"
      " error TEXT, retryable INTEGER, attempts INTEGER, next_attempt_ms INTEGER,"
      " created_ms INTEGER, started_ms INTEGER, finished_ms INTEGER, seconds REAL,"
      " verify_bytes INTEGER);");
  if (!st.ok()) return absl::UnavailableError(absl::StrCat(path, ": ", st.message()));
  return s;
}

Store::~Store() {
  sqlite3_close(db_);
}

absl::Status Store::Exec(const std::string& sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
    std::string m = err ? err : "unknown error";
    sqlite3_free(err);
    return absl::InternalError(absl::StrCat("sqlite: ", m));
  }
  return absl::OkStatus();
}

absl::Status Store::UpsertRun(const RunRecord& r) {
  absl::MutexLock l(&mu_);
  Stmt s(db_,
         "INSERT INTO runs (id, path, detection, state, fingerprint, last_change_ms, first_seen_ms,"
         " output, detail) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9) ON CONFLICT(id) DO UPDATE SET"
         " path=?2, detection=?3, state=?4, fingerprint=?5, last_change_ms=?6, output=?8,"
         " detail=?9");
  if (!s.ok()) return s.error();
  s.Bind(1, r.id)
      .Bind(2, r.path)
      .Bind(3, r.detection)
      .Bind(4, std::string(Name(r.state)))
      .Bind(5, r.fingerprint)
      .Bind(6, r.last_change_ms)
      .Bind(7, r.first_seen_ms)
      .Bind(8, r.output)
      .Bind(9, r.detail);
  if (s.Step() != SQLITE_DONE) return s.error();
  return absl::OkStatus();
}

absl::StatusOr<std::optional<RunRecord>> Store::GetRun(const std::string& id) {
  absl::MutexLock l(&mu_);
  return First(Select<RunRecord>(
      db_, absl::StrCat("SELECT ", kRunCols, " FROM runs WHERE id=?1"),
      [&](Stmt& s) { s.Bind(1, id); }, ReadRun));
}

absl::StatusOr<std::vector<RunRecord>> Store::ListRuns() {
  absl::MutexLock l(&mu_);
  return Select<RunRecord>(
      db_, absl::StrCat("SELECT ", kRunCols, " FROM runs ORDER BY path"), [](Stmt&) {}, ReadRun);
}

absl::StatusOr<int64_t> Store::AddJob(JobRecord j) {
  absl::MutexLock l(&mu_);
  Stmt s(db_,
         "INSERT INTO jobs (run_id, kind, state, output, rules, bytes_done, bytes_total, error,"
         " retryable, attempts, next_attempt_ms, created_ms, started_ms, finished_ms, seconds,"
         " verify_bytes) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16)");
  if (!s.ok()) return s.error();
  s.Bind(1, j.run_id)
      .Bind(2, std::string(Name(j.kind)))
      .Bind(3, std::string(Name(j.state)))
      .Bind(4, j.output)
      .Bind(5, j.rules)
      .Bind(6, j.bytes_done)
      .Bind(7, j.bytes_total)
      .Bind(8, j.error)
      .Bind(9, static_cast<int64_t>(j.retryable))
      .Bind(10, static_cast<int64_t>(j.attempts))
      .Bind(11, j.next_attempt_ms)
      .Bind(12, j.created_ms)
      .Bind(13, j.started_ms)
      .Bind(14, j.finished_ms)
      .Bind(15, j.seconds)
      .Bind(16, j.verify_bytes);
  if (s.Step() != SQLITE_DONE) return s.error();
  return sqlite3_last_insert_rowid(db_);
}

absl::Status Store::UpdateJob(const JobRecord& j) {
  absl::MutexLock l(&mu_);
  Stmt s(db_,
         "UPDATE jobs SET state=?2, output=?3, bytes_done=?4, bytes_total=?5, error=?6,"
         " retryable=?7, attempts=?8, next_attempt_ms=?9, started_ms=?10, finished_ms=?11,"
         " seconds=?12, verify_bytes=?13 WHERE id=?1");
  if (!s.ok()) return s.error();
  s.Bind(1, j.id)
      .Bind(2, std::string(Name(j.state)))
      .Bind(3, j.output)
      .Bind(4, j.bytes_done)
      .Bind(5, j.bytes_total)
      .Bind(6, j.error)
      .Bind(7, static_cast<int64_t>(j.retryable))
      .Bind(8, static_cast<int64_t>(j.attempts))
      .Bind(9, j.next_attempt_ms)
      .Bind(10, j.started_ms)
      .Bind(11, j.finished_ms)
      .Bind(12, j.seconds)
      .Bind(13, j.verify_bytes);
  if (s.Step() != SQLITE_DONE) return s.error();
  return absl::OkStatus();
}

absl::StatusOr<std::optional<JobRecord>> Store::GetJob(int64_t id) {
  absl::MutexLock l(&mu_);
  return First(Select<JobRecord>(
      db_, absl::StrCat("SELECT ", kJobCols, " FROM jobs WHERE id=?1"),
      [&](Stmt& s) { s.Bind(1, id); }, ReadJob));
}

absl::StatusOr<std::vector<JobRecord>> Store::ListJobs() {
  absl::MutexLock l(&mu_);
  return Select<JobRecord>(
      db_, absl::StrCat("SELECT ", kJobCols, " FROM jobs ORDER BY id"), [](Stmt&) {}, ReadJob);
}

absl::StatusOr<std::vector<JobRecord>> Store::RequeueInterrupted() {
  absl::StatusOr<std::vector<JobRecord>> found;
  {
    absl::MutexLock l(&mu_);
    found = Select<JobRecord>(
        db_, absl::StrCat("SELECT ", kJobCols, " FROM jobs WHERE state IN ('running','verifying')"),
        [](Stmt&) {}, ReadJob);
  }
  if (!found.ok()) return found.status();
  std::vector<JobRecord> out = std::move(*found);
  for (JobRecord& j : out) {
    j.state = JobState::kQueued;
    j.bytes_done = 0;
    j.error = "interrupted by a daemon restart; re-queued";
    absl::Status st = UpdateJob(j);
    if (!st.ok()) return st;
  }
  return out;
}

}  // namespace safeshard::daemon
