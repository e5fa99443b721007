#include "core/testing/nginx.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "core/testing/testing.h"

namespace safeshard::testing {
namespace {

std::string FindConfigTemplate() {
  for (const char* p : {"core/testing/nginx.conf.in"}) {
    if (access(p, R_OK) == 0) return p;
  }
  if (const char* src = std::getenv("TEST_SRCDIR")) {
    std::string p = absl::StrCat(src, "/safeshard/core/testing/nginx.conf.in");
    if (access(p.c_str(), R_OK) == 0) return p;
  }
  return {};
}

std::string FindNginx() {
  for (const char* p : {"/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"}) {
    if (access(p, X_OK) == 0) return p;
  }
  return {};
}

bool CanConnect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool ok = connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  close(fd);
  return ok;
}

}  // namespace

absl::StatusOr<std::unique_ptr<NginxServer>> NginxServer::Start(const std::string& root,
                                                                const std::string& token) {
  const std::string nginx = FindNginx();
  if (nginx.empty())
    return absl::FailedPreconditionError("nginx is not installed (run tools/setup)");
  const std::string tmpl_path = FindConfigTemplate();
  if (tmpl_path.empty())
    return absl::FailedPreconditionError("core/testing/nginx.conf.in not found in runfiles");
  std::unique_ptr<NginxServer> s(new NginxServer());
  s->prefix_ = NewTempDir();
  for (int attempt = 0; attempt < 5; ++attempt) {
    s->port_ = FreePort();
    const std::string conf = absl::StrReplaceAll(
        ReadFile(tmpl_path), {{"@PREFIX@", s->prefix_},
                              {"@ROOT@", root},
                              {"@PORT@", std::to_string(s->port_)},
                              {"@TOKEN@", token},
                              {"@USER@", geteuid() == 0 ? "user root root;" : ""}});
    WriteFile(s->prefix_ + "/nginx.conf", conf);
    pid_t pid = fork();
    if (pid == 0) {
      execl(nginx.c_str(), "nginx", "-p", s->prefix_.c_str(), "-c",
            (s->prefix_ + "/nginx.conf").c_str(), "-e", (s->prefix_ + "/error.log").c_str(),
            static_cast<char*>(nullptr));
      _exit(127);
    }
    s->pid_ = pid;
    for (int i = 0; i < 200; ++i) {
      if (CanConnect(s->port_)) return s;
      int status = 0;
      if (waitpid(pid, &status, WNOHANG) == pid) {
        s->pid_ = -1;
        break;  // exited (port taken?): try another port
      }
      usleep(25000);
    }
    if (s->pid_ > 0) {
      kill(s->pid_, SIGKILL);
      waitpid(s->pid_, nullptr, 0);
      s->pid_ = -1;
    }
  }
  std::string log;
  std::ifstream f(s->prefix_ + "/error.log");
  std::stringstream ss;
  ss << f.rdbuf();
  return absl::UnavailableError(absl::StrCat("nginx did not start: ", ss.str()));
}

NginxServer::~NginxServer() {
  if (pid_ > 0) {
    kill(pid_, SIGTERM);
    waitpid(pid_, nullptr, 0);
  }
}

std::string NginxServer::url() const {
  return absl::StrCat("http://127.0.0.1:", port_);
}

namespace {

constexpr char kBarrierPrefix[] = "/.safeshard-log-barrier-";

// nginx writes a request's log line after it has sent the response, so a client can hold the
// whole answer before the line is in the file. A barrier request on a fresh connection, handled
// by the single worker after every earlier response was sent, is logged after all of them:
// once its line is in the file, so are theirs.
std::string Barrier(int port, const std::string& log_path) {
  static std::atomic<int> counter{0};
  const std::string path = absl::StrCat(kBarrierPrefix, getpid(), "-", counter.fetch_add(1));
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
    const std::string req = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    (void)!write(fd, req.data(), req.size());
    char buf[4096];
    while (read(fd, buf, sizeof buf) > 0) {
    }
  }
  close(fd);
  const std::string needle = absl::StrCat("\t", path, "\t");
  for (int i = 0; i < 500; ++i) {  // up to 5 s
    std::ifstream f(log_path);
    std::stringstream ss;
    ss << f.rdbuf();
    if (ss.str().find(needle) != std::string::npos) break;
    usleep(10000);
  }
  return path;
}

}  // namespace

