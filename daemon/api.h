// api.h: safeshardd's control API — where it listens, where its token lives, its endpoints and
// bounds. The daemon serves these; `safeshard daemon-*` and the inspector's daemon panel call
// them. Header-only and dependency-free, so any client can include it.
//
//   GET  /v1/health                      {"status": "ok", "roots": [...], "running_jobs": n}
//   GET  /v1/runs                        {"runs": [run, ...]}
//   GET  /v1/runs/{id}                   one run, with its checkpoint's verdict
//   GET  /v1/jobs                        {"jobs": [job, ...]}
//   GET  /metrics                        Prometheus text
//   POST /v1/runs/{id}/consolidate       (token) queue a consolidation -> 202 {"job": n}
//   POST /v1/runs/{id}/remap             (token) {"rules": [[re, repl], ...], "output": dir}
//   POST /v1/rescan                      (token) look at every root again
//   POST /v1/jobs/{id}/cancel            (token) cancel a queued or running job
//
// Mutating calls need "Authorization: Bearer <token>" (the token file is created 0600 at the
// first start). Only Host headers naming the API's own address are answered (DNS rebinding).
#ifndef SAFESHARD_DAEMON_API_H_
#define SAFESHARD_DAEMON_API_H_

#include <sys/stat.h>

#include <cstdlib>
#include <string>

#include <cstddef>
#include <string>

namespace safeshard::daemon::api {

inline constexpr char kDefaultAddress[] = "127.0.0.1";
inline constexpr int kDefaultPort = 8470;
// The token file: this path below $HOME unless configured (api.token_file / --token-file).
inline constexpr char kTokenFileBelowHome[] = ".config/safeshard/token";
// The packaged service's token (StateDirectory=safeshard), readable by group safeshard: the
// CLI and the inspector use it when there is none below $HOME.
inline constexpr char kServiceTokenFile[] = "/var/lib/safeshard/token";

// The token file a client reads by default: ~/.config/safeshard/token when it exists (a daemon
// the user runs), else the service's when it exists, else the former (named in errors).
inline std::string DefaultClientTokenFile() {
  const char* home = std::getenv("HOME");
  const std::string mine =
      std::string(home != nullptr ? home : "/root") + "/" + kTokenFileBelowHome;
  struct stat st;
  if (::stat(mine.c_str(), &st) != 0 && ::stat(kServiceTokenFile, &st) == 0) {
    return kServiceTokenFile;
  }
  return mine;
}

inline constexpr char kHealth[] = "/v1/health";
inline constexpr char kRuns[] = "/v1/runs";
inline constexpr char kJobs[] = "/v1/jobs";
inline constexpr char kMetrics[] = "/metrics";
inline constexpr char kRescan[] = "/v1/rescan";
inline std::string RunPath(const std::string& id) {
  return std::string(kRuns) + "/" + id;
}
inline std::string ConsolidatePath(const std::string& id) {
  return RunPath(id) + "/consolidate";
}
inline std::string RemapPath(const std::string& id) {
  return RunPath(id) + "/remap";
}
inline std::string CancelPath(long long job) {
  return std::string(kJobs) + "/" + std::to_string(job) + "/cancel";
}

// Server bounds: request body bytes (larger: 413, never buffered), worker threads (started on
// demand; connections are served newest first, so idle connections delay a new client by at
// most the keep-alive timeout), seconds a connection may sit idle or take to send a request.
inline constexpr size_t kMaxRequestBody = 1 << 20;
inline constexpr size_t kMaxWorkers = 128;
inline constexpr int kIdleSeconds = 2;

}  // namespace safeshard::daemon::api

#endif  // SAFESHARD_DAEMON_API_H_
