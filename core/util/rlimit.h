// rlimit.h: raise the open-file limit for checkpoints of many rank files.
//
// A 1,024-rank save has more files than the usual soft limit of 1,024 descriptors: without this a
// consolidation or remap of it fails with EMFILE. Every safeshard program calls it first.
//
//   safeshard::RaiseOpenFileLimit();  // soft limit := hard limit
#ifndef SAFESHARD_CORE_UTIL_RLIMIT_H_
#define SAFESHARD_CORE_UTIL_RLIMIT_H_

#include <sys/resource.h>

namespace safeshard {

// Sets the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit (or the old one if
// it cannot be raised).
inline rlim_t RaiseOpenFileLimit() {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return 0;
  if (rl.rlim_cur < rl.rlim_max) {
    struct rlimit want = rl;
    want.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &want) == 0) return want.rlim_cur;
  }
  return rl.rlim_cur;
}

}  // namespace safeshard

#endif  // SAFESHARD_CORE_UTIL_RLIMIT_H_
