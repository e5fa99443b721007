// POSIX implementation of FileSystem.
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <linux/openat2.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "core/io/filesystem.h"
#include "core/util/status_macros.h"

namespace safeshard {
namespace {

absl::Status ErrnoStatus(int err, absl::string_view op, absl::string_view path) {
  std::string msg = absl::StrCat(path, ": ", op, ": ", std::strerror(err));
  switch (err) {
    case ENOENT:
    case ENOTDIR: return absl::NotFoundError(msg);
    case EACCES:
    case EPERM:
    case EROFS: return absl::PermissionDeniedError(msg);
    case ENOSPC:
    case EDQUOT:
    case EMFILE:
    case ENFILE:
    case ENOMEM: return absl::ResourceExhaustedError(msg);
    case EEXIST: return absl::AlreadyExistsError(msg);
    case EINTR:
    case EAGAIN:
    case EIO: return absl::UnavailableError(msg);
    default: return absl::UnknownError(msg);
  }
}

class LocalMapped : public MappedRegion {
 public:
  LocalMapped(void* p, size_t n) : p_(p), n_(n) {}
  ~LocalMapped() override {
    if (p_ != nullptr) munmap(p_, n_);
  }
  absl::string_view data() const override {
    return absl::string_view(static_cast<const char*>(p_), n_);
  }

 private:
  void* p_;
  size_t n_;
};

class EmptyMapped : public MappedRegion {
 public:
  absl::string_view data() const override { return {}; }
};

class LocalReadable : public ReadableFile {
 public:
  LocalReadable(std::string path, int fd, uint64_t size)
      : path_(std::move(path)), fd_(fd), size_(size) {}
  ~LocalReadable() override { close(fd_); }
  const std::string& path() const override { return path_; }
  uint64_t size() const override { return size_; }
  int fd() const { return fd_; }

  absl::Status ReadAt(uint64_t offset, size_t n, char* dst) const override {
    size_t done = 0;
    while (done < n) {
      ssize_t r = pread(fd_, dst + done, n - done, static_cast<off_t>(offset + done));
      if (r < 0) {
        if (errno == EINTR) continue;
        return ErrnoStatus(errno, absl::StrCat("read at byte offset ", offset + done), path_);
      }
      if (r == 0) {
        return absl::DataLossError(absl::StrCat(path_, ": file ends at byte offset ", offset + done,
                                                " but ", n - done, " more bytes were expected"));
      }
      done += static_cast<size_t>(r);
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::shared_ptr<const MappedRegion>> Map() override {
    absl::MutexLock l(&mu_);
    if (mapped_) return mapped_;
    if (size_ == 0) {
      mapped_ = std::make_shared<EmptyMapped>();
      return mapped_;
    }
    void* p = mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd_, 0);
    if (p == MAP_FAILED) return ErrnoStatus(errno, "mmap", path_);
    madvise(p, size_, MADV_SEQUENTIAL);
    mapped_ = std::make_shared<LocalMapped>(p, size_);
    return mapped_;
  }

 private:
  std::string path_;
  int fd_;
  uint64_t size_;
  absl::Mutex mu_;
  std::shared_ptr<const MappedRegion> mapped_;
};

class LocalWritable : public WritableFile {
 public:
  LocalWritable(std::string path, int fd) : path_(std::move(path)), fd_(fd) {
    struct statfs sfs;
    tmpfs_ = fstatfs(fd_, &sfs) == 0 && sfs.f_type == TMPFS_MAGIC;
  }
  ~LocalWritable() override {
    Unmap();
    if (fd_ >= 0) close(fd_);
  }

