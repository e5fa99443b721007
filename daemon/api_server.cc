#include "daemon/api_server.h"

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/format/internal/json_util.h"
#include "daemon/api.h"
#include "daemon/daemon.h"
#include "daemon/requests.h"
#include "httplib.h"
#include "nlohmann/json.hpp"

namespace safeshard::daemon {
namespace {

using nlohmann::json;

// The API's workers: started on demand up to api::kMaxWorkers, and connections served newest
// first. An idle connection holds a worker for at most api::kIdleSeconds, so a burst of idle
// connections (a careless script, a hostile local user) delays a new client by about that
// much, instead of queueing it behind every one of them (FIFO: 500 idle connections over 32
// workers kept the API silent for 20-30 s).
class NewestFirstQueue : public httplib::TaskQueue {
 public:
  explicit NewestFirstQueue(size_t max_workers) : max_workers_(max_workers) {}
  ~NewestFirstQueue() override { shutdown(); }

  void enqueue(std::function<void()> fn) override {
    std::lock_guard<std::mutex> l(mu_);
    tasks_.push_back(std::move(fn));
    if (tasks_.size() > idle_ && workers_.size() < max_workers_) {
      workers_.emplace_back([this] { Work(); });
    } else {
      cv_.notify_one();
    }
  }

  void shutdown() override {
    std::vector<std::thread> workers;
    {
      std::lock_guard<std::mutex> l(mu_);
      stopping_ = true;
      workers.swap(workers_);
    }
    cv_.notify_all();
    for (std::thread& t : workers) t.join();
  }

 private:
  void Work() {
    std::unique_lock<std::mutex> l(mu_);
    while (true) {
      ++idle_;
      cv_.wait(l, [this] { return stopping_ || !tasks_.empty(); });
      --idle_;
      if (tasks_.empty()) return;  // stopping, nothing left to serve
      std::function<void()> fn = std::move(tasks_.back());
      tasks_.pop_back();
      l.unlock();
      fn();  // serves the connection and closes it
      l.lock();
    }
  }

