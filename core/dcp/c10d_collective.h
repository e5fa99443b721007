// c10d_collective.h: the consolidation engine's Collective over c10d's Gloo process group.
//
// Ranks rendezvous through a FileStore (a path on a shared file system) or a TCPStore
// (MASTER_ADDR/MASTER_PORT, rank 0 serves). Every collective is bounded by `timeout`: a rank that
// died or hung makes the others return kDeadlineExceeded instead of waiting forever. No
// exception crosses this API (c10::Error is turned into absl::Status).
//
//   GroupOptions o{.rank = 0, .world_size = 2, .file_store = "/shared/rdzv"};
//   ASSIGN_OR_RETURN(std::unique_ptr<Collective> c, NewC10dCollective(o));
//   ASSIGN_OR_RETURN(ConsolidateResult r, Consolidate(fs, in, out, options, c.get()));
//
// Or from the torchrun environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT):
//   ASSIGN_OR_RETURN(GroupOptions o, GroupOptionsFromEnv());
#ifndef SAFESHARD_CORE_DCP_C10D_COLLECTIVE_H_
#define SAFESHARD_CORE_DCP_C10D_COLLECTIVE_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/consolidate/collective.h"

namespace safeshard {

struct GroupOptions {
  int rank = 0;
  int world_size = 1;
  std::string file_store;   // rendezvous file (FileStore) when set
  std::string master_addr;  // else TCPStore at master_addr:master_port
  int master_port = 29500;
  absl::Duration timeout = absl::Seconds(300);
};

// Reads RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT (as torchrun sets them).
absl::StatusOr<GroupOptions> GroupOptionsFromEnv();

absl::StatusOr<std::unique_ptr<Collective>> NewC10dCollective(const GroupOptions& options);

}  // namespace safeshard

#endif  // SAFESHARD_CORE_DCP_C10D_COLLECTIVE_H_