  absl::StatusOr<char*> MapWritable(uint64_t size) override {
    if (map_ != nullptr) return static_cast<char*>(map_);
    if (size == 0) return absl::InvalidArgumentError(absl::StrCat(path_, ": empty mapping"));
    if (tmpfs_) {
      // Reserving tmpfs pages means allocating and zeroing them all before they are written
      // (measured: a quarter of a 2.2 GB consolidation's time). Unreserved: the space is
      // checked (Allocate), and a write through the mapping raises SIGBUS if the tmpfs fills
      // meanwhile: callers write under GuardMappedCopy, which reports it.
      RETURN_IF_ERROR(Allocate(size));
    } else {
      int r = posix_fallocate(fd_, 0, static_cast<off_t>(size));
      if (r == EOPNOTSUPP || r == EINVAL) {
        return absl::UnimplementedError(absl::StrCat(path_, ": cannot reserve blocks"));
      }
      if (r != 0) return ErrnoStatus(r, absl::StrCat("allocate ", size, " bytes"), path_);
    }
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
    if (p == MAP_FAILED) return ErrnoStatus(errno, "mmap for writing", path_);
    map_ = p;
    map_size_ = size;
    return static_cast<char*>(p);
  }
  const std::string& path() const override { return path_; }
  int fd() const { return fd_; }
  absl::Status CheckFreeSpace(uint64_t bytes) override {
    struct statvfs vfs;
    if (!tmpfs_ || fstatvfs(fd_, &vfs) != 0) return absl::OkStatus();
    // A tmpfs mounted without a size limit reports no size and no free blocks.
    if (vfs.f_blocks == 0) return absl::OkStatus();
    const uint64_t free_bytes = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
    if (bytes <= free_bytes) return absl::OkStatus();
    return ErrnoStatus(
        ENOSPC, absl::StrCat("write ", bytes, " bytes (the tmpfs has ", free_bytes, " bytes free)"),
        path_);
  }
  bool mapped_copies_only() const override { return tmpfs_; }

  absl::Status Append(absl::string_view data) override {
    absl::Status s = WriteAt(pos_, data);
    if (s.ok()) pos_ += data.size();
    return s;
  }

  absl::Status WriteAt(uint64_t offset, absl::string_view data) override {
    size_t done = 0;
    while (done < data.size()) {
      ssize_t w =
          pwrite(fd_, data.data() + done, data.size() - done, static_cast<off_t>(offset + done));
      if (w < 0) {
        if (errno == EINTR) continue;
        return ErrnoStatus(errno, absl::StrCat("write at byte offset ", offset + done), path_);
      }
      done += static_cast<size_t>(w);
    }
    return absl::OkStatus();
  }

  absl::Status CopyFrom(ReadableFile& src, uint64_t src_offset, uint64_t dst_offset,
                        uint64_t n) override {
    auto* local = dynamic_cast<LocalReadable*>(&src);
    loff_t in_off = static_cast<loff_t>(src_offset), out_off = static_cast<loff_t>(dst_offset);
    uint64_t left = n;
    while (local != nullptr && left > 0) {
      ssize_t c = copy_file_range(local->fd(), &in_off, fd_, &out_off, left, 0);
      if (c < 0) {
        if (errno == EINTR) continue;
        if (errno == EXDEV || errno == ENOSYS || errno == EOPNOTSUPP || errno == EINVAL) break;
        return ErrnoStatus(errno,
                           absl::StrCat("copy ", left, " bytes from ", src.path(), " at offset ",
                                        in_off, " to offset ", out_off),
                           path_);
      }
      if (c == 0) {
        return absl::DataLossError(absl::StrCat(src.path(), ": file ends at byte offset ", in_off,
                                                " but ", left, " more bytes were expected"));
      }
      left -= static_cast<uint64_t>(c);
    }
    if (left == 0) return absl::OkStatus();
    uint64_t done = n - left;
    return WritableFile::CopyFrom(src, src_offset + done, dst_offset + done, left);
  }

  absl::Status Allocate(uint64_t size) override {
    if (size > 0 && tmpfs_) {
      // tmpfs: fallocate would allocate and zero every page now, to be overwritten at once.
      // The free space is checked instead (for this file; CheckFreeSpace checks several files'
      // total). Nothing is reserved: if something else fills the tmpfs meanwhile, the copy
      // fails with ENOSPC (write) or a guarded SIGBUS (mapping), reported as no space.
      struct stat st;
      if (fstat(fd_, &st) == 0) {
        const uint64_t have = static_cast<uint64_t>(st.st_blocks) * 512;
        if (size > have) RETURN_IF_ERROR(CheckFreeSpace(size - have));
      }
    } else if (size > 0) {
      int r = posix_fallocate(fd_, 0, static_cast<off_t>(size));
      if (r != 0 && r != EOPNOTSUPP && r != EINVAL) {
        return ErrnoStatus(r, absl::StrCat("allocate ", size, " bytes"), path_);
      }
    }
    if (ftruncate(fd_, static_cast<off_t>(size)) != 0) {
      return ErrnoStatus(errno, absl::StrCat("set size to ", size, " bytes"), path_);
    }
    return absl::OkStatus();
  }

