#include "core/io/atomic_file.h"

#include <cstring>

#include <cerrno>

#include <fcntl.h>

#include <sys/stat.h>

#include <sys/file.h>

#include <errno.h>
#include <signal.h>
#include <unistd.h>

#include <random>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace safeshard {
namespace {
constexpr absl::string_view kTempMarker = ".safeshard-tmp-";
}  // namespace

bool IsTempFileName(absl::string_view name) {
  return absl::StartsWith(name, ".") && absl::StrContains(name, kTempMarker);
}

absl::StatusOr<std::vector<std::string>> CleanStaleTempFiles(FileSystem& fs,
                                                             const std::string& dir) {
  absl::StatusOr<std::vector<DirEntry>> entries = fs.List(dir);
  if (!entries.ok()) return entries.status();
  std::vector<std::string> removed;
  for (const DirEntry& e : *entries) {
    if (e.is_dir || !IsTempFileName(e.name)) continue;
    size_t p = absl::string_view(e.name).rfind(kTempMarker);
    absl::string_view rest = absl::string_view(e.name).substr(p + kTempMarker.size());
    size_t dash = rest.find('-');
    int pid = 0;
    if (dash == absl::string_view::npos || !absl::SimpleAtoi(rest.substr(0, dash), &pid)) {
      continue;
    }
    if (pid > 0 && (kill(pid, 0) == 0 || errno == EPERM)) continue;  // owner still running
    if (fs.Remove(JoinPath(dir, e.name)).ok()) removed.push_back(e.name);
  }
  return removed;
}

absl::StatusOr<AtomicFile> AtomicFile::Create(FileSystem& fs, const std::string& final_path) {
  static thread_local std::mt19937_64 rng(std::random_device{}() ^ static_cast<uint64_t>(getpid()));
  std::string temp = JoinPath(
      DirName(final_path),
      absl::StrFormat(".%s%s%d-%016x", BaseName(final_path), kTempMarker, getpid(), rng()));
  absl::StatusOr<std::unique_ptr<WritableFile>> f = fs.Create(temp);
  if (!f.ok()) return f.status();
  return AtomicFile(&fs, final_path, std::move(temp), std::move(*f));
}

AtomicFile::AtomicFile(FileSystem* fs, std::string final_path, std::string temp_path,
                       std::unique_ptr<WritableFile> file)
    : fs_(fs),
      final_path_(std::move(final_path)),
      temp_path_(std::move(temp_path)),
      file_(std::move(file)) {}

AtomicFile::AtomicFile(AtomicFile&& o) noexcept
    : fs_(o.fs_),
      final_path_(std::move(o.final_path_)),
      temp_path_(std::move(o.temp_path_)),
      file_(std::move(o.file_)),
      done_(o.done_) {
  o.done_ = true;
}

AtomicFile::~AtomicFile() {
  Abandon();
}

void AtomicFile::Abandon() {
  if (done_) return;
  done_ = true;
  if (file_) (void)file_->Close();
  (void)fs_->Remove(temp_path_);
}

absl::Status AtomicFile::CloseFile() {
  if (done_ || !file_) return absl::OkStatus();
  absl::Status s = file_->Sync();
  if (s.ok()) s = file_->Close();
  file_.reset();
  return s;
}

absl::Status AtomicFile::Commit() {
  if (done_) return absl::FailedPreconditionError(absl::StrCat(final_path_, ": already finished"));
  absl::Status s = absl::OkStatus();
  if (file_) {
    s = file_->Sync();
    if (s.ok()) s = file_->Close();
  }
  if (s.ok()) s = fs_->Rename(temp_path_, final_path_);
  if (!s.ok()) {
    Abandon();
    return s;
  }
  done_ = true;
  return fs_->SyncDir(DirName(final_path_));
}

absl::Status WriteFileAtomically(FileSystem& fs, const std::string& path,
                                 absl::string_view contents) {
  absl::StatusOr<AtomicFile> f = AtomicFile::Create(fs, path);
  if (!f.ok()) return f.status();
  absl::Status s = f->file().Append(contents);
  if (!s.ok()) return s;
  return f->Commit();
}

}  // namespace safeshard

namespace safeshard {

absl::StatusOr<DirectoryLock> DirectoryLock::Acquire(FileSystem& fs, const std::string& dir) {
  if (!fs.local()) return DirectoryLock(-1);
  // flock() on the directory itself: nothing is created in it, and the lock goes with the
  // process (a kill -9 never leaves it stuck).
  absl::StatusOr<int> opened = fs.OpenDirectoryFd(dir);
  if (!opened.ok() && opened.status().code() == absl::StatusCode::kUnimplemented) {
    return DirectoryLock(-1);
  }
  if (!opened.ok()) {
    return absl::Status(
        opened.status().code(),
        absl::StrCat("cannot open the directory to lock it: ", opened.status().message()));
  }
  const int fd = *opened;
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int e = errno;
    close(fd);
    if (e == EWOULDBLOCK) {
      return absl::UnavailableError(
          absl::StrCat(dir,
                       ": another safeshard process is writing into this directory (it holds the "
                       "directory's lock); run again once it has finished"));
    }
    return absl::InternalError(absl::StrCat(dir, ": flock: ", strerror(e)));
  }
  return DirectoryLock(fd);
}

DirectoryLock::~DirectoryLock() {
  if (fd_ >= 0) close(fd_);  // releases the flock
}

bool SameOpenedDirectory(FileSystem& dir, const std::string& path) {
  absl::StatusOr<int> fd = dir.OpenDirectoryFd("");
  if (!fd.ok()) return false;
  struct stat sa, sb;
  const bool same = ::fstat(*fd, &sa) == 0 && ::stat(path.c_str(), &sb) == 0 &&
                    sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
  close(*fd);
  return same;
}

bool SameDirectory(FileSystem& fs, const std::string& a, const std::string& b) {
  if (!fs.local()) return DirName(JoinPath(a, "x")) == DirName(JoinPath(b, "x"));
  struct stat sa, sb;
  if (::stat(a.c_str(), &sa) != 0 || ::stat(b.c_str(), &sb) != 0) return false;
  return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

}  // namespace safeshard
