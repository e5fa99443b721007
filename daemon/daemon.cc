#include "daemon/daemon.h"

#include "core/format/internal/json_util.h"
#include "core/format/manifest.h"
#include "core/util/status_macros.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/random.h>
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
#include "httplib.h"

namespace safeshard::daemon {
namespace {

using nlohmann::json;

std::string RunId(const std::string& path) {
  uint64_t h = 1469598103934665603ull;
  for (char c : path) h = (h ^ static_cast<uint8_t>(c)) * 1099511628211ull;
  return absl::StrFormat("%016x", h);
}

std::string NormalizeDir(std::string p) {
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}

// Everything under the watch roots is read and written through this: a symbolic link planted
// under a root (a shard file, the manifest, an output file) is never followed (O_NOFOLLOW).
FileSystem& RootsFs() { return LocalFileSystemNoFollow(); }

// Files of a run dir with sizes and mtimes: what "nothing changed" compares.
std::string Fingerprint(const std::string& dir, bool* has_shards, bool* has_manifest) {
  *has_shards = false;
  *has_manifest = false;
  absl::StatusOr<std::vector<DirEntry>> entries = RootsFs().List(dir);
  if (!entries.ok()) return "";
  std::string fp;
  for (const DirEntry& e : *entries) {
    if (e.is_dir || IsTempFileName(e.name)) continue;
    bool shard = absl::StartsWith(e.name, "shard-") && absl::EndsWith(e.name, ".safetensors");
    *has_shards |= shard;
    *has_manifest |= e.name == kCompletionManifest;
    if (!shard && e.name != kCompletionManifest) continue;
    absl::StatusOr<FileStat> st = RootsFs().Stat(JoinPath(dir, e.name));
    if (!st.ok()) continue;
    absl::StrAppend(&fp, e.name, ":", st->size, ":", st->mtime_ns, ";");
  }
  return fp;
}

// Keys of expected_ranks_by_root name roots: resolved like the roots (symlinks, "..").
void ResolveRanksByRoot(Config* c) {
  std::map<std::string, int> by_root;
  for (const auto& [r, n] : c->expected_ranks_by_root) {
    char* real = realpath(r.c_str(), nullptr);
    by_root[real != nullptr ? std::string(real) : r] = n;
    free(real);
  }
  c->expected_ranks_by_root = std::move(by_root);
}

// Every key of expected_ranks_by_root must be one of the (resolved) watch roots.
absl::Status CheckRanksByRoot(const Config& c) {
  for (const auto& [r, n] : c.expected_ranks_by_root) {
    bool known = false;
    for (const std::string& w : c.watch_roots) known |= w == r;
    if (!known) {
      return absl::InvalidArgumentError(
          absl::StrCat("config: expected_ranks_by_root names ", r, ", which is not a watch root"));
    }
  }
  return absl::OkStatus();
}

// The run's completion manifest, read with a size bound and parsed by core/format/manifest.
absl::StatusOr<Manifest> ReadRunManifest(const std::string& dir) {
  const std::string path = JoinPath(dir, kCompletionManifest);
  ASSIGN_OR_RETURN(std::unique_ptr<ReadableFile> f, RootsFs().OpenRead(path));
  if (f->size() > kMaxManifestBytes) {
    return absl::DataLossError(absl::StrCat(path, ": ", f->size(), " bytes, over the limit"));
  }
  std::string text(f->size(), '\0');
  RETURN_IF_ERROR(f->ReadAt(0, text.size(), text.data()));
  return ParseManifest(text, path);
}

int64_t BackoffMs(int attempts) {
  double s = 5.0 * std::pow(2.0, std::max(0, attempts - 1));
  return static_cast<int64_t>(std::min(s, 600.0) * 1000);
}

// 192 bits from the kernel's CSPRNG; no fallback: a guessable token is worse than no start.
absl::StatusOr<std::string> RandomToken() {
  unsigned char b[24];
  size_t got = 0;
  while (got < sizeof b) {
    ssize_t n = getrandom(b + got, sizeof b - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      return absl::UnavailableError(absl::StrCat(
          "cannot draw random bytes for the API token (getrandom: ", std::strerror(errno), ")"));
    }
    got += static_cast<size_t>(n);
  }
  std::string out;
  for (unsigned char c : b) absl::StrAppendFormat(&out, "%02x", c);
  return out;
}

json JobJson(const JobRecord& j) {
  return {{"id", j.id},
          {"run", j.run_id},
          {"kind", j.kind},
          {"state", j.state},
          {"output", j.output},
          {"bytes_done", j.bytes_done},
          {"bytes_total", j.bytes_total},
          {"error", j.error},
          {"retryable", j.retryable},
          {"attempts", j.attempts},
          {"next_attempt_ms", j.next_attempt_ms},
          {"created_ms", j.created_ms},
          {"started_ms", j.started_ms},
          {"finished_ms", j.finished_ms},
          {"seconds", j.seconds},
          {"verified_bytes", j.verify_bytes}};
}

json RunJson(const RunRecord& r) {
  return {{"id", r.id},         {"path", r.path},       {"detection", r.detection},
          {"state", r.state},   {"output", r.output},   {"detail", r.detail},
          {"first_seen_ms", r.first_seen_ms}, {"last_change_ms", r.last_change_ms}};
}

}  // namespace

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
  if (!recovered.empty()) Log("error", "journal corrupt: rebuilt", {{"state_db", config.state_db}, {"what", recovered}});
  std::unique_ptr<Daemon> d(new Daemon(std::move(config), std::move(*store)));
  // Token: created on first start, 0600.
  const std::string& tf = d->config_.token_file;
  absl::StatusOr<std::string> tok = fs.ReadAll(tf);
  if (tok.ok()) {
    d->token_ = std::string(absl::StripAsciiWhitespace(*tok));
    struct stat tst;
    if (!d->token_.empty() && ::stat(tf.c_str(), &tst) == 0 && (tst.st_mode & 077) != 0) {
      // Anyone who can read the token can command the daemon: tighten it, and say so.
      const bool fixed = ::chmod(tf.c_str(), 0600) == 0;
      Log("warning", fixed ? "the API token file was readable by others; its mode is now 0600"
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
    int fd = open(tf.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || write(fd, d->token_.data(), d->token_.size()) < 0) {
      return absl::PermissionDeniedError(absl::StrCat(tf, ": cannot write the API token"));
    }
    fchmod(fd, 0600);
    fsync(fd);
    close(fd);
    Log("info", "created API token file", {{"token_file", tf}});
  }
  return d;
}

Daemon::Daemon(Config c, std::unique_ptr<Store> s) : config_(std::move(c)), store_(std::move(s)) {}

Daemon::~Daemon() {
  Stop();
  delete static_cast<httplib::Server*>(server_);
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
    if (!j.output.empty() && RootsFs().Stat(j.output).ok()) {
      absl::StatusOr<std::vector<std::string>> cleaned = CleanStaleTempFiles(RootsFs(), j.output);
      Log("info", "re-queued a job interrupted by a restart",
          {{"job", j.id}, {"output", j.output},
           {"temporary_files_removed", cleaned.ok() ? cleaned->size() : 0}});
    }
  }
  inotify_fd_ = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (inotify_fd_ < 0) {
    Log("warning", "inotify unavailable; relying on periodic rescans", {{"error", std::strerror(errno)}});
  }
  // API server, bounded: request bodies (kMaxRequestBody), slow or idle clients (short read
  // and keep-alive timeouts, a larger worker pool), and the Host header (DNS rebinding: a web
  // page's script may reach 127.0.0.1 under another name; only the names of this address pass).
  auto* srv = new httplib::Server();
  server_ = srv;
  srv->new_task_queue = [] { return new httplib::ThreadPool(kApiThreads); };
  srv->set_payload_max_length(kMaxRequestBody);
  srv->set_read_timeout(2, 0);
  srv->set_write_timeout(5, 0);
  srv->set_keep_alive_timeout(2);
  srv->set_keep_alive_max_count(100);
  srv->set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    // httplib does not cap chunked bodies: the API takes none (its bodies are small JSON with a
    // Content-Length). Several Host headers are refused too.
    if (req.get_header_value_count("Host") > 1 ||
        absl::StrContains(absl::AsciiStrToLower(req.get_header_value("Transfer-Encoding")), "chunked")) {
      res.status = 400;
      res.set_content("{\"error\": \"chunked request bodies and repeated Host headers are not accepted\"}\n",
                      "application/json");
      res.set_header("Connection", "close");
      return httplib::Server::HandlerResponse::Handled;
    }
    if (HostAllowed(req.get_header_value("Host"))) return httplib::Server::HandlerResponse::Unhandled;
    res.status = 403;
    res.set_content("{\"error\": \"Host header not allowed: the API answers only to its own "
                    "address (127.0.0.1, localhost, [::1] or the configured address)\"}\n",
                    "application/json");
    return httplib::Server::HandlerResponse::Handled;
  });
  auto reply = [](httplib::Response& res, int code, const json& body) {
    res.status = code;
    res.set_content(internal::DumpJson(body, 2) + "\n", "application/json");
  };
  auto error = [reply](httplib::Response& res, const absl::Status& s) {
    int code = 500;
    switch (s.code()) {
      case absl::StatusCode::kNotFound: code = 404; break;
      case absl::StatusCode::kInvalidArgument: code = 400; break;
      case absl::StatusCode::kPermissionDenied: code = 403; break;
      case absl::StatusCode::kFailedPrecondition: code = 409; break;
      case absl::StatusCode::kAlreadyExists: code = 409; break;
      default: break;
    }
    reply(res, code, {{"error", std::string(s.message())}});
  };
  auto authed = [this, reply](const httplib::Request& req, httplib::Response& res) {
    if (CheckToken(req.get_header_value("Authorization"))) return true;
    reply(res, 401, {{"error", "missing or wrong bearer token (see the daemon's token file)"}});
    return false;
  };
  srv->Get("/v1/health", [this, reply](const httplib::Request&, httplib::Response& res) {
    reply(res, 200, Health());
  });
  srv->Get("/v1/runs", [this, reply](const httplib::Request&, httplib::Response& res) {
    reply(res, 200, Runs());
  });
  srv->Get(R"(/v1/runs/([0-9a-f]+))", [this, reply, error](const httplib::Request& req, httplib::Response& res) {
    absl::StatusOr<json> r = Run(req.matches[1]);
    if (!r.ok()) return error(res, r.status());
    reply(res, 200, *r);
  });
  srv->Get("/v1/jobs", [this, reply](const httplib::Request&, httplib::Response& res) {
    reply(res, 200, Jobs());
  });
  srv->Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(Metrics(), "text/plain; version=0.0.4");
  });
  srv->Post(R"(/v1/runs/([0-9a-f]+)/consolidate)",
            [this, reply, error, authed](const httplib::Request& req, httplib::Response& res) {
              if (!authed(req, res)) return;
              absl::StatusOr<int64_t> id = RequestConsolidate(req.matches[1]);
              if (!id.ok()) return error(res, id.status());
              reply(res, 202, {{"job", *id}});
            });
  srv->Post(R"(/v1/runs/([0-9a-f]+)/remap)",
            [this, reply, error, authed](const httplib::Request& req, httplib::Response& res) {
              if (!authed(req, res)) return;
              json body = json::parse(req.body, nullptr, false);
              if (body.is_discarded() || !body.is_object() || !body.contains("rules") ||
                  !body.contains("output") || !body["output"].is_string()) {
                return error(res, absl::InvalidArgumentError(
                                      "body must be {\"rules\": [[regex, replacement], ...], "
                                      "\"output\": \"/dir/under/a/watch/root\"}"));
              }
              absl::StatusOr<int64_t> id =
                  RequestRemap(req.matches[1], body["rules"], body["output"].get<std::string>());
              if (!id.ok()) return error(res, id.status());
              reply(res, 202, {{"job", *id}});
            });
  srv->Post("/v1/rescan", [this, reply, authed](const httplib::Request& req, httplib::Response& res) {
    if (!authed(req, res)) return;
    RequestRescan();
    reply(res, 202, {{"rescan", "requested"}});
  });
  srv->Post(R"(/v1/jobs/(\d+)/cancel)",
            [this, reply, error, authed](const httplib::Request& req, httplib::Response& res) {
              if (!authed(req, res)) return;
              absl::Status s = CancelJob(std::stoll(req.matches[1]));
              if (!s.ok()) return error(res, s);
              reply(res, 202, {{"cancel", "requested"}});
            });
  Config c = config();
  if (c.api_port == 0) {
    port_ = srv->bind_to_any_port(c.api_address);
  } else {
    port_ = srv->bind_to_port(c.api_address, c.api_port) ? c.api_port : -1;
  }
  if (port_ <= 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", c.api_address, ":", c.api_port,
                                               " (in use?)"));
  }
  api_ = std::thread([srv] { srv->listen_after_bind(); });
  watcher_ = std::thread([this] { WatchLoop(); });
  scheduler_ = std::thread([this] { SchedulerLoop(); });
  Log("info", "safeshardd started",
      {{"roots", c.watch_roots}, {"api", absl::StrCat(c.api_address, ":", port_)},
       {"state_db", c.state_db}, {"max_concurrent_jobs", c.max_concurrent_jobs}});
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
  if (watcher_.joinable()) watcher_.join();
  std::vector<std::thread> jobs;
  {
    absl::MutexLock l(&mu_);
    for (auto& [id, a] : active_) {
      if (a->thread.joinable()) jobs.push_back(std::move(a->thread));
    }
  }
  for (auto& t : jobs) t.join();
  if (server_ != nullptr) static_cast<httplib::Server*>(server_)->stop();
  if (api_.joinable()) api_.join();
  if (inotify_fd_ >= 0) close(inotify_fd_);
  inotify_fd_ = -1;
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

