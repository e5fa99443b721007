#include "daemon/daemon.h"

#include "core/format/internal/json_util.h"
#include "core/format/manifest.h"
#include "core/util/status_macros.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/inotify.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iostream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "core/consolidate/consolidate.h"
#include "core/format/filenames.h"
#include "core/io/atomic_file.h"
#include "core/io/filesystem.h"
#include "core/layout/layout.h"
#include "core/remap/remap.h"
#include "daemon/api_server.h"
#include "daemon/internal.h"
#include "daemon/watcher.h"

namespace safeshard::daemon {

using namespace detail;  // NOLINT(build/namespaces): the daemon's own helpers
using nlohmann::json;

void Log(const std::string& level, const std::string& msg, json fields) {
  json j = {{"ts", NowMs() / 1000.0}, {"level", level}, {"msg", msg}};
  if (fields.is_object()) {
    for (auto it = fields.begin(); it != fields.end(); ++it) j[it.key()] = it.value();
  }
  static absl::Mutex* mu = new absl::Mutex();
  absl::MutexLock l(mu);
  std::cerr << internal::DumpJson(j) << std::endl;
}

void NotifySystemd(const std::string& state) {
  const char* path = std::getenv("NOTIFY_SOCKET");
  if (path == nullptr || *path == '\0') return;
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return;
  struct sockaddr_un addr {};
  addr.sun_family = AF_UNIX;
  std::string p = path;
  if (p[0] == '@') p[0] = '\0';  // abstract namespace
  std::memcpy(addr.sun_path, p.data(), std::min(p.size(), sizeof(addr.sun_path) - 1));
  socklen_t len = static_cast<socklen_t>(offsetof(struct sockaddr_un, sun_path) + p.size());
  (void)sendto(fd, state.data(), state.size(), 0, reinterpret_cast<struct sockaddr*>(&addr), len);
  close(fd);
}

absl::StatusOr<std::unique_ptr<Daemon>> Daemon::Create(Config config) {
  ResolvePaths(&config);
  if (!config.output_root.empty()) {
    char* real = realpath(config.output_root.c_str(), nullptr);
    if (real == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("output root ", config.output_root, ": ", std::strerror(errno)));
    }
    config.output_root = real;
    free(real);
  }
  if (config.watch_roots.empty()) {
    return absl::InvalidArgumentError("no watch roots: pass --watch DIR or set watch_roots");
  }
  ResolveRanksByRoot(&config);
  for (std::string& r : config.watch_roots) {
    char* real = realpath(r.c_str(), nullptr);
    if (real == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("watch root ", r, ": ", std::strerror(errno)));
    }
    r = real;
    free(real);
  }
  RETURN_IF_ERROR(CheckRanksByRoot(config));
  FileSystem& fs = LocalFileSystem();
  absl::Status st = fs.MakeDirs(DirName(config.state_db));
  if (!st.ok()) return st;
  std::string recovered;
  absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(config.state_db, &recovered);
  if (!store.ok()) return store.status();
  if (!recovered.empty())
    Log("error", "journal corrupt: rebuilt", {{"state_db", config.state_db}, {"what", recovered}});
  std::unique_ptr<Daemon> d(new Daemon(std::move(config), std::move(*store)));
  // Token: created on first start, 0600.
  const std::string& tf = d->config_.token_file;
  absl::StatusOr<std::string> tok = fs.ReadAll(tf);
  if (tok.ok()) {
    d->token_ = std::string(absl::StripAsciiWhitespace(*tok));
    struct stat tst;
    const mode_t allowed = d->config_.token_group_readable ? 0640 : 0600;
    if (!d->token_.empty() && ::stat(tf.c_str(), &tst) == 0 && (tst.st_mode & 0777 & ~allowed)) {
      // Anyone who can read the token can command the daemon: tighten it, and say so.
      const bool fixed = ::chmod(tf.c_str(), allowed) == 0;
      Log("warning",
          fixed ? absl::StrFormat("the API token file was readable by others; its mode is now %04o",
                                  allowed)
                : "the API token file is readable by others and its mode cannot be changed",
          {{"token_file", tf}, {"mode", absl::StrFormat("%04o", tst.st_mode & 07777)}});
    }
  }
  if (d->token_.empty()) {
    st = fs.MakeDirs(DirName(tf));
    if (!st.ok()) return st;
    absl::StatusOr<std::string> fresh = RandomToken();
    if (!fresh.ok()) return fresh.status();
    d->token_ = *fresh;
    const mode_t mode = d->config_.token_group_readable ? 0640 : 0600;
    int fd = open(tf.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0 || write(fd, d->token_.data(), d->token_.size()) < 0) {
      return absl::PermissionDeniedError(absl::StrCat(tf, ": cannot write the API token"));
    }
    fchmod(fd, mode);
    fsync(fd);
    close(fd);
    Log("info", "created API token file", {{"token_file", tf}});
  }
  return d;
}

