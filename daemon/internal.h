// internal.h: helpers shared by safeshardd's parts (daemon.cc, detect.cc, jobs.cc); not an API.
#ifndef SAFESHARD_DAEMON_INTERNAL_H_
#define SAFESHARD_DAEMON_INTERNAL_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "core/format/manifest.h"
#include "core/io/filesystem.h"
#include "daemon/config.h"
#include "daemon/store.h"
#include "nlohmann/json.hpp"

namespace safeshard::daemon::detail {

// A run's stable id: a hash of its path.
std::string RunId(const std::string& path);
// `p` without trailing slashes.
std::string NormalizeDir(std::string p);
// Everything under the watch roots is read and written through this: a symbolic link planted
// under a root (a shard file, the manifest, an output file, a directory on the way to an
// output) is never followed.
FileSystem& RootsFs();
// Whether `name` is a per-rank shard file name ("shard-*.safetensors").
bool IsShardName(const std::string& name);
// Files of a run dir with sizes and mtimes: what "nothing changed" compares.
std::string Fingerprint(const std::string& dir, bool* has_shards, bool* has_manifest);
// Keys of expected_ranks_by_root name roots: resolved like the roots (symlinks, "..").
void ResolveRanksByRoot(Config* c);
// Every key of expected_ranks_by_root must be one of the (resolved) watch roots.
absl::Status CheckRanksByRoot(const Config& c);
// The run's completion manifest, read with a size bound and parsed by core/format/manifest.
absl::StatusOr<Manifest> ReadRunManifest(const std::string& dir);
// Retry backoff after `attempts` failures: 5 s doubling, at most 10 min.
int64_t BackoffMs(int attempts);
// 192 bits from the kernel's CSPRNG, hex; no fallback: a guessable token is worse than none.
absl::StatusOr<std::string> RandomToken();
nlohmann::json JobJson(const JobRecord& j);
nlohmann::json RunJson(const RunRecord& r);

}  // namespace safeshard::daemon::detail

#endif  // SAFESHARD_DAEMON_INTERNAL_H_
