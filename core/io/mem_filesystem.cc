// In-memory FileSystem for tests. Thread-safe. Directories are implicit from file paths plus
// the ones made with MakeDirs; SyncDir and Sync are no-ops that still check existence.
#include <map>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "core/io/filesystem.h"

namespace safeshard {
namespace {

std::string Normalize(absl::string_view p) {
  std::string s(p);
  while (s.size() > 1 && s.back() == '/') s.pop_back();
  return s;
}

struct MemState {
  absl::Mutex mu;
  std::map<std::string, std::shared_ptr<std::string>> files;
  std::set<std::string> dirs{"/", "."};
};

class MemMapped : public MappedRegion {
 public:
  explicit MemMapped(std::shared_ptr<const std::string> s) : s_(std::move(s)) {}
  absl::string_view data() const override { return *s_; }

 private:
  std::shared_ptr<const std::string> s_;
};

class MemReadable : public ReadableFile {
 public:
  MemReadable(std::string path, std::shared_ptr<const std::string> snapshot)
      : path_(std::move(path)), data_(std::move(snapshot)) {}
  const std::string& path() const override { return path_; }
  uint64_t size() const override { return data_->size(); }
  absl::Status ReadAt(uint64_t offset, size_t n, char* dst) const override {
    if (offset > data_->size() || n > data_->size() - offset) {
      return absl::DataLossError(absl::StrCat(path_, ": file ends at byte offset ", data_->size(),
                                              " but ", n, " bytes at ", offset, " were expected"));
    }
    std::memcpy(dst, data_->data() + offset, n);
    return absl::OkStatus();
  }
  absl::StatusOr<std::shared_ptr<const MappedRegion>> Map() override {
    return std::shared_ptr<const MappedRegion>(std::make_shared<MemMapped>(data_));
  }

 private:
  std::string path_;
  std::shared_ptr<const std::string> data_;
};

class MemWritable : public WritableFile {
 public:
  MemWritable(std::shared_ptr<MemState> st, std::string path)
      : st_(std::move(st)), path_(std::move(path)) {}
  const std::string& path() const override { return path_; }
  absl::Status Append(absl::string_view data) override {
    absl::Status s = WriteAt(pos_, data);
    if (s.ok()) pos_ += data.size();
    return s;
  }
  absl::Status WriteAt(uint64_t offset, absl::string_view data) override {
    absl::MutexLock l(&st_->mu);
    auto it = st_->files.find(path_);
    if (it == st_->files.end()) return absl::NotFoundError(absl::StrCat(path_, ": removed"));
    std::string& f = *it->second;
    if (f.size() < offset + data.size()) f.resize(offset + data.size());
    f.replace(offset, data.size(), data.data(), data.size());
    return absl::OkStatus();
  }
  absl::Status Allocate(uint64_t size) override {
    absl::MutexLock l(&st_->mu);
    auto it = st_->files.find(path_);
    if (it == st_->files.end()) return absl::NotFoundError(absl::StrCat(path_, ": removed"));
    it->second->resize(size);
    return absl::OkStatus();
  }
  absl::Status Sync() override { return absl::OkStatus(); }
  absl::Status Close() override { return absl::OkStatus(); }

