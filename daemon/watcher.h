// watcher.h: safeshardd's inotify watcher. It watches every directory below the roots (never
// through a symbolic link, never dot-directories) and reports, from a thread of its own, which
// directories changed and which appeared; the daemon looks only there. Without inotify (or
// past the watch limit) it reports nothing and the daemon's periodic rescans find the runs.
//
//   Watcher w(fs, [](Watcher::Changes c) { ... });
//   w.Start({"/ckpt"});
//   ...
//   w.Stop();
#ifndef SAFESHARD_DAEMON_WATCHER_H_
#define SAFESHARD_DAEMON_WATCHER_H_

#include <atomic>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "core/io/filesystem.h"

namespace safeshard::daemon {

class Watcher {
 public:
  struct Changes {
    bool overflow = false;        // events were lost: look at everything again
    std::set<std::string> dirs;   // directories whose entries changed (look at them alone)
    std::set<std::string> trees;  // directories that appeared (look at them recursively)
  };
  Watcher(FileSystem& fs, std::function<void(Changes)> sink) : fs_(fs), sink_(std::move(sink)) {}
  ~Watcher() { Stop(); }
  Watcher(const Watcher&) = delete;
  Watcher& operator=(const Watcher&) = delete;

  void Start(const std::vector<std::string>& roots);
  // Returns within about a second (the thread polls for the stop request).
  void Stop();

  uint64_t overflows() const { return overflows_; }
  uint64_t watch_limit_errors() const { return watch_limit_errors_; }

 private:
  void Loop();
  void AddWatchesBelow(const std::string& dir);

  FileSystem& fs_;
  std::function<void(Changes)> sink_;
  int fd_ = -1;
  std::map<int, std::string> watches_;  // watch descriptor -> dir (the watcher's thread only)
  std::vector<std::string> roots_;
  std::thread thread_;
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> overflows_{0}, watch_limit_errors_{0};
};

}  // namespace safeshard::daemon

#endif  // SAFESHARD_DAEMON_WATCHER_H_