void Daemon::AddWatchesBelow(const std::string& dir) {
  if (inotify_fd_ < 0) return;
  int wd = inotify_add_watch(inotify_fd_, dir.c_str(),
                             IN_CREATE | IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE |
                                 IN_MODIFY | IN_ONLYDIR | IN_DONT_FOLLOW);
  if (wd < 0) {
    if (errno == ENOSPC) {
      if (watch_limit_errors_++ == 0) {
        Log("warning", "inotify watch limit reached; new directories are found by rescans",
            {{"dir", dir}, {"hint", "raise fs.inotify.max_user_watches"}});
      }
    }
    return;
  }
  watches_[wd] = dir;
  absl::StatusOr<std::vector<DirEntry>> entries = RootsFs().List(dir);
  if (!entries.ok()) return;
  for (const DirEntry& e : *entries) {
    // Symbolic links under a root are never followed (no cycles, nothing outside the roots).
    if (e.is_dir && !e.is_symlink && e.name[0] != '.') AddWatchesBelow(JoinPath(dir, e.name));
  }
}

void Daemon::WatchLoop() {
  for (const std::string& r : config().watch_roots) AddWatchesBelow(r);
  alignas(struct inotify_event) char buf[64 * 1024];
  while (!stopping_) {
    if (inotify_fd_ < 0) {
      usleep(1000 * 1000);
      continue;
    }
    struct pollfd p = {inotify_fd_, POLLIN, 0};
    int r = poll(&p, 1, 1000);
    if (r <= 0) continue;
    ssize_t n = read(inotify_fd_, buf, sizeof buf);
    if (n <= 0) continue;
    bool overflow = false;
    std::set<std::string> dirs, trees;
    for (char* q = buf; q < buf + n;) {
      auto* ev = reinterpret_cast<struct inotify_event*>(q);
      q += sizeof(struct inotify_event) + ev->len;
      if (ev->mask & IN_Q_OVERFLOW) {
        inotify_overflows_++;
        Log("warning", "inotify queue overflowed; rescanning every root");
        overflow = true;
        continue;
      }
      if (ev->mask & IN_IGNORED) {
        watches_.erase(ev->wd);
        continue;
      }
      auto it = watches_.find(ev->wd);
      if (it == watches_.end()) continue;
      if ((ev->mask & IN_ISDIR) && (ev->mask & (IN_CREATE | IN_MOVED_TO)) && ev->len > 0 &&
          ev->name[0] != '.') {
        AddWatchesBelow(JoinPath(it->second, ev->name));
        trees.insert(JoinPath(it->second, ev->name));
      } else {
        dirs.insert(it->second);
      }
    }
    if (overflow || !dirs.empty() || !trees.empty()) {
      absl::MutexLock l(&mu_);
      dirty_ |= overflow;
      dirty_dirs_.insert(dirs.begin(), dirs.end());
      dirty_trees_.insert(trees.begin(), trees.end());
    }
  }
}