  const size_t max_workers_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  std::vector<std::thread> workers_;
  size_t idle_ = 0;
  bool stopping_ = false;
};

void Reply(httplib::Response& res, int code, const json& body) {
  res.status = code;
  res.set_content(internal::DumpJson(body, 2) + "\n", "application/json");
}

void ReplyError(httplib::Response& res, const absl::Status& s) {
  int code = 500;
  switch (s.code()) {
    case absl::StatusCode::kNotFound: code = 404; break;
    case absl::StatusCode::kInvalidArgument: code = 400; break;
    case absl::StatusCode::kPermissionDenied: code = 403; break;
    case absl::StatusCode::kFailedPrecondition: code = 409; break;
    case absl::StatusCode::kAlreadyExists: code = 409; break;
    default: break;
  }
  Reply(res, code, {{"error", std::string(s.message())}});
}

}  // namespace

absl::StatusOr<std::unique_ptr<ApiServer>> ApiServer::Bind(Daemon& daemon,
                                                           const std::string& address, int port) {
  std::unique_ptr<ApiServer> api(new ApiServer(daemon, address));
  api->server_ = std::make_unique<httplib::Server>();
  api->Route();
  httplib::Server& srv = *api->server_;
  api->port_ =
      port == 0 ? srv.bind_to_any_port(address) : (srv.bind_to_port(address, port) ? port : -1);
  if (api->port_ <= 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", address, ":", port, " (in use?)"));
  }
  api->thread_ = std::thread([s = api->server_.get()] { s->listen_after_bind(); });
  return api;
}

ApiServer::ApiServer(Daemon& d, std::string address) : daemon_(d), address_(std::move(address)) {}

ApiServer::~ApiServer() {
  Stop();
}

void ApiServer::Stop() {
  if (server_) server_->stop();
  if (thread_.joinable()) thread_.join();
}

bool ApiServer::HostAllowed(const std::string& host) const {
  if (host.empty()) return false;  // HTTP/1.1 requires it; curl and browsers send it
  std::string name = host;
  // Strip ":port" (after a ']' for IPv6 literals).
  const size_t colon = name.rfind(':');
  const size_t bracket = name.rfind(']');
  if (colon != std::string::npos && (bracket == std::string::npos || colon > bracket)) {
    if (name.substr(colon + 1) != std::to_string(port_)) return false;
    name = name.substr(0, colon);
  }
  return name == "127.0.0.1" || name == "localhost" || name == "[::1]" || name == address_ ||
         (!address_.empty() && name == "[" + address_ + "]");
}

void ApiServer::Route() {
  httplib::Server& srv = *server_;
  // Bounded: request bodies, slow or idle clients (short read and keep-alive timeouts, workers
  // on demand, newest first), the Host header.
  srv.new_task_queue = [] { return new NewestFirstQueue(api::kMaxWorkers); };
  srv.set_payload_max_length(api::kMaxRequestBody);
  srv.set_read_timeout(api::kIdleSeconds, 0);
  srv.set_write_timeout(5, 0);
  srv.set_keep_alive_timeout(api::kIdleSeconds);
  srv.set_keep_alive_max_count(100);
  srv.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    // httplib does not cap chunked bodies: the API takes none (its bodies are small JSON with a
    // Content-Length). Several Host headers are refused too.
    if (req.get_header_value_count("Host") > 1 ||
        absl::StrContains(absl::AsciiStrToLower(req.get_header_value("Transfer-Encoding")),
                          "chunked")) {
      res.status = 400;
      res.set_content(
          "{\"error\": \"chunked request bodies and repeated Host headers are not accepted\"}\n",
          "application/json");
      res.set_header("Connection", "close");
      return httplib::Server::HandlerResponse::Handled;
    }
    if (HostAllowed(req.get_header_value("Host")))
      return httplib::Server::HandlerResponse::Unhandled;
    res.status = 403;
    res.set_content(
        "{\"error\": \"Host header not allowed: the API answers only to its own "
        "address (127.0.0.1, localhost, [::1] or the configured address)\"}\n",
        "application/json");
    return httplib::Server::HandlerResponse::Handled;
  });
  Daemon& d = daemon_;
  auto authed = [&d](const httplib::Request& req, httplib::Response& res) {
    if (d.CheckToken(req.get_header_value("Authorization"))) return true;
    Reply(res, 401, {{"error", "missing or wrong bearer token (see the daemon's token file)"}});
    return false;
  };
  srv.Get(api::kHealth,
          [&d](const httplib::Request&, httplib::Response& res) { Reply(res, 200, d.Health()); });
  srv.Get(api::kRuns,
          [&d](const httplib::Request&, httplib::Response& res) { Reply(res, 200, d.Runs()); });
  srv.Get(R"(/v1/runs/([0-9a-f]+))", [&d](const httplib::Request& req, httplib::Response& res) {
    absl::StatusOr<json> r = d.Run(req.matches[1]);
    if (!r.ok()) return ReplyError(res, r.status());
    Reply(res, 200, *r);
  });
  srv.Get(api::kJobs,
          [&d](const httplib::Request&, httplib::Response& res) { Reply(res, 200, d.Jobs()); });
  srv.Get(api::kMetrics, [&d](const httplib::Request&, httplib::Response& res) {
    res.set_content(d.Metrics(), "text/plain; version=0.0.4");
  });
  srv.Post(R"(/v1/runs/([0-9a-f]+)/consolidate)",
           [&d, authed](const httplib::Request& req, httplib::Response& res) {
             if (!authed(req, res)) return;
             absl::StatusOr<int64_t> id = d.RequestConsolidate(req.matches[1]);
             if (!id.ok()) return ReplyError(res, id.status());
             Reply(res, 202, {{"job", *id}});
           });
  srv.Post(R"(/v1/runs/([0-9a-f]+)/remap)",
           [&d, authed](const httplib::Request& req, httplib::Response& res) {
             if (!authed(req, res)) return;
             absl::StatusOr<RemapRequest> body = ParseRemapRequest(req.body);
             if (!body.ok()) return ReplyError(res, body.status());
             absl::StatusOr<int64_t> id = d.RequestRemap(req.matches[1], body->rules, body->output);
             if (!id.ok()) return ReplyError(res, id.status());
             Reply(res, 202, {{"job", *id}});
           });
  srv.Post(api::kRescan, [&d, authed](const httplib::Request& req, httplib::Response& res) {
    if (!authed(req, res)) return;
    d.RequestRescan();
    Reply(res, 202, {{"rescan", "requested"}});
  });
  srv.Post(R"(/v1/jobs/(\d{1,18})/cancel)",
           [&d, authed](const httplib::Request& req, httplib::Response& res) {
             if (!authed(req, res)) return;
             absl::Status s = d.CancelJob(std::stoll(req.matches[1]));
             if (!s.ok()) return ReplyError(res, s);
             Reply(res, 202, {{"cancel", "requested"}});
           });
}

}  // namespace safeshard::daemon
