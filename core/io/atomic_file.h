// atomic_file.h: crash-safe file publication.
//
// Protocol (a crash at any step leaves either the old state or the complete new file):
//   1. create `<dir>/.<name>.safeshard-tmp-<pid>-<random>` in the destination directory
//      (same file system, so the rename is atomic);
//   2. write, then fsync the file;
//   3. rename it over `<dir>/<name>`;
//   4. fsync `<dir>` so the rename itself survives a power loss.
// An AtomicFile destroyed without Commit() removes its temporary file.
//
//   ASSIGN_OR_RETURN(AtomicFile out, AtomicFile::Create(fs, "/out/model.safetensors"));
//   RETURN_IF_ERROR(out.file().Append(bytes));
//   RETURN_IF_ERROR(out.Commit());
#ifndef SAFESHARD_CORE_IO_ATOMIC_FILE_H_
#define SAFESHARD_CORE_IO_ATOMIC_FILE_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/io/filesystem.h"

namespace safeshard {

// True for names AtomicFile gives its temporary files (stale ones are safe to delete).
bool IsTempFileName(absl::string_view name);

// Removes temporary files in `dir` left by AtomicFiles of processes that no longer run (a crash
// or kill -9). Returns the names removed.
absl::StatusOr<std::vector<std::string>> CleanStaleTempFiles(FileSystem& fs,
                                                             const std::string& dir);

class AtomicFile {
 public:
  static absl::StatusOr<AtomicFile> Create(FileSystem& fs, const std::string& final_path);

  AtomicFile(AtomicFile&&) noexcept;
  AtomicFile& operator=(AtomicFile&&) = delete;
  ~AtomicFile();

  WritableFile& file() { return *file_; }
  const std::string& temp_path() const { return temp_path_; }
  const std::string& final_path() const { return final_path_; }

  // fsync, close, rename over the final path, fsync the directory.
  absl::Status Commit();
  // fsync and close the temporary file now (file() is gone after this); Commit() then only
  // renames. For operations that write many files before committing them all: descriptors
  // stay bounded.
  absl::Status CloseFile();
  // Closes and removes the temporary file (also what the destructor does if not committed).
  void Abandon();

 private:
  AtomicFile(FileSystem* fs, std::string final_path, std::string temp_path,
             std::unique_ptr<WritableFile> file);
  FileSystem* fs_;
  std::string final_path_;
  std::string temp_path_;
  std::unique_ptr<WritableFile> file_;
  bool done_ = false;
};

// Writes `contents` to `path` atomically.
absl::Status WriteFileAtomically(FileSystem& fs, const std::string& path,
                                 absl::string_view contents);

// An exclusive lock on an output directory for the whole of an operation that writes there
// (consolidate, remap): a second writer into the same directory fails at once with kUnavailable
// instead of publishing its index over the other's data. The lock is flock() on the directory
// itself (nothing is created in it; released when the process dies, so a kill -9 never leaves
// it stuck); on other file systems than the local one it is a no-op.
//
//   ASSIGN_OR_RETURN(DirectoryLock lock, DirectoryLock::Acquire(fs, out_dir));
class DirectoryLock {
 public:
  static absl::StatusOr<DirectoryLock> Acquire(FileSystem& fs, const std::string& dir);
  DirectoryLock(DirectoryLock&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  DirectoryLock& operator=(DirectoryLock&&) = delete;
  ~DirectoryLock();

 private:
  explicit DirectoryLock(int fd) : fd_(fd) {}
  int fd_ = -1;
};

// Whether two local paths name the same directory by identity (st_dev/st_ino: any spelling,
// ".", "..", symlinks). False when either does not exist; on other file systems, compares the
// normalised paths.
bool SameDirectory(FileSystem& fs, const std::string& a, const std::string& b);
// Whether the directory `dir` (a FileSystem::OpenBeneath view) is the local directory at
// `path`, by the identity of the descriptor it holds. False elsewhere than locally.
bool SameOpenedDirectory(FileSystem& dir, const std::string& path);

}  // namespace safeshard

#endif  // SAFESHARD_CORE_IO_ATOMIC_FILE_H_