  absl::Status Sync() override {
    if (map_ != nullptr && msync(map_, map_size_, MS_SYNC) != 0) {
      return ErrnoStatus(errno, "msync", path_);
    }
    if (fsync(fd_) != 0) return ErrnoStatus(errno, "fsync", path_);
    return absl::OkStatus();
  }

  absl::Status Close() override {
    Unmap();
    if (fd_ < 0) return absl::OkStatus();
    int r = close(fd_);
    fd_ = -1;
    if (r != 0) return ErrnoStatus(errno, "close", path_);
    return absl::OkStatus();
  }

 private:
  void Unmap() {
    if (map_ != nullptr) munmap(map_, map_size_);
    map_ = nullptr;
  }
  std::string path_;
  bool tmpfs_ = false;  // tmpfs: no block reservation (see Allocate)
  int fd_;
  uint64_t pos_ = 0;
  void* map_ = nullptr;
  uint64_t map_size_ = 0;
};

// open() failures; ELOOP under O_NOFOLLOW means the path's last component is a symlink.
absl::Status OpenError(int err, absl::string_view op, absl::string_view path) {
  if (err == ELOOP) {
    return absl::FailedPreconditionError(absl::StrCat(
        path, ": is a symbolic link, which is never followed here (copy the file in instead)"));
  }
  return ErrnoStatus(err, op, path);
}

int OpenAt2(int dirfd, const char* path, int flags, mode_t mode, uint64_t resolve) {
  struct open_how how;
  std::memset(&how, 0, sizeof how);
  how.flags = static_cast<uint64_t>(flags);
  how.mode = (flags & O_CREAT) ? mode : 0;
  how.resolve = resolve;
  return static_cast<int>(syscall(SYS_openat2, dirfd, path, &how, sizeof how));
}

absl::Status SyncDirFd(int fd, absl::string_view shown) {
  int r = fsync(fd);
  int e = errno;
  close(fd);
  if (r != 0 && e != EINVAL) return ErrnoStatus(e, "fsync directory", shown);
  return absl::OkStatus();
}

// After a non-blocking open for reading: only regular files are read.
absl::StatusOr<std::unique_ptr<ReadableFile>> FinishOpenRead(int fd, const std::string& path) {
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    close(fd);
    return ErrnoStatus(e, "stat", path);
  }
  if (S_ISDIR(st.st_mode)) {
    close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": is a directory, not a file"));
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return absl::FailedPreconditionError(absl::StrCat(
        path, ": is not a regular file (", S_ISFIFO(st.st_mode) ? "a FIFO" : "a device or socket",
        "); only regular files are read"));
  }
  if (int fl = fcntl(fd, F_GETFL); fl >= 0) fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
  return std::unique_ptr<ReadableFile>(
      new LocalReadable(path, fd, static_cast<uint64_t>(st.st_size)));
}

// After a non-blocking open for writing: only regular files are written (a FIFO or a device
// planted under an output name is refused, never written into).
absl::StatusOr<std::unique_ptr<WritableFile>> FinishOpenWrite(int fd, const std::string& path) {
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    close(fd);
    return ErrnoStatus(e, "stat", path);
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return absl::FailedPreconditionError(
        absl::StrCat(path, ": is not a regular file; only regular files are written"));
  }
  if (int fl = fcntl(fd, F_GETFL); fl >= 0) fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
  return std::unique_ptr<WritableFile>(new LocalWritable(path, fd));
}

FileStat FileStatOf(const struct stat& st) {
  FileStat out;
  out.size = static_cast<uint64_t>(st.st_size);
  out.mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  out.is_dir = S_ISDIR(st.st_mode);
  return out;
}

void SortByName(std::vector<DirEntry>* entries) {
  std::sort(entries->begin(), entries->end(),
            [](const DirEntry& a, const DirEntry& b) { return a.name < b.name; });
}

class LocalFileSystem_ : public FileSystem {
 public:
  explicit LocalFileSystem_(bool nofollow = false) : nofollow_(nofollow ? O_NOFOLLOW : 0) {}
  bool local() const override { return true; }
  absl::StatusOr<FileStat> Stat(const std::string& path) override {
    struct stat st;
    if (stat(path.c_str(), &st) != 0) return ErrnoStatus(errno, "stat", path);
    return FileStatOf(st);
  }

