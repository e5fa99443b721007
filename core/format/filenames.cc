#include "core/format/filenames.h"

#include <algorithm>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"

namespace safeshard {
namespace {

bool ParseDigits(absl::string_view s, int* out) {
  if (s.empty() || s.size() > 9) return false;
  for (char c : s) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) return false;
  }
  return absl::SimpleAtoi(s, out);
}

}  // namespace

std::string ModelFileName(int index, int count) {
  return absl::StrFormat("model-%05d-of-%05d.safetensors", index, count);
}

std::string ShardFileName(int rank, int index, int count) {
  return absl::StrFormat("shard-%05d-model-%05d-of-%05d.safetensors", rank + 1, index, count);
}

absl::StatusOr<FileIndex> ParseFileIndex(absl::string_view name) {
  if (name == kSingleFileName) return FileIndex{};
  absl::string_view stem = name;
  if (!absl::ConsumeSuffix(&stem, kSafetensorsSuffix)) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": not a .safetensors file name"));
  }
  size_t of = stem.rfind("-of-");
  if (of == absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": no \"-IIIII-of-NNNNN\" file index in the name"));
  }
  absl::string_view count_s = stem.substr(of + 4);
  absl::string_view before = stem.substr(0, of);
  size_t dash = before.rfind('-');
  absl::string_view index_s =
      dash == absl::string_view::npos ? absl::string_view() : before.substr(dash + 1);
  FileIndex fi;
  if (!ParseDigits(index_s, &fi.index) || !ParseDigits(count_s, &fi.count)) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": no \"-IIIII-of-NNNNN\" file index in the name"));
  }
  if (fi.count < 1 || fi.index < 1 || fi.index > fi.count) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": file index ", fi.index, " is outside 1..", fi.count));
  }
  // "shard-RRRRR-model-..." carries the rank as well.
  absl::string_view prefix = before.substr(0, dash);
  if (absl::ConsumePrefix(&prefix, "shard-")) {
    size_t d = prefix.find('-');
    int shard;
    if (d != absl::string_view::npos && ParseDigits(prefix.substr(0, d), &shard) && shard >= 1) {
      fi.shard = shard;
    }
  }
  return fi;
}

FileIndexAssignment AssignFileIndices(std::vector<std::string> names) {
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  FileIndexAssignment out;
  out.count = static_cast<int>(names.size());
  std::set<int> seen;
  bool usable = true;
  std::string why;
  for (const std::string& n : names) {
    absl::StatusOr<FileIndex> fi = ParseFileIndex(n);
    if (!fi.ok()) {
      usable = false;
      why = std::string(fi.status().message());
      break;
    }
    if (fi->count != out.count || !seen.insert(fi->index).second) {
      usable = false;
      why = absl::StrCat(n, ": index ", fi->index, " of ", fi->count, " does not fit a set of ",
                         out.count, " distinct files");
      break;
    }
    out.index_of[n] = fi->index;
  }
  if (!usable) {
    out.index_of.clear();
    for (size_t i = 0; i < names.size(); ++i) out.index_of[names[i]] = static_cast<int>(i) + 1;
    if (names.size() > 1) {
      out.warning = absl::StrCat("file indices taken from sorted file names (", why, ")");
    }
  }
  return out;
}

bool IsPlainFileName(absl::string_view name) {
  if (name.empty() || name == "." || name == "..") return false;
  for (char c : name) {
    if (c == '/' || c == '\\' || c == '\0') return false;
  }
  return true;
}

}  // namespace safeshard
