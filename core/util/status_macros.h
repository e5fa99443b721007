// status_macros.h: propagate absl::Status / absl::StatusOr<T> without boilerplate.
//
//   absl::StatusOr<Header> ReadHeader(...);
//   absl::Status Inspect(...) {
//     ASSIGN_OR_RETURN(Header h, ReadHeader(...));
//     RETURN_IF_ERROR(Validate(h));
//     return absl::OkStatus();
//   }
#ifndef SAFESHARD_CORE_UTIL_STATUS_MACROS_H_
#define SAFESHARD_CORE_UTIL_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/cord.h"
#include "absl/strings/string_view.h"

#define SAFESHARD_CONCAT_INNER_(a, b) a##b
#define SAFESHARD_CONCAT_(a, b) SAFESHARD_CONCAT_INNER_(a, b)

// Returns from the current function if `expr` is not OK.
#define RETURN_IF_ERROR(expr)                              \
  do {                                                     \
    ::absl::Status safeshard_status_ = (expr);             \
    if (!safeshard_status_.ok()) return safeshard_status_; \
  } while (0)

// `ASSIGN_OR_RETURN(T v, StatusOrExpr)`: declares/assigns `v` or returns the error.
#define ASSIGN_OR_RETURN(lhs, expr) \
  SAFESHARD_ASSIGN_OR_RETURN_IMPL_(SAFESHARD_CONCAT_(safeshard_sor_, __LINE__), lhs, expr)

#define SAFESHARD_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                     \
  if (!tmp.ok()) return std::move(tmp).status();         \
  lhs = std::move(tmp).value()

namespace safeshard {

// Prefixes `context` to a non-OK status message, keeping its code and payloads.
inline absl::Status Annotate(const absl::Status& s, absl::string_view context) {
  if (s.ok()) return s;
  absl::Status out(s.code(), std::string(context) + ": " + std::string(s.message()));
  s.ForEachPayload(
      [&](absl::string_view url, const absl::Cord& payload) { out.SetPayload(url, payload); });
  return out;
}

}  // namespace safeshard

#endif  // SAFESHARD_CORE_UTIL_STATUS_MACROS_H_
