#include "core/consolidate/tcp_collective.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"

namespace safeshard {
namespace {

constexpr char kMagic[8] = {'S', 'S', 'H', 'D', 'T', 'C', 'P', '1'};
constexpr uint64_t kMaxFrame = uint64_t{1} << 34;  // 16 GiB: a corrupt length is an error

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      Reset();
      fd_ = o.fd_;
      o.fd_ = -1;
    }
    return *this;
  }
  ~Fd() { Reset(); }
  int get() const { return fd_; }
  void Reset() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

// Set by the collective in use (per thread: ranks in threads of one process do not share it).
thread_local const std::atomic<bool>* t_cancel = nullptr;

// Waits until `fd` is ready for `events`, the deadline passes or the wait is cancelled.
absl::Status WaitFor(int fd, short events, absl::Time deadline, const std::string& who) {
  while (true) {
    if (t_cancel != nullptr && t_cancel->load()) return absl::CancelledError("cancelled");
    const int64_t ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (ms <= 0) {
      return absl::DeadlineExceededError(
          absl::StrCat(who, " did not answer in time (it may have died or hung)"));
    }
    pollfd p{fd, events, 0};
    const int r = poll(&p, 1, static_cast<int>(std::min<int64_t>(ms, 100)));
    if (r > 0) return absl::OkStatus();
    if (r < 0 && errno != EINTR)
      return absl::InternalError(absl::StrCat("poll: ", strerror(errno)));
  }
}