 private:
  std::shared_ptr<MemState> st_;
  std::string path_;
  uint64_t pos_ = 0;
};

class MemFileSystem : public FileSystem {
 public:
  absl::StatusOr<FileStat> Stat(const std::string& p) override {
    std::string path = Normalize(p);
    absl::MutexLock l(&st_->mu);
    auto it = st_->files.find(path);
    if (it != st_->files.end()) return FileStat{it->second->size(), 0, false};
    if (IsDirLocked(path)) return FileStat{0, 0, true};
    return absl::NotFoundError(absl::StrCat(path, ": stat: No such file or directory"));
  }
  absl::StatusOr<std::vector<DirEntry>> List(const std::string& d) override {
    std::string dir = Normalize(d);
    absl::MutexLock l(&st_->mu);
    if (!IsDirLocked(dir)) {
      return absl::NotFoundError(absl::StrCat(dir, ": list directory: No such directory"));
    }
    std::string prefix = dir == "/" ? "/" : dir + "/";
    std::map<std::string, bool> names;
    auto add = [&](const std::string& p, bool leaf_is_dir) {
      if (!absl::StartsWith(p, prefix) || p.size() == prefix.size()) return;
      std::string rest = p.substr(prefix.size());
      size_t slash = rest.find('/');
      if (slash == std::string::npos) {
        names[rest] = names[rest] || leaf_is_dir;
      } else {
        names[rest.substr(0, slash)] = true;
      }
    };
    for (const auto& [p, _] : st_->files) add(p, false);
    for (const auto& p : st_->dirs) add(p, true);
    std::vector<DirEntry> out;
    for (const auto& [n, is_dir] : names) out.push_back({n, is_dir});
    return out;
  }
  absl::StatusOr<std::unique_ptr<ReadableFile>> OpenRead(const std::string& p) override {
    std::string path = Normalize(p);
    absl::MutexLock l(&st_->mu);
    auto it = st_->files.find(path);
    if (it == st_->files.end()) {
      return absl::NotFoundError(absl::StrCat(path, ": open: No such file or directory"));
    }
    return std::unique_ptr<ReadableFile>(
        new MemReadable(path, std::make_shared<const std::string>(*it->second)));
  }
  absl::StatusOr<std::unique_ptr<WritableFile>> Create(const std::string& p) override {
    std::string path = Normalize(p);
    absl::MutexLock l(&st_->mu);
    if (!IsDirLocked(DirName(path))) {
      return absl::NotFoundError(absl::StrCat(path, ": create: No such directory"));
    }
    st_->files[path] = std::make_shared<std::string>();
    return std::unique_ptr<WritableFile>(new MemWritable(st_, path));
  }
  absl::StatusOr<std::unique_ptr<WritableFile>> OpenForWrite(const std::string& p) override {
    std::string path = Normalize(p);
    absl::MutexLock l(&st_->mu);
    if (!st_->files.count(path)) {
      return absl::NotFoundError(absl::StrCat(path, ": open for writing: No such file"));
    }
    return std::unique_ptr<WritableFile>(new MemWritable(st_, path));
  }
  absl::Status Rename(const std::string& f, const std::string& t) override {
    std::string from = Normalize(f), to = Normalize(t);
    absl::MutexLock l(&st_->mu);
    auto it = st_->files.find(from);
    if (it == st_->files.end()) {
      return absl::NotFoundError(absl::StrCat(from, ": rename: No such file"));
    }
    auto data = it->second;
    st_->files.erase(it);
    st_->files[to] = data;
    return absl::OkStatus();
  }
  absl::Status Remove(const std::string& p) override {
    std::string path = Normalize(p);
    absl::MutexLock l(&st_->mu);
    if (st_->files.erase(path) == 0 && st_->dirs.erase(path) == 0) {
      return absl::NotFoundError(absl::StrCat(path, ": remove: No such file"));
    }
    return absl::OkStatus();
  }
  absl::Status MakeDirs(const std::string& d) override {
    std::string dir = Normalize(d);
    absl::MutexLock l(&st_->mu);
    while (!dir.empty() && dir != "/" && dir != ".") {
      if (st_->files.count(dir)) {
        return absl::FailedPreconditionError(absl::StrCat(dir, ": exists and is not a directory"));
      }
      st_->dirs.insert(dir);
      dir = DirName(dir);
    }
    return absl::OkStatus();
  }
  absl::Status SyncDir(const std::string& d) override {
    absl::MutexLock l(&st_->mu);
    if (!IsDirLocked(Normalize(d))) return absl::NotFoundError(absl::StrCat(d, ": no directory"));
    return absl::OkStatus();
  }

 private:
  bool IsDirLocked(const std::string& dir) {
    if (st_->dirs.count(dir)) return true;
    std::string prefix = dir == "/" ? "/" : dir + "/";
    auto it = st_->files.lower_bound(prefix);
    return it != st_->files.end() && absl::StartsWith(it->first, prefix);
  }
  std::shared_ptr<MemState> st_ = std::make_shared<MemState>();
};

}  // namespace

std::unique_ptr<FileSystem> NewMemFileSystem() {
  return std::make_unique<MemFileSystem>();
}

}  // namespace safeshard
