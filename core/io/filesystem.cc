#include "core/io/filesystem.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace safeshard {

absl::StatusOr<std::string> FileSystem::ReadAll(const std::string& path) {
  absl::StatusOr<std::unique_ptr<ReadableFile>> f = OpenRead(path);
  if (!f.ok()) return f.status();
  std::string out((*f)->size(), '\0');
  absl::Status s = (*f)->ReadAt(0, out.size(), out.data());
  if (!s.ok()) return s;
  return out;
}

absl::Status WritableFile::CopyFrom(ReadableFile& src, uint64_t src_offset, uint64_t dst_offset,
                                    uint64_t n) {
  absl::StatusOr<std::shared_ptr<const MappedRegion>> m = src.Map();
  if (!m.ok()) return m.status();
  absl::string_view data = (*m)->data();
  if (src_offset > data.size() || n > data.size() - src_offset) {
    return absl::DataLossError(absl::StrCat(src.path(), ": ", n, " bytes at offset ", src_offset,
                                            " lie beyond the end of the file"));
  }
  return WriteAt(dst_offset, data.substr(src_offset, n));
}

absl::StatusOr<std::string> NormalizeBeneath(absl::string_view dir, absl::string_view rel) {
  if (!rel.empty() && rel.front() == '/') {
    return absl::InvalidArgumentError(absl::StrCat(
        JoinPath(dir, rel), ": an absolute path where a path inside ", dir, " is required"));
  }
  std::string out;
  for (absl::string_view c : absl::StrSplit(rel, '/')) {
    if (c.empty() || c == ".") continue;
    if (c == "..") {
      return absl::InvalidArgumentError(absl::StrCat(JoinPath(dir, rel), ": \"..\" would leave ",
                                                     dir, "; only paths inside it are used"));
    }
    if (!out.empty()) out.push_back('/');
    out.append(c.data(), c.size());
  }
  return out;
}

namespace {

// OpenBeneath() elsewhere than on the local file system: forwards with `dir/` prefixed (those
// file systems have no symbolic links).
class PrefixFileSystem : public FileSystem {
 public:
  PrefixFileSystem(FileSystem* base, std::string dir) : base_(base), dir_(std::move(dir)) {}
  bool remote() const override { return base_->remote(); }

  absl::StatusOr<FileStat> Stat(const std::string& p) override {
    absl::StatusOr<std::string> full = Full(p);
    if (!full.ok()) return full.status();
    return base_->Stat(*full);
  }
  absl::StatusOr<std::vector<DirEntry>> List(const std::string& p) override {
    absl::StatusOr<std::string> full = Full(p);
    if (!full.ok()) return full.status();
    return base_->List(*full);
  }
  absl::StatusOr<std::unique_ptr<ReadableFile>> OpenRead(const std::string& p) override {
    absl::StatusOr<std::string> full = Full(p);
    if (!full.ok()) return full.status();
    return base_->OpenRead(*full);
  }
  absl::StatusOr<std::unique_ptr<WritableFile>> Create(const std::string& p) override {
    absl::StatusOr<std::string> full = Full(p);
    if (!full.ok()) return full.status();
    return base_->Create(*full);
  }
  absl::StatusOr<std::unique_ptr<WritableFile>> OpenForWrite(const std::string& p) override {
    absl::StatusOr<std::string> full = Full(p);
    if (!full.ok()) return full.status();
    return base_->OpenForWrite(*full);
  }
  absl::Status Rename(const std::string& from, const std::string& to) override {
    absl::StatusOr<std::string> f = Full(from), t = Full(to);
    if (!f.ok()) return f.status();
    if (!t.ok()) return t.status();
    return base_->Rename(*f, *t);
  }
  absl::Status Remove(const std::string& p) override {
    absl::StatusOr<std::string> full = Full(p);
    if (!full.ok()) return full.status();
    return base_->Remove(*full);
  }
  absl::Status MakeDirs(const std::string& p) override {
    absl::StatusOr<std::string> full = Full(p);
    if (!full.ok()) return full.status();
    return base_->MakeDirs(*full);
  }
  absl::Status SyncDir(const std::string& p) override {
    absl::StatusOr<std::string> full = Full(p);
    if (!full.ok()) return full.status();
    return base_->SyncDir(*full);
  }
  absl::Status CopyRange(const std::string& src, uint64_t src_offset, WritableFile& dst,
                         uint64_t dst_offset, uint64_t n) override {
    absl::StatusOr<std::string> full = Full(src);
    if (!full.ok()) return full.status();
    return base_->CopyRange(*full, src_offset, dst, dst_offset, n);
  }
  bool local() const override { return base_->local(); }
  absl::StatusOr<int> OpenDirectoryFd(const std::string& p) override {
    absl::StatusOr<std::string> full = Full(p);
    if (!full.ok()) return full.status();
    return base_->OpenDirectoryFd(*full);
  }
  absl::StatusOr<std::unique_ptr<FileSystem>> OpenBeneath(const std::string& p) override {
    absl::StatusOr<std::string> full = Full(p);
    if (!full.ok()) return full.status();
    return base_->OpenBeneath(*full);
  }

