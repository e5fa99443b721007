#include "core/io/filesystem.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

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