  absl::StatusOr<std::vector<DirEntry>> List(const std::string& dir) override {
    DIR* d = opendir(dir.c_str());
    if (d == nullptr) return ErrnoStatus(errno, "list directory", dir);
    std::vector<DirEntry> out;
    while (struct dirent* e = readdir(d)) {
      std::string name = e->d_name;
      if (name == "." || name == "..") continue;
      bool is_dir = e->d_type == DT_DIR;
      bool is_symlink = e->d_type == DT_LNK;
      if (e->d_type == DT_UNKNOWN) {
        struct stat lst;
        is_symlink = lstat(JoinPath(dir, name).c_str(), &lst) == 0 && S_ISLNK(lst.st_mode);
        is_dir = !is_symlink && S_ISDIR(lst.st_mode);
      }
      if (is_symlink) {
        struct stat st;
        is_dir = stat(JoinPath(dir, name).c_str(), &st) == 0 && S_ISDIR(st.st_mode);
      }
      out.push_back({std::move(name), is_dir, is_symlink});
    }
    closedir(d);
    SortByName(&out);
    return out;
  }

  absl::StatusOr<std::unique_ptr<ReadableFile>> OpenRead(const std::string& path) override {
    // Non-blocking open, then fstat: a FIFO or device under a checkpoint name must not hang the
    // reader (opening a FIFO for reading blocks until a writer appears); only regular files are
    // read.
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY | nofollow_);
    if (fd < 0) return OpenError(errno, "open", path);
    return FinishOpenRead(fd, path);
  }

  absl::StatusOr<std::unique_ptr<WritableFile>> Create(const std::string& path) override {
    int fd = open(path.c_str(),
                  O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC | O_NONBLOCK | O_NOCTTY | nofollow_, 0644);
    if (fd < 0) return OpenError(errno, "create", path);
    return FinishOpenWrite(fd, path);
  }

  absl::StatusOr<std::unique_ptr<WritableFile>> OpenForWrite(const std::string& path) override {
    int fd = open(path.c_str(), O_RDWR | O_CLOEXEC | O_NONBLOCK | O_NOCTTY | nofollow_);
    if (fd < 0) return OpenError(errno, "open for writing", path);
    return FinishOpenWrite(fd, path);
  }

  absl::StatusOr<int> OpenDirectoryFd(const std::string& dir) override {
    int fd = OpenDir(dir);
    if (fd < 0) return OpenError(errno, "open directory", dir);
    return fd;
  }

  absl::StatusOr<std::unique_ptr<FileSystem>> OpenBeneath(const std::string& dir) override;

  absl::Status Rename(const std::string& from, const std::string& to) override {
    if (rename(from.c_str(), to.c_str()) != 0) {
      return ErrnoStatus(errno, absl::StrCat("rename to ", to), from);
    }
    return absl::OkStatus();
  }

  absl::Status Remove(const std::string& path) override {
    if (unlink(path.c_str()) != 0) {
      if (errno == EISDIR || errno == EPERM) {
        if (rmdir(path.c_str()) == 0) return absl::OkStatus();
      }
      return ErrnoStatus(errno, "remove", path);
    }
    return absl::OkStatus();
  }

  absl::Status MakeDirs(const std::string& dir) override {
    if (dir.empty()) return absl::OkStatus();
    std::string cur;
    size_t i = 0;
    while (i <= dir.size()) {
      size_t j = dir.find('/', i);
      if (j == std::string::npos) j = dir.size();
      cur = dir.substr(0, j);
      if (!cur.empty() && mkdir(cur.c_str(), 0755) != 0 && errno != EEXIST) {
        return ErrnoStatus(errno, "make directory", cur);
      }
      i = j + 1;
    }
    struct stat st;
    if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      return absl::FailedPreconditionError(absl::StrCat(dir, ": exists and is not a directory"));
    }
    return absl::OkStatus();
  }

  absl::Status CopyRange(const std::string& src, uint64_t src_offset, WritableFile& dst,
                         uint64_t dst_offset, uint64_t n) override {
    auto* local = dynamic_cast<LocalWritable*>(&dst);
    int in = open(src.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | nofollow_);
    if (in < 0) return ErrnoStatus(errno, "open", src);
    loff_t off_in = static_cast<loff_t>(src_offset), off_out = static_cast<loff_t>(dst_offset);
    uint64_t left = n;
    while (local != nullptr && left > 0) {
      ssize_t c = copy_file_range(in, &off_in, local->fd(), &off_out, left, 0);
      if (c < 0) {
        if (errno == EINTR) continue;
        if (errno == EXDEV || errno == ENOSYS || errno == EOPNOTSUPP || errno == EINVAL) break;
        int e = errno;
        close(in);
        return ErrnoStatus(
            e, absl::StrCat("copy ", left, " bytes at offset ", off_in, " to ", dst.path()), src);
      }
      if (c == 0) {
        close(in);
        return absl::DataLossError(absl::StrCat(src, ": file ends at byte offset ", off_in, " but ",
                                                left, " more bytes were expected"));
      }
      left -= static_cast<uint64_t>(c);
    }
    close(in);
    if (left == 0) return absl::OkStatus();
    uint64_t done = n - left;
    return FileSystem::CopyRange(src, src_offset + done, dst, dst_offset + done, left);
  }

  absl::Status SyncDir(const std::string& dir) override {
    int fd = open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return ErrnoStatus(errno, "open directory", dir);
    return SyncDirFd(fd, dir);
  }

 private:
  // The directory `dir`: following symlinks, or (no-follow) through none in any component.
  int OpenDir(const std::string& dir) const {
    const char* p = dir.empty() ? "." : dir.c_str();
    if (nofollow_ == 0) return open(p, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int fd = OpenAt2(AT_FDCWD, p, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0, RESOLVE_NO_SYMLINKS);
    // Kernels before 5.6 (ENOSYS) and seccomp filters that refuse what they do not know (EPERM,
    // older container runtimes): one component at a time, O_NOFOLLOW each.
    if (fd < 0 && (errno == ENOSYS || errno == EPERM)) {
      const bool abs = p[0] == '/';
      int cur = open(abs ? "/" : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      for (absl::string_view c : absl::StrSplit(absl::string_view(p), '/', absl::SkipEmpty())) {
        if (cur < 0) break;
        const std::string name(c);
        const int next = openat(cur, name.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
        const int e = errno;
        close(cur);
        errno = e;
        cur = next;
      }
      fd = cur;
    }
    return fd;
  }

  const int nofollow_;
};

// A file system confined to one directory descriptor (FileSystem::OpenBeneath).
class BeneathFileSystem : public FileSystem {
 public:
  BeneathFileSystem(int dirfd, std::string display) : dirfd_(dirfd), display_(std::move(display)) {}
  ~BeneathFileSystem() override { close(dirfd_); }
  bool local() const override { return true; }

  absl::StatusOr<FileStat> Stat(const std::string& path) override {
    ASSIGN_OR_RETURN(Parent p, OpenParent(path));
    struct stat st;
    int r =
        p.last.empty() ? fstat(p.fd, &st) : fstatat(p.fd, p.last.c_str(), &st, AT_SYMLINK_NOFOLLOW);
    if (r != 0) return ErrnoStatus(errno, "stat", Show(path));
    return FileStatOf(st);
  }

  absl::StatusOr<std::vector<DirEntry>> List(const std::string& dir) override {
    ASSIGN_OR_RETURN(int fd, OpenDirectoryFd(dir));
    DIR* d = fdopendir(fd);
    if (d == nullptr) {
      int e = errno;
      close(fd);
      return ErrnoStatus(e, "list directory", Show(dir));
    }
    std::vector<DirEntry> out;
    while (struct dirent* e = readdir(d)) {
      std::string name = e->d_name;
      if (name == "." || name == "..") continue;
      unsigned char type = e->d_type;
      if (type == DT_UNKNOWN) {
        struct stat lst;
        if (fstatat(dirfd(d), name.c_str(), &lst, AT_SYMLINK_NOFOLLOW) == 0) {
          type = S_ISLNK(lst.st_mode) ? DT_LNK : S_ISDIR(lst.st_mode) ? DT_DIR : DT_REG;
        }
      }
      // Symlinks are never followed here: one to a directory is not a directory.
      out.push_back({std::move(name), type == DT_DIR, type == DT_LNK});
    }
    closedir(d);
    SortByName(&out);
    return out;
  }

  absl::StatusOr<std::unique_ptr<ReadableFile>> OpenRead(const std::string& path) override {
    ASSIGN_OR_RETURN(int fd, Open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY, 0, "open"));
    return FinishOpenRead(fd, Show(path));
  }

  absl::StatusOr<std::unique_ptr<WritableFile>> Create(const std::string& path) override {
    ASSIGN_OR_RETURN(
        int fd, Open(path, O_RDWR | O_CREAT | O_TRUNC | O_NONBLOCK | O_NOCTTY, 0644, "create"));
    return FinishOpenWrite(fd, Show(path));
  }

  absl::StatusOr<std::unique_ptr<WritableFile>> OpenForWrite(const std::string& path) override {
    ASSIGN_OR_RETURN(int fd, Open(path, O_RDWR | O_NONBLOCK | O_NOCTTY, 0, "open for writing"));
    return FinishOpenWrite(fd, Show(path));
  }

  absl::Status Rename(const std::string& from, const std::string& to) override {
    ASSIGN_OR_RETURN(Parent f, OpenParent(from));
    ASSIGN_OR_RETURN(Parent t, OpenParent(to));
    if (f.last.empty() || t.last.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(display_, ": cannot rename the directory itself"));
    }
    if (renameat(f.fd, f.last.c_str(), t.fd, t.last.c_str()) != 0) {
      return ErrnoStatus(errno, absl::StrCat("rename to ", Show(to)), Show(from));
    }
    return absl::OkStatus();
  }

  absl::Status Remove(const std::string& path) override {
    ASSIGN_OR_RETURN(Parent p, OpenParent(path));
    if (p.last.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(display_, ": cannot remove the directory itself"));
    }
    if (unlinkat(p.fd, p.last.c_str(), 0) != 0) {
      if ((errno == EISDIR || errno == EPERM) &&
          unlinkat(p.fd, p.last.c_str(), AT_REMOVEDIR) == 0) {
        return absl::OkStatus();
      }
      return ErrnoStatus(errno, "remove", Show(path));
    }
    return absl::OkStatus();
  }

  absl::Status MakeDirs(const std::string& dir) override {
    ASSIGN_OR_RETURN(std::string rel, NormalizeBeneath(display_, dir));
    int cur = dup(dirfd_);
    if (cur < 0) return ErrnoStatus(errno, "dup", display_);
    std::string done;
    for (absl::string_view c : absl::StrSplit(rel, '/', absl::SkipEmpty())) {
      std::string name(c);
      done = JoinPath(done, name);
      if (mkdirat(cur, name.c_str(), 0755) != 0 && errno != EEXIST) {
        int e = errno;
        close(cur);
        return ErrnoStatus(e, "make directory", Show(done));
      }
      int next = openat(cur, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      int e = errno;
      close(cur);
      if (next < 0) {
        if (e == ELOOP || e == ENOTDIR) {
          return absl::FailedPreconditionError(absl::StrCat(
              Show(done),
              ": exists and is not a directory (symbolic links are never followed here)"));
        }
        return ErrnoStatus(e, "open directory", Show(done));
      }
      cur = next;
    }
    close(cur);
    return absl::OkStatus();
  }

  absl::Status SyncDir(const std::string& dir) override {
    ASSIGN_OR_RETURN(int fd, OpenDirectoryFd(dir));
    return SyncDirFd(fd, Show(dir));
  }

  absl::Status CopyRange(const std::string& src, uint64_t src_offset, WritableFile& dst,
                         uint64_t dst_offset, uint64_t n) override {
    ASSIGN_OR_RETURN(std::unique_ptr<ReadableFile> in, OpenRead(src));
    return dst.CopyFrom(*in, src_offset, dst_offset, n);
  }

  absl::StatusOr<int> OpenDirectoryFd(const std::string& dir) override {
    return Open(dir, O_RDONLY | O_DIRECTORY, 0, "open directory");
  }

  absl::StatusOr<std::unique_ptr<FileSystem>> OpenBeneath(const std::string& dir) override {
    ASSIGN_OR_RETURN(int fd, OpenDirectoryFd(dir));
    ASSIGN_OR_RETURN(std::string rel, NormalizeBeneath(display_, dir));
    return std::unique_ptr<FileSystem>(
        new BeneathFileSystem(fd, rel.empty() ? display_ : JoinPath(display_, rel)));
  }

 private:
  std::string Show(const std::string& path) const {
    absl::StatusOr<std::string> rel = NormalizeBeneath(display_, path);
    return !rel.ok() || rel->empty() ? JoinPath(display_, path) : JoinPath(display_, *rel);
  }

  // `path` opened beneath the directory, through no symlink at all.
  absl::StatusOr<int> Open(const std::string& path, int flags, mode_t mode, absl::string_view op) {
    ASSIGN_OR_RETURN(std::string rel, NormalizeBeneath(display_, path));
    flags |= O_CLOEXEC;
    const char* p = rel.empty() ? "." : rel.c_str();
    int fd = OpenAt2(dirfd_, p, flags, mode,
                     RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS);
    if (fd < 0 && (errno == ENOSYS || errno == EPERM)) fd = OpenByComponents(rel, flags, mode);
    if (fd < 0) return OpenError(errno, op, Show(path));
    return fd;
  }

  // Kernels without openat2 (before 5.6): one component at a time, O_NOFOLLOW each.
  int OpenByComponents(const std::string& rel, int flags, mode_t mode) {
    std::vector<std::string> parts = absl::StrSplit(rel, '/', absl::SkipEmpty());
    if (parts.empty()) return openat(dirfd_, ".", flags, mode);
    int cur = dirfd_;
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
      int next = openat(cur, parts[i].c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      int e = errno;
      if (cur != dirfd_) close(cur);
      if (next < 0) {
        errno = e;
        return -1;
      }
      cur = next;
    }
    int fd = openat(cur, parts.back().c_str(), flags | O_NOFOLLOW, mode);
    int e = errno;
    if (cur != dirfd_) close(cur);
    errno = e;
    return fd;
  }

  // The directory holding `path`'s last component, opened beneath ours, and that component
  // ("" when `path` names our directory itself).
  struct Parent {
    int fd = -1;
    bool owned = false;
    std::string last;
    Parent() = default;
    Parent(Parent&& o) noexcept : fd(o.fd), owned(o.owned), last(std::move(o.last)) {
      o.owned = false;
    }
    ~Parent() {
      if (owned) close(fd);
    }
  };
  absl::StatusOr<Parent> OpenParent(const std::string& path) {
    ASSIGN_OR_RETURN(std::string rel, NormalizeBeneath(display_, path));
    Parent p;
    const size_t slash = rel.rfind('/');
    if (slash == std::string::npos) {
      p.fd = dirfd_;
      p.last = rel;
      return p;
    }
    ASSIGN_OR_RETURN(p.fd, OpenDirectoryFd(rel.substr(0, slash)));
    p.owned = true;
    p.last = rel.substr(slash + 1);
    return p;
  }

  int dirfd_;
  std::string display_;
};

