// requests.h: the bodies of the control API's requests, parsed strictly (bounded depth, no
// unknown or repeated keys, byte offsets in errors). Torch- and HTTP-free: fuzzed on its own.
//
//   ASSIGN_OR_RETURN(RemapRequest r, ParseRemapRequest(R"({"rules": [["^a", "b"]], "output":
//   "/o"})"));
#ifndef SAFESHARD_DAEMON_REQUESTS_H_
#define SAFESHARD_DAEMON_REQUESTS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/remap/keymap.h"

namespace safeshard::daemon {

// POST /v1/runs/{id}/remap: {"rules": [[regex, replacement], ...] or {regex: replacement},
// "output": "/absolute/dir"}.
struct RemapRequest {
  std::vector<KeyMap::Rule> rules;  // compiled by KeyMap::Create (bad regexes refused here)
  std::string output;
};
absl::StatusOr<RemapRequest> ParseRemapRequest(absl::string_view body);

}  // namespace safeshard::daemon

#endif  // SAFESHARD_DAEMON_REQUESTS_H_