Daemon::Daemon(Config c, std::unique_ptr<Store> s) : config_(std::move(c)), store_(std::move(s)) {}

Daemon::~Daemon() {
  Stop();
}

Config Daemon::config() const {
  absl::MutexLock l(&mu_);
  return config_;
}

absl::Status Daemon::Start() {
  // Resume after a crash: interrupted jobs lose their temporary files and go back in the queue.
  absl::StatusOr<std::vector<JobRecord>> interrupted = store_->RequeueInterrupted();
  if (!interrupted.ok()) return interrupted.status();
  for (const JobRecord& j : *interrupted) {
    // Through the output's descriptor, reached through no symlink at all.
    if (absl::StatusOr<std::unique_ptr<FileSystem>> out =
            j.output.empty() ? absl::NotFoundError("") : RootsFs().OpenBeneath(j.output);
        out.ok()) {
      absl::StatusOr<std::vector<std::string>> cleaned = CleanStaleTempFiles(**out, "");
      Log("info", "re-queued a job interrupted by a restart",
          {{"job", j.id},
           {"output", j.output},
           {"temporary_files_removed", cleaned.ok() ? cleaned->size() : 0}});
    }
  }
  Config c = config();
  ASSIGN_OR_RETURN(api_, ApiServer::Bind(*this, c.api_address, c.api_port));
  watcher_ = std::make_unique<Watcher>(RootsFs(), [this](Watcher::Changes ch) {
    absl::MutexLock l(&mu_);
    dirty_ |= ch.overflow;
    dirty_dirs_.insert(ch.dirs.begin(), ch.dirs.end());
    dirty_trees_.insert(ch.trees.begin(), ch.trees.end());
  });
  watcher_->Start(c.watch_roots);
  scheduler_ = std::thread([this] { SchedulerLoop(); });
  Log("info", "safeshardd started",
      {{"roots", c.watch_roots},
       {"api", absl::StrCat(c.api_address, ":", api_->port())},
       {"state_db", c.state_db},
       {"max_concurrent_jobs", c.max_concurrent_jobs}});
  return absl::OkStatus();
}

void Daemon::Stop() {
  if (stopping_.exchange(true)) {
    // Already stopping; still join below if threads remain.
  }
  {
    absl::MutexLock l(&mu_);
    for (auto& [id, a] : active_) {
      uint64_t total = a->total.load(), done = a->done.load();
      if (total > 0 && done * 10 >= total * 9) continue;  // nearly done: let it finish
      a->cancel = true;
    }
    dirty_ = true;
  }
  if (scheduler_.joinable()) scheduler_.join();
  if (watcher_) watcher_->Stop();
  std::vector<std::thread> jobs;
  {
    absl::MutexLock l(&mu_);
    for (auto& [id, a] : active_) {
      if (a->thread.joinable()) jobs.push_back(std::move(a->thread));
    }
  }
  for (auto& t : jobs) t.join();
  if (api_) api_->Stop();
}

void Daemon::Reload(Config c) {
  ResolvePaths(&c);
  if (!c.output_root.empty()) {
    char* real = realpath(c.output_root.c_str(), nullptr);
    if (real == nullptr) {
      Log("error", "configuration not reloaded: the output root does not exist",
          {{"output_root", c.output_root}});
      return;
    }
    c.output_root = real;
    free(real);
  }
  for (std::string& r : c.watch_roots) {
    char* real = realpath(r.c_str(), nullptr);
    if (real == nullptr) {
      // As at start: a root that does not exist is an error, never silently watched as nothing.
      Log("error", "configuration not reloaded: a watch root does not exist",
          {{"root", r}, {"error", std::strerror(errno)}});
      return;
    }
    r = real;
    free(real);
  }
  ResolveRanksByRoot(&c);
  absl::Status valid = ValidateConfig(c);
  if (valid.ok()) valid = CheckRanksByRoot(c);
  if (!valid.ok()) {
    Log("error", "configuration not reloaded", {{"error", std::string(valid.message())}});
    return;
  }
  absl::MutexLock l(&mu_);
  c.api_address = config_.api_address;  // the listening socket stays
  c.api_port = config_.api_port;
  c.state_db = config_.state_db;
  c.token_file = config_.token_file;
  config_ = std::move(c);
  dirty_ = true;
  Log("info", "configuration reloaded", {{"roots", config_.watch_roots}});
}

