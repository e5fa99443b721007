// libFuzzer target for what safeshardd and the CLI accept as configuration and requests:
// safeshardd's config file (daemon/config), the control API's remap request body
// (daemon/requests) and the typed consolidation spec (core/consolidate/spec). The first input
// byte picks the parser (byte % 3: 0 config, 1 remap body, 2 consolidation spec).
// Invariants beyond "no crash, no exception": an accepted config validates, and the spec every
// job would run round-trips through JSON; an accepted spec round-trips and validates; an
// accepted remap body has rules that compile.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "core/consolidate/spec.h"
#include "core/remap/keymap.h"
#include "daemon/config.h"
#include "daemon/requests.h"

namespace {

void Check(bool ok) {
  if (!ok) std::abort();
}

void FuzzConfig(absl::string_view data) {
  absl::StatusOr<safeshard::daemon::Config> c = safeshard::daemon::ParseConfig(data);
  if (!c.ok()) return;
  Check(safeshard::daemon::ValidateConfig(*c).ok());
  const safeshard::ConsolidateSpec spec = c->ConsolidateSpecFor("/run");
  Check(safeshard::ValidateConsolidateSpec(spec).ok());
  absl::StatusOr<safeshard::ConsolidateSpec> back =
      safeshard::ParseConsolidateSpec(safeshard::SerializeConsolidateSpec(spec));
  Check(back.ok() && *back == spec);
}

void FuzzRemapBody(absl::string_view data) {
  absl::StatusOr<safeshard::daemon::RemapRequest> r = safeshard::daemon::ParseRemapRequest(data);
  if (!r.ok()) return;
  Check(!r->rules.empty());
  Check(safeshard::KeyMap::Create(r->rules).ok());
}

void FuzzSpec(absl::string_view data) {
  absl::StatusOr<safeshard::ConsolidateSpec> s = safeshard::ParseConsolidateSpec(data);
  if (!s.ok()) return;
  Check(safeshard::ValidateConsolidateSpec(*s).ok());
  const std::string text = safeshard::SerializeConsolidateSpec(*s);
  absl::StatusOr<safeshard::ConsolidateSpec> back = safeshard::ParseConsolidateSpec(text);
  Check(back.ok() && *back == *s);
  Check(safeshard::SerializeConsolidateSpec(*back) == text);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  absl::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 3) {
    case 0: FuzzConfig(rest); break;
    case 1: FuzzRemapBody(rest); break;
    default: FuzzSpec(rest); break;
  }
  return 0;
}
