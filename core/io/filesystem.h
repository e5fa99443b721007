// filesystem.h: the file access every safeshard component goes through.
//
// Two implementations: LocalFileSystem() (POSIX: pread, mmap, fsync) and NewMemFileSystem()
// (in-memory, for tests and fault injection). Paths are '/'-separated strings.
//
//   FileSystem& fs = LocalFileSystem();
//   ASSIGN_OR_RETURN(std::unique_ptr<ReadableFile> f, fs.OpenRead("/ckpt/model.safetensors"));
//   std::string prefix(8, '\0');
//   RETURN_IF_ERROR(f->ReadAt(0, prefix.size(), prefix.data()));
//   ASSIGN_OR_RETURN(std::shared_ptr<const MappedRegion> m, f->Map());  // whole file
//
// Every error names the path and carries a canonical code (kNotFound, kPermissionDenied,
// kResourceExhausted for ENOSPC, kDataLoss for short reads, kUnavailable for EINTR/EAGAIN).
#ifndef SAFESHARD_CORE_IO_FILESYSTEM_H_
#define SAFESHARD_CORE_IO_FILESYSTEM_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace safeshard {

struct FileStat {
  uint64_t size = 0;
  int64_t mtime_ns = 0;
  bool is_dir = false;
};

struct DirEntry {
  std::string name;         // no directory part
  bool is_dir = false;      // a directory (for a symlink: what it points to is one)
  bool is_symlink = false;  // the entry itself is a symbolic link
};

// A read-only view of a whole file; stays valid while the shared_ptr lives.
class MappedRegion {
 public:
  virtual ~MappedRegion() = default;
  virtual absl::string_view data() const = 0;
};

class ReadableFile {
 public:
  virtual ~ReadableFile() = default;
  virtual const std::string& path() const = 0;
  virtual uint64_t size() const = 0;  // size when opened
  // Reads exactly `n` bytes at `offset`; kDataLoss (naming path and offset) if the file is shorter.
  virtual absl::Status ReadAt(uint64_t offset, size_t n, char* dst) const = 0;
  // Maps the whole file read-only (once; later calls return the same region).
  virtual absl::StatusOr<std::shared_ptr<const MappedRegion>> Map() = 0;
  // True when bytes come over a network: Map() then downloads the whole file, so readers that
  // need parts of it should use ReadAt.
  virtual bool remote() const { return false; }
};

class WritableFile {
 public:
  virtual ~WritableFile() = default;
  virtual const std::string& path() const = 0;
  virtual absl::Status Append(absl::string_view data) = 0;
  virtual absl::Status WriteAt(uint64_t offset, absl::string_view data) = 0;
  // Sets the file length (allocating blocks where the file system can, so ENOSPC shows early).
  virtual absl::Status Allocate(uint64_t size) = 0;
  virtual absl::Status Sync() = 0;
  virtual absl::Status Close() = 0;
  // A writable view of the first `size` bytes of the file (which must already be that long),
  // valid until Close(). Its blocks are reserved first, so writes through it cannot fail for
  // lack of space later — except on tmpfs, where reserving means zeroing every page before it
  // is written: there the free space is checked instead, and a write through the view raises
  // SIGBUS if the tmpfs fills meanwhile: write under GuardMappedCopy (core/io/sigbus_guard.h).
  // kUnimplemented where blocks cannot be reserved: use WriteAt then.
  //
  // mapped_copies_only(): true when every copy into the file should go through that view, even
  // a large one (tmpfs: CopyFrom is a splice copy there, under the inode lock that serialises
  // all threads writing the file; through the view they run in parallel).
  virtual bool mapped_copies_only() const { return false; }
  // Where Allocate reserves nothing (tmpfs): an error (ENOSPC, naming the file) when the file
  // system has less than `bytes` free, to refuse early what cannot fit. OK elsewhere.
  virtual absl::Status CheckFreeSpace(uint64_t bytes) {
    (void)bytes;
    return absl::OkStatus();
  }
  virtual absl::StatusOr<char*> MapWritable(uint64_t size) {
    (void)size;
    return absl::UnimplementedError("no writable mapping");
  }
  // Copies `n` bytes at `src_offset` of `src` to `dst_offset` of this file: in the kernel
  // (copy_file_range) where both are local files, else through src.Map() and WriteAt.
  virtual absl::Status CopyFrom(ReadableFile& src, uint64_t src_offset, uint64_t dst_offset,
                                uint64_t n);
};