bool Daemon::PublishedAfterSources(const std::string& dir, const std::string& output) const {
  struct stat idx;
  if (::lstat(JoinPath(output, std::string(kIndexFileName)).c_str(), &idx) != 0 || !S_ISREG(idx.st_mode)) {
    return false;
  }
  absl::StatusOr<std::vector<DirEntry>> entries = RootsFs().List(dir);
  if (!entries.ok()) return false;
  bool any = false;
  for (const DirEntry& e : *entries) {
    if (!(absl::StartsWith(e.name, "shard-") && absl::EndsWith(e.name, ".safetensors")) &&
        e.name != kCompletionManifest) {
      continue;
    }
    struct stat st;
    if (::lstat(JoinPath(dir, e.name).c_str(), &st) != 0) return false;
    if (st.st_mtim.tv_sec > idx.st_mtim.tv_sec ||
        (st.st_mtim.tv_sec == idx.st_mtim.tv_sec && st.st_mtim.tv_nsec > idx.st_mtim.tv_nsec)) {
      return false;
    }
    any = true;
  }
  return any;
}

std::string Daemon::WhyParked(const std::string& dir, const std::string& output) const {
  absl::StatusOr<std::vector<DirEntry>> entries = RootsFs().List(dir);
  if (entries.ok()) {
    for (const DirEntry& e : *entries) {
      const bool shard = absl::EndsWith(e.name, ".safetensors") || e.name == kCompletionManifest ||
                         absl::EndsWith(e.name, ".safetensors.index.json");
      if (e.is_symlink && shard) {
        return absl::StrCat(e.name,
                            " is a symbolic link: links under a watch root are never followed "
                            "(copy the file into the run instead)");
      }
    }
  }
  return WhyOutputRefused(dir, output);
}