json Daemon::Health() {
  absl::MutexLock l(&mu_);
  return {{"status", stopping_ ? "stopping" : "ok"},
          {"roots", config_.watch_roots},
          {"running_jobs", active_.size()},
          {"pid", getpid()}};
}

json Daemon::Runs() {
  json out = json::array();
  absl::StatusOr<std::vector<RunRecord>> runs = store_->ListRuns();
  if (runs.ok()) {
    for (const RunRecord& r : *runs) out.push_back(RunJson(r));
  }
  return {{"runs", out}};
}

absl::StatusOr<json> Daemon::Run(const std::string& id) {
  absl::StatusOr<RunRecord> r = FindRun(id);
  if (!r.ok()) return r.status();
  json j = RunJson(*r);
  absl::StatusOr<CheckpointLayout> ck = CheckpointLayout::Scan(RootsFs(), r->path);
  if (ck.ok()) {
    json tensors = json::array();
    for (const TensorLayout& t : ck->tensors()) {
      json chunks = json::array();
      for (const Chunk& c : t.chunks) {
        json cj = {{"file", ck->files()[c.file].name},
                   {"offsets", c.offsets},
                   {"sizes", c.sizes},
                   {"byte_range", {c.begin, c.end}}};
        if (!c.key.empty()) cj["key"] = c.key;
        chunks.push_back(std::move(cj));
      }
      tensors.push_back({{"name", t.name},
                         {"dtype", std::string(DTypeName(t.dtype))},
                         {"shape", t.shape},
                         {"chunks", chunks}});
    }
    j["tensors"] = tensors;
    json problems = json::array();
    for (const Problem& p : ck->problems()) problems.push_back(p.ToString());
    j["verification"] = {{"ok", ck->problems().empty()}, {"problems", problems}};
    j["completeness"] = {{"proven", ck->completeness().proven},
                         {"by", ck->completeness().by},
                         {"unproven", ck->completeness().unproven}};
  }
  json jobs = json::array();
  absl::StatusOr<std::vector<JobRecord>> all = store_->ListJobs();
  if (all.ok()) {
    for (const JobRecord& jr : *all) {
      if (jr.run_id == r->id) jobs.push_back(JobJson(jr));
    }
  }
  j["jobs"] = jobs;
  return j;
}

json Daemon::Jobs() {
  json out = json::array();
  absl::StatusOr<std::vector<JobRecord>> jobs = store_->ListJobs();
  absl::MutexLock l(&mu_);
  if (jobs.ok()) {
    for (JobRecord j : *jobs) {
      auto it = active_.find(j.id);
      if (it != active_.end() && !it->second->finished) {
        j.bytes_done = static_cast<int64_t>(it->second->done.load());
        j.bytes_total = static_cast<int64_t>(it->second->total.load());
      }
      out.push_back(JobJson(j));
    }
  }
  return {{"jobs", out},
          {"max_concurrent_jobs", config_.max_concurrent_jobs},
          {"max_running_seen", max_running_seen_.load()}};
}

std::string Daemon::Metrics() {
  std::map<std::string, int> by_state = {{"queued", 0},    {"running", 0}, {"verifying", 0},
                                         {"published", 0}, {"failed", 0},  {"parked", 0},
                                         {"cancelled", 0}};
  absl::StatusOr<std::vector<JobRecord>> jobs = store_->ListJobs();
  if (jobs.ok()) {
    for (const JobRecord& j : *jobs) by_state[Name(j.state)]++;
  }
  std::string out = "# HELP safeshard_jobs Jobs by state.\n# TYPE safeshard_jobs gauge\n";
  for (const auto& [s, n] : by_state)
    absl::StrAppend(&out, "safeshard_jobs{state=\"", s, "\"} ", n, "\n");
  absl::StrAppend(
      &out,
      "# HELP safeshard_bytes_consolidated_total Tensor bytes written by published "
      "consolidations.\n# TYPE safeshard_bytes_consolidated_total counter\n"
      "safeshard_bytes_consolidated_total ",
      bytes_consolidated_.load(), "\n",
      "# HELP safeshard_consolidation_seconds_total Time spent consolidating.\n"
      "# TYPE safeshard_consolidation_seconds_total counter\n"
      "safeshard_consolidation_seconds_total ",
      seconds_total_.load(), "\n",
      "# TYPE safeshard_jobs_published_total counter\nsafeshard_jobs_published_total ",
      jobs_published_.load(), "\n",
      "# TYPE safeshard_job_errors_total counter\nsafeshard_job_errors_total ", jobs_failed_.load(),
      "\n", "# TYPE safeshard_rescans_total counter\nsafeshard_rescans_total ", rescans_.load(),
      "\n", "# TYPE safeshard_inotify_overflows_total counter\nsafeshard_inotify_overflows_total ",
      watcher_ ? watcher_->overflows() : 0, "\n",
      "# TYPE safeshard_watch_limit_errors_total counter\nsafeshard_watch_limit_errors_total ",
      watcher_ ? watcher_->watch_limit_errors() : 0, "\n",
      "# TYPE safeshard_journal_errors_total counter\nsafeshard_journal_errors_total ",
      journal_errors_.load(), "\n");
  return out;
}

