#include "daemon/internal.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/random.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/io/atomic_file.h"
#include "core/util/status_macros.h"
#include "daemon/daemon.h"

namespace safeshard::daemon::detail {

using nlohmann::json;

bool IsShardName(const std::string& name) {
  return absl::StartsWith(name, "shard-") && absl::EndsWith(name, ".safetensors");
}

std::string RunId(const std::string& path) {
  uint64_t h = 1469598103934665603ull;
  for (char c : path) h = (h ^ static_cast<uint8_t>(c)) * 1099511628211ull;
  return absl::StrFormat("%016x", h);
}

std::string NormalizeDir(std::string p) {
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}

FileSystem& RootsFs() {
  return LocalFileSystemNoFollow();
}

// Files of a run dir with sizes and mtimes: what "nothing changed" compares.
std::string Fingerprint(const std::string& dir, bool* has_shards, bool* has_manifest) {
  *has_shards = false;
  *has_manifest = false;
  absl::StatusOr<std::vector<DirEntry>> entries = RootsFs().List(dir);
  if (!entries.ok()) return "";
  std::string fp;
  for (const DirEntry& e : *entries) {
    if (e.is_dir || IsTempFileName(e.name)) continue;
    bool shard = IsShardName(e.name);
    *has_shards |= shard;
    *has_manifest |= e.name == kCompletionManifest;
    if (!shard && e.name != kCompletionManifest) continue;
    absl::StatusOr<FileStat> st = RootsFs().Stat(JoinPath(dir, e.name));
    if (!st.ok()) continue;
    absl::StrAppend(&fp, e.name, ":", st->size, ":", st->mtime_ns, ";");
  }
  return fp;
}

// Keys of expected_ranks_by_root name roots: resolved like the roots (symlinks, "..").
void ResolveRanksByRoot(Config* c) {
  std::map<std::string, int> by_root;
  for (const auto& [r, n] : c->expected_ranks_by_root) {
    char* real = realpath(r.c_str(), nullptr);
    by_root[real != nullptr ? std::string(real) : r] = n;
    free(real);
  }
  c->expected_ranks_by_root = std::move(by_root);
  std::map<std::string, std::string> deq;
  for (const auto& [r, d] : c->dequantize_by_root) {
    char* real = realpath(r.c_str(), nullptr);
    deq[real != nullptr ? std::string(real) : r] = d;
    free(real);
  }
  c->dequantize_by_root = std::move(deq);
}

// Every key of expected_ranks_by_root must be one of the (resolved) watch roots.
absl::Status CheckRanksByRoot(const Config& c) {
  auto check = [&](const std::string& r, const char* key) {
    bool known = false;
    for (const std::string& w : c.watch_roots) known |= w == r;
    if (known) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat("config: ", key, " names ", r, ", which is not a watch root"));
  };
  for (const auto& [r, n] : c.expected_ranks_by_root)
    RETURN_IF_ERROR(check(r, "expected_ranks_by_root"));
  for (const auto& [r, d] : c.dequantize_by_root) RETURN_IF_ERROR(check(r, "dequantize_by_root"));
  return absl::OkStatus();
}

// The run's completion manifest, read with a size bound and parsed by core/format/manifest.
absl::StatusOr<Manifest> ReadRunManifest(const std::string& dir) {
  const std::string path = JoinPath(dir, kCompletionManifest);
  ASSIGN_OR_RETURN(std::unique_ptr<ReadableFile> f, RootsFs().OpenRead(path));
  if (f->size() > kMaxManifestBytes) {
    return absl::DataLossError(absl::StrCat(path, ": ", f->size(), " bytes, over the limit"));
  }
  std::string text(f->size(), '\0');
  RETURN_IF_ERROR(f->ReadAt(0, text.size(), text.data()));
  return ParseManifest(text, path);
}

int64_t BackoffMs(int attempts) {
  double s = 5.0 * std::pow(2.0, std::max(0, attempts - 1));
  return static_cast<int64_t>(std::min(s, 600.0) * 1000);
}

// 192 bits from the kernel's CSPRNG; no fallback: a guessable token is worse than no start.
absl::StatusOr<std::string> RandomToken() {
  unsigned char b[24];
  size_t got = 0;
  while (got < sizeof b) {
    ssize_t n = getrandom(b + got, sizeof b - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      return absl::UnavailableError(absl::StrCat(
          "cannot draw random bytes for the API token (getrandom: ", std::strerror(errno), ")"));
    }
    got += static_cast<size_t>(n);
  }
  std::string out;
  for (unsigned char c : b) absl::StrAppendFormat(&out, "%02x", c);
  return out;
}

json JobJson(const JobRecord& j) {
  return {{"id", j.id},
          {"run", j.run_id},
          {"kind", Name(j.kind)},
          {"state", Name(j.state)},
          {"output", j.output},
          {"bytes_done", j.bytes_done},
          {"bytes_total", j.bytes_total},
          {"error", j.error},
          {"retryable", j.retryable},
          {"attempts", j.attempts},
          {"next_attempt_ms", j.next_attempt_ms},
          {"created_ms", j.created_ms},
          {"started_ms", j.started_ms},
          {"finished_ms", j.finished_ms},
          {"seconds", j.seconds},
          {"verified_bytes", j.verify_bytes}};
}

json RunJson(const RunRecord& r) {
  return {{"id", r.id},
          {"path", r.path},
          {"detection", r.detection},
          {"state", Name(r.state)},
          {"output", r.output},
          {"detail", r.detail},
          {"first_seen_ms", r.first_seen_ms},
          {"last_change_ms", r.last_change_ms}};
}

}  // namespace safeshard::daemon::detail
