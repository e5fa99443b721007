#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <set>

#include "CLI/CLI.hpp"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "cli/cli.h"
#include "cli/command.h"
#include "cli/format_util.h"
#include "core/format/internal/json_util.h"
#include "core/io/atomic_file.h"
#include "core/io/filesystem.h"
#include "core/io/url.h"
#include "core/layout/layout.h"
#include "nlohmann/json.hpp"

namespace safeshard::cli {

// A path or URL (file://, http(s)://, hf://, mem://) resolved to its file system.
absl::StatusOr<ResolvedPath> Resolve(const std::string& path, const std::string& token) {
  UrlOptions o;
  o.token = token;
  return ResolveUrl(path, o);
}

extern const char kUrlHelp[];
const char kUrlHelp[] =
    "a directory, a .safetensors file, or a URL: http(s)://host/dir (ranged GETs; listing from a "
    "JSON "
    "directory index or the model index json), hf://ORG/REPO[@REVISION]/PATH ($HF_ENDPOINT), "
    "file://";
extern const char kTokenHelp[];
const char kTokenHelp[] =
    "Bearer token for http(s):// and hf:// (default: $HF_TOKEN, then ~/.cache/huggingface/token); "
    "never printed";
// One line on what proves the checkpoint complete, or why nothing does.
std::string CompletenessLine(const Completeness& c) {
  if (c.proven) return absl::StrCat("complete: proven by ", absl::StrJoin(c.by, ", "));
  return absl::StrCat("note: ", c.unproven);
}

void PrintTable(const std::vector<std::vector<std::string>>& rows, std::ostream& out,
                const std::set<size_t>& right_aligned) {
  std::vector<size_t> w;
  for (const auto& r : rows) {
    if (w.size() < r.size()) w.resize(r.size(), 0);
    for (size_t i = 0; i < r.size(); ++i) w[i] = std::max(w[i], r[i].size());
  }
  for (const auto& r : rows) {
    std::string line;
    for (size_t i = 0; i < r.size(); ++i) {
      std::string cell = r[i];
      std::string pad(w[i] - cell.size(), ' ');
      line += right_aligned.count(i) ? pad + cell : cell + (i + 1 < r.size() ? pad : "");
      if (i + 1 < r.size()) line += "  ";
    }
    out << line << "\n";
  }
}

bool NaturalLess(const std::string& a, const std::string& b) {
  size_t i = 0, j = 0;
  auto digit = [](char c) { return c >= '0' && c <= '9'; };
  while (i < a.size() && j < b.size()) {
    if (digit(a[i]) && digit(b[j])) {
      size_t i2 = i, j2 = j;
      while (i2 < a.size() && digit(a[i2])) ++i2;
      while (j2 < b.size() && digit(b[j2])) ++j2;
      // Compare the numbers by value: without leading zeros, the longer is larger.
      size_t zi = i, zj = j;
      while (zi + 1 < i2 && a[zi] == '0') ++zi;
      while (zj + 1 < j2 && b[zj] == '0') ++zj;
      if (i2 - zi != j2 - zj) return i2 - zi < j2 - zj;
      const int c = a.compare(zi, i2 - zi, b, zj, j2 - zj);
      if (c != 0) return c < 0;
      if (i2 - i != j2 - j) return i2 - i < j2 - j;  // "01" after "1": a stable tie-break
      i = i2;
      j = j2;
    } else {
      if (a[i] != b[j]) return static_cast<unsigned char>(a[i]) < static_cast<unsigned char>(b[j]);
      ++i;
      ++j;
    }
  }
  return a.size() - i < b.size() - j;
}

bool StderrIsTerminal(std::ostream& err) {
  return &err == &std::cerr && isatty(2);
}

}  // namespace safeshard::cli
