// nginx.h: a real nginx for remote-storage tests, started on 127.0.0.1 with the repository's
// config (core/testing/nginx.conf.in), and a TCP proxy that drops connections mid-transfer.
//
//   ASSIGN_OR_RETURN(auto server, NginxServer::Start(root_dir, "secret-token"));
//   server->url()          "http://127.0.0.1:PORT"
//   server->AccessLog()    every request finished so far: method, path, status, body bytes, Range
//                          (waits until nginx has logged them all)
#ifndef SAFESHARD_CORE_TESTING_NGINX_H_
#define SAFESHARD_CORE_TESTING_NGINX_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"

namespace safeshard::testing {

struct AccessLogEntry {
  std::string method, path, range;
  int status = 0;
  uint64_t bytes = 0;  // body bytes sent
};

class NginxServer {
 public:
  // Needs `nginx` on PATH or in /usr/sbin (tools/setup installs it).
  static absl::StatusOr<std::unique_ptr<NginxServer>> Start(const std::string& root,
                                                            const std::string& token);
  ~NginxServer();
  std::string url() const;
  int port() const { return port_; }
  std::vector<AccessLogEntry> AccessLog() const;
  void ClearAccessLog();

 private:
  NginxServer() = default;
  std::string prefix_;
  int port_ = 0;
  int pid_ = -1;
};

// Listens on 127.0.0.1 and relays to `upstream_port`; the first `drops` connections are cut
// after `drop_after` bytes of the server's answer (a server dying mid-transfer), or, with
// `answer_503`, answered "503 Service Unavailable" without reaching the server.
class FlakyProxy {
 public:
  static absl::StatusOr<std::unique_ptr<FlakyProxy>> Start(int upstream_port, int drops,
                                                           uint64_t drop_after,
                                                           bool answer_503 = false);
  ~FlakyProxy();
  int port() const { return port_; }
  std::string url() const;
  int dropped() const { return dropped_.load(); }

 private:
  FlakyProxy() = default;
  void Serve();
  void Relay(int client, bool drop);
  int listen_fd_ = -1, port_ = 0, upstream_ = 0, drops_ = 0;
  bool answer_503_ = false;
  uint64_t drop_after_ = 0;
  std::atomic<int> accepted_{0}, dropped_{0};
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::vector<std::thread> relays_;
};

}  // namespace safeshard::testing

#endif  // SAFESHARD_CORE_TESTING_NGINX_H_