std::string Daemon::WhyOutputRefused(const std::string& source, const std::string& output) const {
  const Config c = config();
  absl::StatusOr<std::string> out = ResolveUnderRoots(output, /*outputs=*/true);
  if (!out.ok()) {
    return absl::StrCat("its output ", output,
                        " would be outside the watch roots (set output_template so that it "
                        "resolves under a root): ", out.status().message());
  }
  for (const std::string& r : config().watch_roots) {
    if (*out == r) return absl::StrCat("its output would be the watch root ", r, " itself");
  }
  if (SameDirectory(RootsFs(), source, *out) || *out == source ||
      absl::StartsWith(*out, source + "/")) {
    return absl::StrCat("its output ", *out, " would be inside its own source ", source);
  }
  // Another run's source (per-rank shards) is never an output.
  if (absl::StatusOr<std::vector<DirEntry>> in_out = RootsFs().List(*out); in_out.ok()) {
    for (const DirEntry& e : *in_out) {
      if (absl::StartsWith(e.name, "shard-") && absl::EndsWith(e.name, ".safetensors")) {
        return absl::StrCat("its output ", *out, " holds per-rank shards (", e.name,
                            "): another run's source");
      }
    }
  }
  // No component below the root may be a symbolic link (checked again when the job starts).
  if (*out == c.output_root) return "its output would be the output root itself";
  for (std::string p = *out; p.size() > 1; p = DirName(p)) {
    bool is_root = p == c.output_root;
    for (const std::string& r : c.watch_roots) is_root |= p == r;
    if (is_root) break;
    struct stat st;
    if (lstat(p.c_str(), &st) == 0 && S_ISLNK(st.st_mode)) {
      return absl::StrCat("its output path ", *out, " goes through the symbolic link ", p);
    }
  }
  return "";
}

std::string Daemon::OutputFor(const std::string& run_dir) const {
  Config c = config();
  // PyTorch's HuggingFaceStorageWriter(enable_consolidation=True) saves its shards to
  // RUN/sharded/ and consolidates them into RUN: that is where their output belongs.
  if (BaseName(run_dir) == kShardedSubdir) return DirName(run_dir);
  std::string parent = DirName(run_dir), name = BaseName(run_dir);
  std::string root;
  for (const std::string& r : c.watch_roots) {
    if (absl::StartsWith(run_dir, r + "/")) root = r;
  }
  return absl::StrReplaceAll(c.output_template,
                             {{"{parent}", parent}, {"{name}", name}, {"{root}", root}});
}

