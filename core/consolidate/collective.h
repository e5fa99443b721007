// collective.h: what the consolidation engine needs from a group of cooperating ranks.
//
// core/dcp implements it over c10d (Gloo); NewInProcessGroup() gives threads of one process a
// group for tests. Every call is collective: all ranks call it in the same order. An
// implementation must not hang forever when a rank is gone: it returns kDeadlineExceeded (or
// kAborted) after its timeout.
//
//   std::vector<std::unique_ptr<Collective>> group = NewInProcessGroup(4, absl::Seconds(30));
//   // thread r:  ASSIGN_OR_RETURN(auto all, group[r]->AllGather("mine"));
#ifndef SAFESHARD_CORE_CONSOLIDATE_COLLECTIVE_H_
#define SAFESHARD_CORE_CONSOLIDATE_COLLECTIVE_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace safeshard {

class Collective {
 public:
  virtual ~Collective() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // Every rank's `mine`, indexed by rank.
  virtual absl::StatusOr<std::vector<std::string>> AllGather(const std::string& mine) = 0;
  // `data` from `root` on every rank (ignored elsewhere).
  virtual absl::StatusOr<std::string> Broadcast(const std::string& data, int root) = 0;
  virtual absl::Status Barrier() = 0;
};

// All-gathers every rank's status: OK when all are OK, else an error with the first failing
// rank's code and every failing rank's message as "rank R: <message>" (joined by "; "), the same
// on every rank. A failure of the collective itself is returned as is.
absl::Status AllGatherStatus(Collective& c, const absl::Status& mine);

// A group of `n` ranks inside one process (one Collective per thread). A call that waits longer
// than `timeout` for the other ranks returns kDeadlineExceeded.
std::vector<std::unique_ptr<Collective>> NewInProcessGroup(int n, absl::Duration timeout);

// A group of one: every collective returns immediately.
std::unique_ptr<Collective> NewSingleRank();

}  // namespace safeshard

#endif  // SAFESHARD_CORE_CONSOLIDATE_COLLECTIVE_H_
