// run_ranks.h (tests): runs `body(rank, collective)` on n threads joined by an in-process group.
//
//   std::vector<absl::Status> st = RunRanks(2, [&](int rank, Collective& c) { ... });
#ifndef SAFESHARD_CORE_CONSOLIDATE_RUN_RANKS_H_
#define SAFESHARD_CORE_CONSOLIDATE_RUN_RANKS_H_

#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "core/consolidate/collective.h"

namespace safeshard::testing {

template <typename F>
std::vector<absl::Status> RunRanks(int n, F body) {
  auto group = NewInProcessGroup(n, absl::Seconds(60));
  std::vector<absl::Status> st(n);
  std::vector<std::thread> th;
  for (int r = 0; r < n; ++r) th.emplace_back([&, r] { st[r] = body(r, *group[r]); });
  for (auto& t : th) t.join();
  return st;
}

}  // namespace safeshard::testing

#endif  // SAFESHARD_CORE_CONSOLIDATE_RUN_RANKS_H_