absl::StatusOr<RunRecord> Daemon::FindRun(const std::string& id_or_path) {
  absl::StatusOr<std::vector<RunRecord>> runs = store_->ListRuns();
  if (!runs.ok()) return runs.status();
  for (const RunRecord& r : *runs) {
    if (r.id == id_or_path || r.path == NormalizeDir(id_or_path)) return r;
  }
  return absl::NotFoundError(absl::StrCat("no run ", id_or_path, " (see GET /v1/runs)"));
}

absl::StatusOr<int64_t> Daemon::RequestConsolidate(const std::string& id_or_path) {
  absl::StatusOr<RunRecord> run = FindRun(id_or_path);
  if (!run.ok()) return run.status();
  if (run->state == RunState::kRunning || run->state == RunState::kQueued) {
    return absl::FailedPreconditionError(
        absl::StrCat("run ", run->id, " is already ", Name(run->state)));
  }
  JobRecord j;
  j.run_id = run->id;
  j.output = run->output;
  j.created_ms = NowMs();
  absl::StatusOr<int64_t> id = store_->AddJob(j);
  if (!id.ok()) return id.status();
  RunRecord r = *run;
  r.state = RunState::kQueued;
  Journaled(store_->UpsertRun(r), "UpsertRun");
  absl::MutexLock l(&mu_);
  schedule_ = true;
  return id;
}

absl::StatusOr<int64_t> Daemon::RequestRemap(const std::string& id_or_path,
                                             const std::vector<KeyMap::Rule>& rules,
                                             const std::string& output) {
  absl::MutexLock serial(&requests_mu_);  // the checks below and AddJob, as one step
  absl::StatusOr<RunRecord> run = FindRun(id_or_path);
  if (!run.ok()) return run.status();
  absl::StatusOr<KeyMap> km = KeyMap::Create(rules);
  if (!km.ok()) return km.status();
  json rules_json = json::array();
  for (const KeyMap::Rule& r : rules) rules_json.push_back({r.pattern, r.replacement});
  absl::StatusOr<std::string> out = ResolveUnderRoots(output, /*outputs=*/true);
  if (!out.ok()) return out.status();
  // Roots are resolved at start: a path that resolves to something else went through a symlink.
  if (*out != NormalizeDir(output)) {
    return absl::PermissionDeniedError(
        absl::StrCat("remap output ", output, " goes through a symbolic link (it resolves to ",
                     *out, "); name the directory itself"));
  }
  if (std::string refused = WhyOutputRefused(run->path, *out); !refused.empty()) {
    return absl::PermissionDeniedError(absl::StrCat("remap output refused: ", refused));
  }
  // Another run's source or output is never a remap's output: not the directory itself, not
  // inside it, and not an ancestor of it (the remap would write beside the run).
  absl::StatusOr<std::vector<RunRecord>> runs = store_->ListRuns();
  if (!runs.ok()) return runs.status();
  for (const RunRecord& r : *runs) {
    for (const std::string& taken : {r.path, r.output}) {
      if (taken.empty()) continue;
      const bool inside = *out == taken || absl::StartsWith(*out, taken + "/") ||
                          SameDirectory(RootsFs(), *out, taken);
      if (inside || absl::StartsWith(taken, *out + "/")) {
        return absl::PermissionDeniedError(
            absl::StrCat("remap output ", *out, inside ? " is " : " contains ",
                         taken == r.path ? "the source" : "the output", " of run ", r.id, " (",
                         taken, "); choose a new directory"));
      }
    }
  }
  // Nor the output of a remap still waiting or running.
  absl::StatusOr<std::vector<JobRecord>> jobs = store_->ListJobs();
  if (!jobs.ok()) return jobs.status();
  for (const JobRecord& jr : *jobs) {
    const bool pending = jr.state == JobState::kQueued || jr.state == JobState::kRunning ||
                         jr.state == JobState::kVerifying;
    if (pending && jr.output == *out) {
      return absl::PermissionDeniedError(
          absl::StrCat("remap output ", *out, " is already the output of job ", jr.id));
    }
  }
  // Only a new or empty directory: a remap replaces what it writes, and nothing else may be lost.
  if (absl::StatusOr<std::vector<DirEntry>> present = RootsFs().List(*out);
      present.ok() && !present->empty()) {
    return absl::PermissionDeniedError(
        absl::StrCat("remap output ", *out, " already holds ", internal::Quote((*present)[0].name),
                     present->size() > 1 ? absl::StrCat(" and ", present->size() - 1, " more") : "",
                     "; choose a new or empty directory"));
  }
  JobRecord j;
  j.run_id = run->id;
  j.kind = JobKind::kRemap;
  j.rules = internal::DumpJson(rules_json);
  j.output = *out;
  j.created_ms = NowMs();
  absl::StatusOr<int64_t> id = store_->AddJob(j);
  absl::MutexLock l(&mu_);
  schedule_ = true;
  return id;
}

