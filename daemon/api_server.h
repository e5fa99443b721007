// api_server.h: the HTTP side of safeshardd's control API (daemon/api.h names the endpoints).
// It only translates: requests become calls on the Daemon's operations, their results JSON.
//
//   ASSIGN_OR_RETURN(std::unique_ptr<ApiServer> api, ApiServer::Bind(daemon, "127.0.0.1", 8470));
//   api->port();   // the bound port (a free one when asked for 0)
//   api->Stop();   // also what the destructor does
#ifndef SAFESHARD_DAEMON_API_SERVER_H_
#define SAFESHARD_DAEMON_API_SERVER_H_

#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace httplib {
class Server;
}

namespace safeshard::daemon {

class Daemon;

class ApiServer {
 public:
  // Binds `address`:`port` now (kUnavailable when taken) and serves on a thread of its own.
  static absl::StatusOr<std::unique_ptr<ApiServer>> Bind(Daemon& daemon, const std::string& address,
                                                         int port);
  ~ApiServer();
  int port() const { return port_; }
  void Stop();
  // Whether a request's Host header names this API (DNS rebinding defence): 127.0.0.1,
  // localhost, [::1] or the configured address, with this port or none.
  bool HostAllowed(const std::string& host) const;

 private:
  ApiServer(Daemon& d, std::string address);
  void Route();
  Daemon& daemon_;
  const std::string address_;
  int port_ = 0;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
};

}  // namespace safeshard::daemon

#endif  // SAFESHARD_DAEMON_API_SERVER_H_
