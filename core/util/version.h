// version.h: the version every safeshard program reports (--version, the inspector's About box,
// safeshardd's start log). Bumped with each release.
#ifndef SAFESHARD_CORE_UTIL_VERSION_H_
#define SAFESHARD_CORE_UTIL_VERSION_H_

namespace safeshard {

inline constexpr char kVersion[] = "0.4.0";

}  // namespace safeshard

#endif  // SAFESHARD_CORE_UTIL_VERSION_H_