absl::Status Daemon::CancelJob(int64_t id) {
  absl::StatusOr<std::optional<JobRecord>> j = store_->GetJob(id);
  if (!j.ok()) return j.status();
  if (!j->has_value()) return absl::NotFoundError(absl::StrCat("no job ", id));
  absl::MutexLock l(&mu_);
  auto it = active_.find(id);
  if (it != active_.end()) {
    it->second->cancel = true;
    return absl::OkStatus();
  }
  JobRecord r = **j;
  if (r.state == JobState::kQueued || (r.state == JobState::kFailed && r.retryable)) {
    r.state = JobState::kCancelled;
    r.retryable = false;
    return store_->UpdateJob(r);
  }
  return absl::FailedPreconditionError(absl::StrCat("job ", id, " is ", Name(r.state)));
}

void Daemon::RequestRescan() {
  absl::MutexLock l(&mu_);
  dirty_ = true;
}

void Daemon::Journaled(const absl::Status& s, const char* what) {
  if (s.ok()) return;
  journal_errors_++;
  // Every failed write is logged: a journal that silently stops recording makes the state the
  // API reports a lie (and a full state directory must not stall the daemon unseen).
  Log("error", "journal write failed", {{"what", what}, {"error", std::string(s.message())}});
}

bool Daemon::CheckToken(const std::string& header) const {
  const std::string want = "Bearer " + token_;
  if (token_.empty() || header.size() != want.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < want.size(); ++i) diff |= static_cast<unsigned char>(header[i] ^ want[i]);
  return diff == 0;
}

absl::StatusOr<std::string> Daemon::ResolveUnderRoots(const std::string& path, bool outputs) const {
  if (path.empty() || path[0] != '/') {
    return absl::InvalidArgumentError(absl::StrCat("path \"", path, "\" must be absolute"));
  }
  // The target may not exist yet: resolve its deepest existing ancestor.
  std::string existing = NormalizeDir(path), rest;
  while (true) {
    char* real = realpath(existing.c_str(), nullptr);
    if (real != nullptr) {
      existing = real;
      free(real);
      break;
    }
    if (existing == "/" || existing.empty()) break;
    rest = rest.empty() ? BaseName(existing) : JoinPath(BaseName(existing), rest);
    existing = DirName(existing);
  }
  if (absl::StrContains("/" + rest + "/", "/../") || absl::StrContains("/" + rest + "/", "/./")) {
    return absl::PermissionDeniedError(absl::StrCat("path \"", path, "\" contains . or .."));
  }
  std::string resolved = rest.empty() ? existing : JoinPath(existing, rest);
  const Config c = config();
  std::vector<std::string> allowed = c.watch_roots;
  if (outputs && !c.output_root.empty()) allowed.push_back(c.output_root);
  for (const std::string& r : allowed) {
    if (resolved == r || absl::StartsWith(resolved, r + "/")) return resolved;
  }
  return absl::PermissionDeniedError(
      absl::StrCat("path \"", path, "\" (", resolved, ") is not under a watch root",
                   outputs && !c.output_root.empty() ? " or the output root" : ""));
}

}  // namespace safeshard::daemon
