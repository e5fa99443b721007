#include "daemon/requests.h"

#include "absl/strings/str_cat.h"
#include "core/format/internal/json_util.h"
#include "nlohmann/json.hpp"

namespace safeshard::daemon {

absl::StatusOr<RemapRequest> ParseRemapRequest(absl::string_view body) {
  const std::string usage =
      "the body must be {\"rules\": [[regex, replacement], ...], \"output\": "
      "\"/dir/under/a/watch/root\"}";
  nlohmann::json j;
  std::vector<std::pair<std::string, nlohmann::json>> members;
  internal::StrictParseResult r = internal::ParseJsonStrict(body, &j, &members);
  if (!r.ok) {
    return absl::InvalidArgumentError(
        absl::StrCat("request body: ", r.error, " at byte ", r.error_byte, "; ", usage));
  }
  if (r.duplicate) {
    return absl::InvalidArgumentError(absl::StrCat("request body: the key ",
                                                   internal::Quote(*r.duplicate),
                                                   " appears twice (byte ", r.duplicate_byte, ")"));
  }
  if (!j.is_object())
    return absl::InvalidArgumentError(absl::StrCat("request body: not an object; ", usage));
  RemapRequest out;
  bool have_rules = false, have_output = false;
  for (const auto& [key, value] : members) {
    if (key == "output" && value.is_string()) {
      out.output = value.get<std::string>();
      have_output = true;
    } else if (key == "rules") {
      absl::StatusOr<KeyMap> km = KeyMap::FromJson(internal::DumpJson(value));
      if (!km.ok())
        return absl::InvalidArgumentError(
            absl::StrCat("request body: rules: ", km.status().message()));
      out.rules = km->rules();
      have_rules = true;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("request body: unexpected member ", internal::Quote(key),
                       key == "output" ? " (not a string)" : "", "; ", usage));
    }
  }
  if (!have_rules || !have_output)
    return absl::InvalidArgumentError(absl::StrCat("request body: ", usage));
  if (out.output.find('\0') != std::string::npos) {
    // A C path would end at the NUL: the journal would name another directory than the one written.
    return absl::InvalidArgumentError("request body: output contains a NUL character");
  }
  if (out.output.empty() || out.output[0] != '/') {
    return absl::InvalidArgumentError("request body: output must be an absolute path");
  }
  if (out.rules.empty())
    return absl::InvalidArgumentError("request body: rules: no rules, nothing to remap");
  return out;
}

}  // namespace safeshard::daemon