void Daemon::ScanRoots() {
  rescans_++;
  ScanTrees(config().watch_roots, /*recursive=*/true, NowMs());
}

void Daemon::ScanTrees(std::vector<std::string> stack, bool recursive, int64_t now) {
  std::vector<std::string> runs;
  while (!stack.empty()) {
    std::string d = stack.back();
    stack.pop_back();
    absl::StatusOr<std::vector<DirEntry>> entries = RootsFs().List(d);
    if (!entries.ok()) continue;
    bool run = false;
    for (const DirEntry& e : *entries) {
      if (e.is_dir) {
        // Symbolic links under a root are never followed (no cycles, nothing outside the roots).
        if (recursive && !e.is_symlink && e.name[0] != '.') stack.push_back(JoinPath(d, e.name));
      } else if ((absl::StartsWith(e.name, "shard-") && absl::EndsWith(e.name, ".safetensors")) ||
                 e.name == kCompletionManifest) {
        run = true;
      }
    }
    if (run) runs.push_back(NormalizeDir(d));
  }
  for (const std::string& r : runs) {
    if (stopping_) return;
    EvaluateRun(r, now);
  }
}

void Daemon::EvaluateRun(const std::string& dir, int64_t now) {
  const std::string id = RunId(dir);
  absl::StatusOr<std::optional<RunRecord>> existing = store_->GetRun(id);
  if (!existing.ok()) return;
  RunRecord run;
  bool is_new = !existing->has_value();
  if (!is_new) run = **existing;
  bool has_shards, has_manifest;
  std::string fp = Fingerprint(dir, &has_shards, &has_manifest);
  if (!has_shards && has_manifest) {
    // A consolidated output (ours, kind "consolidated") is not a run to consolidate.
    absl::StatusOr<Manifest> m = ReadRunManifest(dir);
    if (m.ok() && m->kind == kManifestKindConsolidated) return;
  }
  if (is_new) {
    run.id = id;
    run.path = dir;
    run.first_seen_ms = now;
    run.last_change_ms = now;
    run.state = "incomplete";
    run.output = OutputFor(dir);
    // Not in the journal (first sight, or a journal rebuilt after corruption): an output whose
    // index was published after every source file last changed is this run's finished result.
    if (BaseName(dir) != kShardedSubdir && PublishedAfterSources(dir, run.output)) {
      run.fingerprint = fp;
      run.state = "published";
      run.detail = "published:" + fp;
      Journaled(store_->UpsertRun(run), "run");
      return;
    }
  }
  if (fp != run.fingerprint) {
    run.fingerprint = fp;
    run.last_change_ms = now;
    if (run.state == "published" || run.state == "parked" || run.state == "failed") {
      run.state = "incomplete";  // re-saved: it will be consolidated again once finished
    }
  }
  if (run.state == "queued" || run.state == "running" || run.state == "published" ||
      run.state == "parked" || run.state == "failed") {
    if (is_new || fp != (**existing).fingerprint) Journaled(store_->UpsertRun(run), "UpsertRun");
    return;
  }
  Config c = config();
  // What needs a person, decided before anything is read: a symlinked shard or manifest (never
  // followed), and an output that would land outside the roots or on a source.
  if (std::string park = WhyParked(dir, run.output); !park.empty()) {
    if (run.state != "parked" || run.detail != park) {
      run.state = "parked";
      run.detail = park;
      Log("warning", "run parked", {{"path", dir}, {"why", park}});
      Journaled(store_->UpsertRun(run), "UpsertRun");
    }
    return;
  }
  std::string why;
  bool ready = false;
  if (has_manifest) {
    run.detection = "manifest";
    // The one manifest parser: a malformed or hostile manifest is an error value, never an
    // exception in the scheduler thread.
    absl::StatusOr<Manifest> m = ReadRunManifest(dir);
    if (!m.ok()) {
      why = absl::StrCat("completion manifest is unreadable: ", m.status().message());
    } else {
      ready = true;
      for (const ManifestFile& f : m->files) {
        absl::StatusOr<FileStat> st = RootsFs().Stat(JoinPath(dir, f.name));
        if (!st.ok() || st->size != f.size) {
          ready = false;
          why = absl::StrCat("manifest lists ", f.name, " (", f.size, " bytes), which ",
                             st.ok() ? absl::StrCat("has ", st->size, " bytes") : "is missing");
          break;
        }
      }
      if (ready) {
        // Every listed file is in place; the scan judges the rest (ranks, coverage, extras).
        ScanOptions so;
        so.expect_ranks = c.ExpectedRanksFor(dir);
        absl::StatusOr<CheckpointLayout> ck = CheckpointLayout::Scan(RootsFs(), dir, so);
        if (!ck.ok()) {
          ready = false;
          why = std::string(ck.status().message());
        } else if (ck->HasBlockingProblem()) {
          ready = false;
          for (const Problem& p : ck->problems()) {
            if (IsBlocking(p.kind)) {
              why = p.ToString();
              break;
            }
          }
        }
      }
    }
  } else {
    run.detection = "inferred";
    double quiet_ms = c.quiet_period_seconds * 1000;
    if (now - run.last_change_ms < quiet_ms) {
      why = "changed less than the quiet period ago";
      NoteDeadline(run.last_change_ms + static_cast<int64_t>(quiet_ms) + 1);
    } else {
      ScanOptions so;
      so.expect_ranks = c.ExpectedRanksFor(dir);
      so.strict = c.strict;
      absl::StatusOr<CheckpointLayout> ck = CheckpointLayout::Scan(RootsFs(), dir, so);
      if (!ck.ok()) {
        why = std::string(ck.status().message());
      } else if (!ck->problems().empty()) {
        why = ck->problems()[0].ToString();
      } else if (ck->kind() != CheckpointKind::kDcpSharded) {
        why = "not a per-rank DCP checkpoint";
      } else if (ck->tensors().empty()) {
        why = "its shard files hold no tensors";
      } else {
        ready = true;
        if (!ck->completeness().proven) {
          // Headers alone cannot rule out a lost highest rank: say so (the run's API record
          // carries it too, under "completeness").
          Log("warning", "run finished by inference; its completeness cannot be proven",
              {{"path", dir}, {"why", ck->completeness().unproven}});
        }
      }
    }
  }
  if (!ready) {
    run.state = "incomplete";
    run.detail = why;
    Journaled(store_->UpsertRun(run), "UpsertRun");
    return;
  }
  // RUN/sharded/ whose writer already consolidated it into RUN (PyTorch's
  // enable_consolidation publishes RUN's index last): nothing to do.
  if (BaseName(dir) == kShardedSubdir &&
      RootsFs().Stat(JoinPath(run.output, std::string(kIndexFileName))).ok() &&
      run.detail.rfind("published:", 0) != 0) {
    run.state = "published";
    run.detail = "consolidated by its writer into " + run.output;
    Journaled(store_->UpsertRun(run), "UpsertRun");
    return;
  }
  // An output already published for exactly these files is never redone.
  if (RootsFs().Stat(JoinPath(run.output, std::string(kIndexFileName))).ok() &&
      run.detail == "published:" + fp) {
    run.state = "published";
    Journaled(store_->UpsertRun(run), "UpsertRun");
    return;
  }
  JobRecord j;
  j.run_id = run.id;
  j.output = run.output;
  j.created_ms = now;
  absl::StatusOr<int64_t> jid = store_->AddJob(j);
  if (!jid.ok()) {
    // No job: the run stays visible as not done, and the next evaluation tries again.
    run.state = "incomplete";
    run.detail = absl::StrCat("could not queue its consolidation: ", jid.status().message());
    Journaled(store_->UpsertRun(run), "run");
    Log("error", "could not queue a consolidation", {{"run", run.id}, {"error", run.detail}});
    return;
  }
  run.state = "queued";
  run.detail = "";
  Journaled(store_->UpsertRun(run), "run");
  Log("info", "run finished; consolidation queued",
      {{"run", run.id}, {"path", dir}, {"detection", run.detection},
       {"job", *jid}, {"output", run.output}});
}

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
    bool waiting_retry = j.state == "failed" && j.retryable && j.attempts < c.max_attempts;
    if (waiting_retry && j.next_attempt_ms > now &&
        (next_deadline_ms_ == 0 || j.next_attempt_ms < next_deadline_ms_)) {
      next_deadline_ms_ = j.next_attempt_ms;
    }
    bool due = j.state == "queued" || (waiting_retry && j.next_attempt_ms <= now);
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
      int64_t next = last_full_scan_ms_ + static_cast<int64_t>(config_.rescan_interval_seconds * 1000);
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
    j.state = "failed";
    j.retryable = false;
    j.error = refused;
    j.finished_ms = NowMs();
    Journaled(store_->UpdateJob(j), "UpdateJob");
    Log("error", "job refused: its output is not safe to write", {{"job", j.id}, {"why", refused}});
    absl::MutexLock l(&mu_);
    a->finished = true;
    schedule_ = true;
    return;
  }
  j.state = "running";
  j.attempts++;
  j.started_ms = NowMs();
  j.error.clear();
  Journaled(store_->UpdateJob(j), "UpdateJob");
  run.state = "running";
  Journaled(store_->UpsertRun(run), "UpsertRun");
  Log("info", "job started", {{"job", j.id}, {"run", run.id}, {"kind", j.kind}, {"attempt", j.attempts}});

  bool shards, manifest;
  std::string fp_before = Fingerprint(run.path, &shards, &manifest);
  absl::Status status;
  int64_t last_db = 0;
  if (j.kind == "remap") {
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
    ConsolidateOptions o;
    std::vector<std::string> warnings;
    KeyMap km;
    if (c.files_mode == "max_shard_size") {
      absl::StatusOr<uint64_t> s = ParseByteSize(c.max_shard_size);
      if (s.ok()) {
        o.max_shard_size = *s;
      } else {
        status = s.status();  // never silently one file
      }
    } else if (c.files_mode == "reference") {
      absl::StatusOr<std::map<std::string, int>> m = MappingFromReference(LocalFileSystem(), c.reference, &warnings);
      if (m.ok()) {
        o.fqn_to_index = *m;
        o.unmapped = UnmappedPolicy::kOwnFile;
      } else {
        status = m.status();
      }
      if (c.restore_dtypes && status.ok()) {
        absl::StatusOr<std::map<std::string, DType>> d = DTypesFromReference(LocalFileSystem(), c.reference);
        if (d.ok()) {
          o.fqn_to_dtype = *d;
        } else {
          status = d.status();  // never silently the shards' dtypes
        }
      }
    }
    o.cast_dtype = c.cast_dtype;
    if (!c.key_map.empty()) {
      absl::StatusOr<KeyMap> k = KeyMap::Create(c.key_map);
      if (k.ok()) {
        km = std::move(*k);
        o.key_map = &km;
      } else if (status.ok()) {
        status = k.status();  // never silently the original names
      }
    }
    o.threads = c.threads_per_job;
    o.verify = true;
    o.overwrite = true;
    o.expect_ranks = c.ExpectedRanksFor(run.path);
    o.strict = c.strict;
    o.cancel = &a->cancel;
    o.progress = [&](uint64_t done, uint64_t total) {
      a->done = done;
      a->total = total;
      int64_t now = NowMs();
      if (now - last_db > 1000 || done == total) {
        last_db = now;
        j.bytes_done = static_cast<int64_t>(done);
        j.bytes_total = static_cast<int64_t>(total);
        if (done == total) j.state = "verifying";
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
    (void)RootsFs().Remove(JoinPath(j.output, std::string(kIndexFileName)));
    status = absl::AbortedError("the run changed while it was being consolidated; will retry");
  }
  j.finished_ms = NowMs();
  if (status.ok()) {
    j.state = "published";
    j.error.clear();
    jobs_published_++;
    if (j.kind == "consolidate") {
      run.state = "published";
      run.detail = "published:" + fp_after;
    } else if (run.state == "running") {
      run.state = "published";
    }
    Log("info", "job published", {{"job", j.id}, {"run", run.id}, {"output", j.output},
                                   {"bytes", j.bytes_total}, {"seconds", j.seconds}});
  } else {
    jobs_failed_++;
    j.error = std::string(status.message());
    switch (status.code()) {
      case absl::StatusCode::kFailedPrecondition:
      case absl::StatusCode::kInvalidArgument:
        j.state = "parked";  // needs a person: coverage gap, conflicting keys, bad options
        j.retryable = false;
        run.state = "parked";
        run.detail = j.error;
        break;
      case absl::StatusCode::kCancelled:
        if (stopping_) {
          j.state = "queued";  // the daemon is stopping: resume on the next start
        } else {
          j.state = "cancelled";
          run.state = "parked";
          run.detail = "cancelled through the API";
        }
        j.retryable = false;
        break;
      default:
        j.state = "failed";
        j.retryable = j.attempts < c.max_attempts;
        j.next_attempt_ms = NowMs() + BackoffMs(j.attempts);
        run.state = j.retryable ? "queued" : "failed";
        run.detail = j.error;
        break;
    }
    Log(j.state == "queued" ? "info" : "error", "job did not publish",
        {{"job", j.id}, {"run", run.id}, {"state", j.state}, {"error", j.error},
         {"retryable", j.retryable}, {"next_attempt_ms", j.next_attempt_ms}});
  }
  Journaled(store_->UpdateJob(j), "UpdateJob");
  Journaled(store_->UpsertRun(run), "UpsertRun");
  if (status.ok() && j.kind == "consolidate") ApplyRetention(run);
  absl::MutexLock l(&mu_);
  a->finished = true;
  schedule_ = true;
}

void Daemon::ApplyRetention(const RunRecord& run) {
  Config c = config();
  if (c.retention == "keep") return;
  auto drop_sources = [](const std::string& dir) {
    absl::StatusOr<std::vector<DirEntry>> entries = RootsFs().List(dir);
    if (!entries.ok()) return;
    for (const DirEntry& e : *entries) {
      if ((absl::StartsWith(e.name, "shard-") && absl::EndsWith(e.name, ".safetensors")) ||
          e.name == kCompletionManifest) {
        (void)RootsFs().Remove(JoinPath(dir, e.name));
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
    if (r.state == "published" && DirName(r.path) == DirName(run.path)) siblings.push_back(r);
  }
  std::sort(siblings.begin(), siblings.end(),
            [](const RunRecord& a, const RunRecord& b) { return a.last_change_ms > b.last_change_ms; });
  for (size_t i = c.keep_last; i < siblings.size(); ++i) drop_sources(siblings[i].path);
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
        json cj = {{"file", ck->files()[c.file].name}, {"offsets", c.offsets},
                   {"sizes", c.sizes}, {"byte_range", {c.begin, c.end}}};
        if (!c.key.empty()) cj["key"] = c.key;
        chunks.push_back(std::move(cj));
      }
      tensors.push_back({{"name", t.name}, {"dtype", std::string(DTypeName(t.dtype))},
                         {"shape", t.shape}, {"chunks", chunks}});
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
  return {{"jobs", out}, {"max_concurrent_jobs", config_.max_concurrent_jobs},
          {"max_running_seen", max_running_seen_.load()}};
}

std::string Daemon::Metrics() {
  std::map<std::string, int> by_state = {{"queued", 0},    {"running", 0},  {"verifying", 0},
                                         {"published", 0}, {"failed", 0},   {"parked", 0},
                                         {"cancelled", 0}};
  absl::StatusOr<std::vector<JobRecord>> jobs = store_->ListJobs();
  if (jobs.ok()) {
    for (const JobRecord& j : *jobs) by_state[j.state]++;
  }
  std::string out =
      "# HELP safeshard_jobs Jobs by state.\n# TYPE safeshard_jobs gauge\n";
  for (const auto& [s, n] : by_state) absl::StrAppend(&out, "safeshard_jobs{state=\"", s, "\"} ", n, "\n");
  absl::StrAppend(&out,
                  "# HELP safeshard_bytes_consolidated_total Tensor bytes written by published "
                  "consolidations.\n# TYPE safeshard_bytes_consolidated_total counter\n"
                  "safeshard_bytes_consolidated_total ", bytes_consolidated_.load(), "\n",
                  "# HELP safeshard_consolidation_seconds_total Time spent consolidating.\n"
                  "# TYPE safeshard_consolidation_seconds_total counter\n"
                  "safeshard_consolidation_seconds_total ", seconds_total_.load(), "\n",
                  "# TYPE safeshard_jobs_published_total counter\nsafeshard_jobs_published_total ",
                  jobs_published_.load(), "\n",
                  "# TYPE safeshard_job_errors_total counter\nsafeshard_job_errors_total ",
                  jobs_failed_.load(), "\n",
                  "# TYPE safeshard_rescans_total counter\nsafeshard_rescans_total ", rescans_.load(), "\n",
                  "# TYPE safeshard_inotify_overflows_total counter\nsafeshard_inotify_overflows_total ",
                  inotify_overflows_.load(), "\n",
                  "# TYPE safeshard_watch_limit_errors_total counter\nsafeshard_watch_limit_errors_total ",
                  watch_limit_errors_.load(), "\n",
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
  if (run->state == "running" || run->state == "queued") {
    return absl::FailedPreconditionError(absl::StrCat("run ", run->id, " is already ", run->state));
  }
  JobRecord j;
  j.run_id = run->id;
  j.output = run->output;
  j.created_ms = NowMs();
  absl::StatusOr<int64_t> id = store_->AddJob(j);
  if (!id.ok()) return id.status();
  RunRecord r = *run;
  r.state = "queued";
  Journaled(store_->UpsertRun(r), "UpsertRun");
  absl::MutexLock l(&mu_);
  schedule_ = true;
  return id;
}

absl::StatusOr<int64_t> Daemon::RequestRemap(const std::string& id_or_path, const json& rules,
                                             const std::string& output) {
  absl::StatusOr<RunRecord> run = FindRun(id_or_path);
  if (!run.ok()) return run.status();
  absl::StatusOr<KeyMap> km = KeyMap::FromJson(internal::DumpJson(rules));
  if (!km.ok()) return km.status();
  absl::StatusOr<std::string> out = ResolveUnderRoots(output, /*outputs=*/true);
  if (!out.ok()) return out.status();
  if (std::string refused = WhyOutputRefused(run->path, *out); !refused.empty()) {
    return absl::PermissionDeniedError(absl::StrCat("remap output refused: ", refused));
  }
  // Another run's source or published output is never a remap's output.
  absl::StatusOr<std::vector<RunRecord>> runs = store_->ListRuns();
  if (!runs.ok()) return runs.status();
  for (const RunRecord& r : *runs) {
    for (const std::string& taken : {r.path, r.output}) {
      if (taken.empty()) continue;
      if (*out == taken || absl::StartsWith(*out, taken + "/") ||
          SameDirectory(RootsFs(), *out, taken)) {
        return absl::PermissionDeniedError(absl::StrCat(
            "remap output ", *out, " is ", taken == r.path ? "the source" : "the output",
            " of run ", r.id, " (", taken, "); choose a new directory"));
      }
    }
  }
  JobRecord j;
  j.run_id = run->id;
  j.kind = "remap";
  j.rules = internal::DumpJson(rules);
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
  if (r.state == "queued" || (r.state == "failed" && r.retryable)) {
    r.state = "cancelled";
    r.retryable = false;
    return store_->UpdateJob(r);
  }
  return absl::FailedPreconditionError(absl::StrCat("job ", id, " is ", r.state));
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

bool Daemon::HostAllowed(const std::string& host) const {
  if (host.empty()) return false;  // HTTP/1.1 requires it; curl and browsers send it
  std::string name = host;
  // Strip ":port" (after a ']' for IPv6 literals).
  const size_t colon = name.rfind(':');
  const size_t bracket = name.rfind(']');
  if (colon != std::string::npos && (bracket == std::string::npos || colon > bracket)) {
    if (name.substr(colon + 1) != std::to_string(port_)) return false;
    name = name.substr(0, colon);
  }
  const std::string configured = config().api_address;
  return name == "127.0.0.1" || name == "localhost" || name == "[::1]" ||
         name == configured || (!configured.empty() && name == "[" + configured + "]");
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
  return absl::PermissionDeniedError(absl::StrCat(
      "path \"", path, "\" (", resolved, ") is not under a watch root",
      outputs && !c.output_root.empty() ? " or the output root" : ""));
}

}  // namespace safeshard::daemon