absl::StatusOr<std::unique_ptr<FileSystem>> LocalFileSystem_::OpenBeneath(const std::string& dir) {
  int fd = OpenDir(dir);
  if (fd < 0) {
    if (errno == ELOOP) {
      return absl::FailedPreconditionError(absl::StrCat(
          dir, ": a component of this path is a symbolic link, which is never followed here"));
    }
    return ErrnoStatus(errno, "open directory", dir);
  }
  return std::unique_ptr<FileSystem>(new BeneathFileSystem(fd, dir));
}

}  // namespace

absl::StatusOr<std::string> ReadOptionFile(const std::string& path, uint64_t max_bytes) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) return ErrnoStatus(errno, "open", path);
  struct stat st;
  if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
    close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": is a directory, not a file"));
  }
  std::string out;
  char buf[1 << 16];
  while (true) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int e = errno;
      close(fd);
      return ErrnoStatus(e, "read", path);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > max_bytes) {
      close(fd);
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": more than ", max_bytes, " bytes; this is not an option file"));
    }
  }
  close(fd);
  return out;
}

FileSystem& LocalFileSystem() {
  static FileSystem* fs = new LocalFileSystem_();
  return *fs;
}

FileSystem& LocalFileSystemNoFollow() {
  static FileSystem* fs = new LocalFileSystem_(/*nofollow=*/true);
  return *fs;
}

}  // namespace safeshard
