#include "daemon/watcher.h"

#include <errno.h>
#include <poll.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <cstring>

#include "daemon/daemon.h"

namespace safeshard::daemon {

void Watcher::Start(const std::vector<std::string>& roots) {
  roots_ = roots;
  fd_ = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (fd_ < 0) {
    Log("warning", "inotify unavailable; relying on periodic rescans",
        {{"error", std::strerror(errno)}});
    return;
  }
  thread_ = std::thread([this] { Loop(); });
}

void Watcher::Stop() {
  stopping_ = true;
  if (thread_.joinable()) thread_.join();
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
}

void Watcher::AddWatchesBelow(const std::string& dir) {
  // IN_DONT_FOLLOW + IN_ONLYDIR: a symlink in place of a directory is never watched through.
  int wd = inotify_add_watch(fd_, dir.c_str(),
                             IN_CREATE | IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE |
                                 IN_MODIFY | IN_ONLYDIR | IN_DONT_FOLLOW);
  if (wd < 0) {
    if (errno == ENOSPC && watch_limit_errors_++ == 0) {
      Log("warning", "inotify watch limit reached; new directories are found by rescans",
          {{"dir", dir}, {"hint", "raise fs.inotify.max_user_watches"}});
    }
    return;
  }
  watches_[wd] = dir;
  absl::StatusOr<std::vector<DirEntry>> entries = fs_.List(dir);
  if (!entries.ok()) return;
  for (const DirEntry& e : *entries) {
    // Symbolic links under a root are never followed (no cycles, nothing outside the roots).
    if (e.is_dir && !e.is_symlink && e.name[0] != '.') AddWatchesBelow(JoinPath(dir, e.name));
  }
}

void Watcher::Loop() {
  for (const std::string& r : roots_) {
    if (stopping_) return;
    AddWatchesBelow(r);
  }
  alignas(struct inotify_event) char buf[64 * 1024];
  while (!stopping_) {
    struct pollfd p = {fd_, POLLIN, 0};
    if (poll(&p, 1, 1000) <= 0) continue;
    ssize_t n = read(fd_, buf, sizeof buf);
    if (n <= 0) continue;
    Changes changes;
    for (char* q = buf; q < buf + n;) {
      auto* ev = reinterpret_cast<struct inotify_event*>(q);
      q += sizeof(struct inotify_event) + ev->len;
      if (ev->mask & IN_Q_OVERFLOW) {
        overflows_++;
        Log("warning", "inotify queue overflowed; rescanning every root");
        changes.overflow = true;
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
        const std::string created = JoinPath(it->second, ev->name);
        AddWatchesBelow(created);
        changes.trees.insert(created);
      } else {
        changes.dirs.insert(it->second);
      }
    }
    if (changes.overflow || !changes.dirs.empty() || !changes.trees.empty())
      sink_(std::move(changes));
  }
}

}  // namespace safeshard::daemon