 private:
  absl::StatusOr<std::string> Full(const std::string& p) const {
    absl::StatusOr<std::string> rel = NormalizeBeneath(dir_, p);
    if (!rel.ok()) return rel.status();
    return rel->empty() ? dir_ : JoinPath(dir_, *rel);
  }
  FileSystem* base_;
  std::string dir_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<FileSystem>> FileSystem::OpenBeneath(const std::string& dir) {
  absl::StatusOr<FileStat> st = Stat(dir);
  if (!st.ok()) return st.status();
  if (!st->is_dir) {
    return absl::FailedPreconditionError(absl::StrCat(dir, ": is not a directory"));
  }
  return std::unique_ptr<FileSystem>(new PrefixFileSystem(this, dir));
}

absl::StatusOr<std::vector<std::string>> MakeDirsNoting(FileSystem& fs, const std::string& dir) {
  std::vector<std::string> made;
  for (std::string p = dir; !p.empty() && p != "/" && p != "." && !fs.Stat(p).ok();
       p = DirName(p)) {
    made.push_back(p);
    if (DirName(p) == p) break;
  }
  absl::Status s = fs.MakeDirs(dir);
  if (!s.ok()) {
    RemoveMadeDirs(fs, made);
    return s;
  }
  return made;
}

void RemoveMadeDirs(FileSystem& fs, const std::vector<std::string>& made) {
  for (const std::string& d : made) {
    absl::StatusOr<std::vector<DirEntry>> entries = fs.List(d);
    if (entries.ok() && entries->empty()) (void)fs.Remove(d);  // rmdir: an empty directory only
  }
}

absl::Status FileSystem::CopyRange(const std::string& src, uint64_t src_offset, WritableFile& dst,
                                   uint64_t dst_offset, uint64_t n) {
  absl::StatusOr<std::unique_ptr<ReadableFile>> f = OpenRead(src);
  if (!f.ok()) return f.status();
  std::string buf;
  const uint64_t step = 8ull << 20;
  for (uint64_t done = 0; done < n; done += step) {
    uint64_t m = std::min(step, n - done);
    buf.resize(m);
    absl::Status s = (*f)->ReadAt(src_offset + done, m, buf.data());
    if (s.ok()) s = dst.WriteAt(dst_offset + done, buf);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

std::string JoinPath(absl::string_view dir, absl::string_view name) {
  if (dir.empty()) return std::string(name);
  if (dir.back() == '/') return absl::StrCat(dir, name);
  return absl::StrCat(dir, "/", name);
}

std::string DirName(absl::string_view path) {
  while (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  size_t p = path.rfind('/');
  if (p == absl::string_view::npos) return ".";
  if (p == 0) return "/";
  return std::string(path.substr(0, p));
}

std::string BaseName(absl::string_view path) {
  while (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  size_t p = path.rfind('/');
  return std::string(p == absl::string_view::npos ? path : path.substr(p + 1));
}

}  // namespace safeshard