std::vector<AccessLogEntry> NginxServer::AccessLog() const {
  const std::string barrier = Barrier(port_, prefix_ + "/access.log");
  std::vector<AccessLogEntry> out;
  std::ifstream f(prefix_ + "/access.log");
  std::string line;
  while (std::getline(f, line)) {
    std::vector<std::string> p = absl::StrSplit(line, '\t');
    if (p.size() < 5) continue;
    if (p[1] == barrier) break;
    if (absl::StartsWith(p[1], kBarrierPrefix)) continue;  // an earlier barrier
    AccessLogEntry e;
    e.method = p[0];
    e.path = p[1];
    (void)absl::SimpleAtoi(p[2], &e.status);
    (void)absl::SimpleAtoi(p[3], &e.bytes);
    e.range = p[4] == "-" ? "" : p[4];
    out.push_back(e);
  }
  return out;
}

void NginxServer::ClearAccessLog() {
  // Wait until every finished request is logged, then truncate (nginx appends: truncating is
  // enough).
  Barrier(port_, prefix_ + "/access.log");
  std::ofstream(prefix_ + "/access.log", std::ios::trunc);
}

absl::StatusOr<std::unique_ptr<FlakyProxy>> FlakyProxy::Start(int upstream_port, int drops,
                                                              uint64_t drop_after,
                                                              bool answer_503) {
  std::unique_ptr<FlakyProxy> p(new FlakyProxy());
  p->answer_503_ = answer_503;
  p->upstream_ = upstream_port;
  p->drops_ = drops;
  p->drop_after_ = drop_after;
  p->listen_fd_ = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(p->listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(p->listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      listen(p->listen_fd_, 64) != 0) {
    return absl::UnavailableError(absl::StrCat("proxy: ", std::strerror(errno)));
  }
  socklen_t len = sizeof a;
  getsockname(p->listen_fd_, reinterpret_cast<sockaddr*>(&a), &len);
  p->port_ = ntohs(a.sin_port);
  p->thread_ = std::thread([raw = p.get()] { raw->Serve(); });
  return p;
}

FlakyProxy::~FlakyProxy() {
  stop_ = true;
  shutdown(listen_fd_, SHUT_RDWR);
  close(listen_fd_);
  thread_.join();
  for (auto& t : relays_) t.join();
}

std::string FlakyProxy::url() const {
  return absl::StrCat("http://127.0.0.1:", port_);
}

void FlakyProxy::Serve() {
  while (!stop_) {
    pollfd pf{listen_fd_, POLLIN, 0};
    if (poll(&pf, 1, 100) <= 0) continue;
    int c = accept(listen_fd_, nullptr, nullptr);
    if (c < 0) continue;
    const bool drop = accepted_++ < drops_;
    relays_.emplace_back([this, c, drop] { Relay(c, drop); });
  }
}

void FlakyProxy::Relay(int client, bool drop) {
  if (drop && answer_503_) {
    // Read the request head, answer 503, close.
    char buf[16384];
    std::string head;
    while (head.find("\r\n\r\n") == std::string::npos) {
      ssize_t n = read(client, buf, sizeof buf);
      if (n <= 0) break;
      head.append(buf, static_cast<size_t>(n));
    }
    static const char kAnswer[] =
        "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    (void)!write(client, kAnswer, sizeof kAnswer - 1);
    dropped_++;
    close(client);
    return;
  }
  int up = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(upstream_));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(up, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    close(client);
    close(up);
    return;
  }
  uint64_t answered = 0;
  char buf[16384];
  while (!stop_) {
    pollfd fds[2] = {{client, POLLIN, 0}, {up, POLLIN, 0}};
    if (poll(fds, 2, 200) < 0) break;
    if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t n = read(client, buf, sizeof buf);
      if (n <= 0 || write(up, buf, static_cast<size_t>(n)) != n) break;
    }
    if (fds[1].revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t n = read(up, buf, sizeof buf);
      if (n <= 0) break;
      size_t send = static_cast<size_t>(n);
      if (drop && answered + send > drop_after_) send = static_cast<size_t>(drop_after_ - answered);
      if (send > 0 && write(client, buf, send) != static_cast<ssize_t>(send)) break;
      answered += send;
      if (drop && answered >= drop_after_) {
        dropped_++;
        break;  // cut mid-answer
      }
    }
  }
  close(client);
  close(up);
}

}  // namespace safeshard::testing