class FileSystem {
 public:
  virtual ~FileSystem() = default;
  virtual absl::StatusOr<FileStat> Stat(const std::string& path) = 0;
  // Entries of a directory, sorted by name, without "." and "..".
  virtual absl::StatusOr<std::vector<DirEntry>> List(const std::string& dir) = 0;
  virtual absl::StatusOr<std::unique_ptr<ReadableFile>> OpenRead(const std::string& path) = 0;
  // Creates or truncates `path` for writing.
  virtual absl::StatusOr<std::unique_ptr<WritableFile>> Create(const std::string& path) = 0;
  // Opens an existing file for writing without truncating it (several writers may fill
  // disjoint ranges of one file).
  virtual absl::StatusOr<std::unique_ptr<WritableFile>> OpenForWrite(const std::string& path) = 0;
  virtual absl::Status Rename(const std::string& from, const std::string& to) = 0;
  virtual absl::Status Remove(const std::string& path) = 0;
  virtual absl::Status MakeDirs(const std::string& dir) = 0;
  // Makes renames and creations in `dir` durable.
  virtual absl::Status SyncDir(const std::string& dir) = 0;

  // Copies `n` bytes at `src_offset` of the file `src` to `dst` at `dst_offset`. The local file
  // system uses copy_file_range (reflinks or in-kernel copies); the default reads and writes
  // 8 MiB at a time.
  virtual absl::Status CopyRange(const std::string& src, uint64_t src_offset, WritableFile& dst,
                                 uint64_t dst_offset, uint64_t n);

  // Convenience: the whole file as a string.
  absl::StatusOr<std::string> ReadAll(const std::string& path);

  // True for the local file system (paths have device/inode identity, flock works).
  virtual bool local() const { return false; }

  // A file system confined to the existing directory `dir`, which is opened once, now. Paths
  // given to the result are relative to that directory ("" and "." name the directory itself);
  // an absolute path or a ".." component is refused, and every path resolves beneath the
  // directory without following any symbolic link (openat2 RESOLVE_BENEATH |
  // RESOLVE_NO_SYMLINKS on the local file system). Replacing `dir`, or anything inside it, by a
  // symlink after this call cannot redirect a read or a write: output I/O goes through it.
  // Errors name `dir/path`. The local file system follows symlinks in `dir` itself (a user's
  // OUT may be one); LocalFileSystemNoFollow() refuses a symlink in any component of `dir`.
  // Elsewhere the result forwards to this file system with `dir/` prefixed.
  virtual absl::StatusOr<std::unique_ptr<FileSystem>> OpenBeneath(const std::string& dir);

  // An open file descriptor of the directory `dir` (O_RDONLY | O_DIRECTORY, close-on-exec;
  // the caller closes it), for flock(); kUnimplemented where there is none.
  // True when files come over a network (their reads are round trips: readers keep many in
  // flight); local ones are read at memory speed (parallelism beyond the cores only costs
  // memory).
  virtual bool remote() const { return false; }

  virtual absl::StatusOr<int> OpenDirectoryFd(const std::string& dir) {
    return absl::UnimplementedError(dir + ": no directory descriptors here");
  }
};

// A small local file named on a command line (a key map, a mapping, a config): read to its end,
// so `--key-map <(...)` (a pipe) works; at most `max_bytes` (kInvalidArgument beyond).
absl::StatusOr<std::string> ReadOptionFile(const std::string& path, uint64_t max_bytes = 64 << 20);

// MakeDirs, returning the directories it created (innermost first), so that an operation that
// then refuses can take them away again (RemoveMadeDirs: only while they are still empty).
absl::StatusOr<std::vector<std::string>> MakeDirsNoting(FileSystem& fs, const std::string& dir);
void RemoveMadeDirs(FileSystem& fs, const std::vector<std::string>& made);

FileSystem& LocalFileSystem();
// The local file system, except that the last component of every path opened for reading or
// writing must not be a symbolic link (O_NOFOLLOW: ELOOP otherwise). safeshardd reads and
// writes under its roots through it: a symlink planted there is never followed.
FileSystem& LocalFileSystemNoFollow();
std::unique_ptr<FileSystem> NewMemFileSystem();

// Path helpers.
std::string JoinPath(absl::string_view dir, absl::string_view name);
std::string DirName(absl::string_view path);  // "." when there is no '/'
std::string BaseName(absl::string_view path);
// `rel` as a path beneath a directory: "." and empty components dropped ("" for the directory
// itself); kInvalidArgument naming `dir/rel` for an absolute path or a ".." component.
absl::StatusOr<std::string> NormalizeBeneath(absl::string_view dir, absl::string_view rel);

}  // namespace safeshard

#endif  // SAFESHARD_CORE_IO_FILESYSTEM_H_