absl::Status SendAll(int fd, const char* p, size_t n, absl::Time deadline, const std::string& who) {
  while (n > 0) {
    if (absl::Status s = WaitFor(fd, POLLOUT, deadline, who); !s.ok()) return s;
    const ssize_t w = send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return absl::AbortedError(absl::StrCat(who, " went away (", strerror(errno), ")"));
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return absl::OkStatus();
}

absl::Status RecvAll(int fd, char* p, size_t n, absl::Time deadline, const std::string& who) {
  while (n > 0) {
    if (absl::Status s = WaitFor(fd, POLLIN, deadline, who); !s.ok()) return s;
    const ssize_t r = recv(fd, p, n, MSG_DONTWAIT);
    if (r == 0) {
      return absl::AbortedError(absl::StrCat(who, " closed its connection (it exited or crashed)"));
    }
    if (r < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return absl::AbortedError(absl::StrCat(who, " went away (", strerror(errno), ")"));
    }
    p += r;
    n -= static_cast<size_t>(r);
  }
  return absl::OkStatus();
}

absl::Status SendFrame(int fd, const std::string& data, absl::Time deadline,
                       const std::string& who) {
  const uint64_t n = data.size();
  char len[8];
  std::memcpy(len, &n, 8);
  if (absl::Status s = SendAll(fd, len, 8, deadline, who); !s.ok()) return s;
  return SendAll(fd, data.data(), data.size(), deadline, who);
}

absl::StatusOr<std::string> RecvFrame(int fd, absl::Time deadline, const std::string& who) {
  char len[8];
  if (absl::Status s = RecvAll(fd, len, 8, deadline, who); !s.ok()) return s;
  uint64_t n;
  std::memcpy(&n, len, 8);
  if (n > kMaxFrame) return absl::DataLossError(absl::StrCat(who, " sent a malformed frame"));
  std::string out(n, '\0');
  if (absl::Status s = RecvAll(fd, out.data(), n, deadline, who); !s.ok()) return s;
  return out;
}

std::string Hello(int rank, int world, const std::string& key) {
  std::string h(kMagic, 8);
  const uint32_t r = static_cast<uint32_t>(rank), w = static_cast<uint32_t>(world);
  h.append(reinterpret_cast<const char*>(&r), 4);
  h.append(reinterpret_cast<const char*>(&w), 4);
  h += key;
  return h;
}

class TcpCollective : public Collective {
 public:
  TcpCollective(int rank, int world, absl::Duration timeout, std::vector<Fd> peers,
                const std::atomic<bool>* cancel)
      : rank_(rank), world_(world), timeout_(timeout), peers_(std::move(peers)), cancel_(cancel) {}
  int rank() const override { return rank_; }
  int world_size() const override { return world_; }

  absl::StatusOr<std::vector<std::string>> AllGather(const std::string& mine) override {
    t_cancel = cancel_;
    const absl::Time deadline = absl::Now() + timeout_;
    std::vector<std::string> all(world_);
    if (rank_ == 0) {
      all[0] = mine;
      for (int r = 1; r < world_; ++r) {
        absl::StatusOr<std::string> got =
            RecvFrame(peers_[r].get(), deadline, absl::StrCat("rank ", r));
        if (!got.ok()) return Fail(got.status());
        all[r] = std::move(*got);
      }
      std::string packed;
      for (const std::string& s : all) {
        const uint64_t n = s.size();
        packed.append(reinterpret_cast<const char*>(&n), 8);
        packed += s;
      }
      for (int r = 1; r < world_; ++r) {
        absl::Status s = SendFrame(peers_[r].get(), packed, deadline, absl::StrCat("rank ", r));
        if (!s.ok()) return Fail(s);
      }
      return all;
    }
    if (absl::Status s = SendFrame(peers_[0].get(), mine, deadline, "rank 0"); !s.ok())
      return Fail(s);
    absl::StatusOr<std::string> packed = RecvFrame(peers_[0].get(), deadline, "rank 0");
    if (!packed.ok()) return Fail(packed.status());
    size_t at = 0;
    for (int r = 0; r < world_; ++r) {
      uint64_t n = 0;
      if (at + 8 > packed->size()) return absl::DataLossError("rank 0 sent a malformed gather");
      std::memcpy(&n, packed->data() + at, 8);
      at += 8;
      if (n > packed->size() - at) return absl::DataLossError("rank 0 sent a malformed gather");
      all[r] = packed->substr(at, n);
      at += n;
    }
    return all;
  }

  absl::StatusOr<std::string> Broadcast(const std::string& data, int root) override {
    absl::StatusOr<std::vector<std::string>> all = AllGather(rank_ == root ? data : "");
    if (!all.ok()) return all.status();
    return (*all)[root];
  }

  absl::Status Barrier() override { return AllGather("").status(); }

 private:
  // After a failure every connection is closed: the other ranks then fail at once ("closed its
  // connection") instead of waiting for their timeout.
  absl::Status Fail(absl::Status s) {
    for (Fd& f : peers_) f.Reset();
    return s;
  }

  const int rank_, world_;
  const absl::Duration timeout_;
  std::vector<Fd> peers_;  // rank 0: one per other rank (index = rank); others: [0] = rank 0
  const std::atomic<bool>* cancel_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Collective>> NewTcpCollective(const TcpGroupOptions& o) {
  if (o.world_size < 1 || o.rank < 0 || o.rank >= o.world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank ", o.rank, " is not in a group of ", o.world_size));
  }
  if (o.world_size == 1) return NewSingleRank();
  if (!(o.timeout > absl::ZeroDuration()) || o.timeout == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError("the timeout must be a positive, finite duration");
  }
  t_cancel = o.cancel;
  if (o.port <= 0 || o.port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("port ", o.port, " is not a TCP port"));
  }
  const absl::Time deadline = absl::Now() + o.timeout;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const std::string port = absl::StrCat(o.port);
  if (int e = getaddrinfo(o.host.c_str(), port.c_str(), &hints, &res); e != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot resolve ", o.host, ": ", gai_strerror(e)));
  }
  std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> addrs(res, freeaddrinfo);
  const std::string hello = Hello(o.rank, o.world_size, o.group_key);
  std::vector<Fd> peers(o.rank == 0 ? o.world_size : 1);
  if (o.rank == 0) {
    Fd listener(socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (listener.get() < 0) return absl::InternalError(absl::StrCat("socket: ", strerror(errno)));
    const int one = 1;
    setsockopt(listener.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(listener.get(), res->ai_addr, res->ai_addrlen) != 0 ||
        listen(listener.get(), o.world_size) != 0) {
      return absl::UnavailableError(absl::StrCat("rank 0 cannot listen on ", o.host, ":", o.port,
                                                 ": ", strerror(errno),
                                                 " (set SAFESHARD_PORT to a free port)"));
    }
    int joined = 1;
    while (joined < o.world_size) {
      absl::Status w = WaitFor(listener.get(), POLLIN, deadline,
                               absl::StrCat(o.world_size - joined, " rank(s)"));
      if (absl::IsCancelled(w)) return w;
      if (!w.ok()) {
        std::vector<int> missing;
        for (int r = 1; r < o.world_size; ++r) {
          if (peers[r].get() < 0) missing.push_back(r);
        }
        return absl::DeadlineExceededError(absl::StrCat(
            "rank 0: only ", joined, " of ", o.world_size,
            " ranks joined within the timeout (missing: rank ", absl::StrJoin(missing, ", "), ")"));
      }
      Fd c(accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
      if (c.get() < 0) continue;
      setsockopt(c.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      absl::StatusOr<std::string> h = RecvFrame(c.get(), deadline, "a joining rank");
      if (!h.ok() || h->size() < 16 || h->compare(0, 8, kMagic, 8) != 0) continue;  // not ours
      uint32_t r, w2;
      std::memcpy(&r, h->data() + 8, 4);
      std::memcpy(&w2, h->data() + 12, 4);
      if (h->substr(16) != o.group_key || static_cast<int>(w2) != o.world_size || r == 0 ||
          static_cast<int>(r) >= o.world_size || peers[r].get() >= 0) {
        (void)SendFrame(c.get(), "refused: another group, world size or a repeated rank", deadline,
                        "a joining rank");
        continue;
      }
      if (!SendFrame(c.get(), "ok", deadline, absl::StrCat("rank ", r)).ok()) continue;
      peers[r] = std::move(c);
      ++joined;
    }
  } else {
    while (true) {
      Fd c(socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
      if (c.get() < 0) return absl::InternalError(absl::StrCat("socket: ", strerror(errno)));
      if (connect(c.get(), res->ai_addr, res->ai_addrlen) == 0) {
        const int one = 1;
        setsockopt(c.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        absl::Status s = SendFrame(c.get(), hello, deadline, "rank 0");
        absl::StatusOr<std::string> answer =
            s.ok() ? RecvFrame(c.get(), deadline, "rank 0") : absl::StatusOr<std::string>(s);
        if (!answer.ok()) return answer.status();
        if (*answer != "ok") {
          return absl::FailedPreconditionError(
              absl::StrCat("rank ", o.rank, ": rank 0 at ", o.host, ":", o.port, " ", *answer));
        }
        peers[0] = std::move(c);
        break;
      }
      if (o.cancel != nullptr && o.cancel->load()) return absl::CancelledError("cancelled");
      if (absl::Now() > deadline) {
        return absl::DeadlineExceededError(absl::StrCat("rank ", o.rank,
                                                        ": cannot reach rank 0 at ", o.host, ":",
                                                        o.port, ": ", strerror(errno)));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
  return std::unique_ptr<Collective>(
      std::make_unique<TcpCollective>(o.rank, o.world_size, o.timeout, std::move(peers), o.cancel));
}

}  // namespace safeshard
