// tcp_collective.h: a Collective over plain TCP (no libtorch, no MPI): rank 0 listens, the other
// ranks connect, every collective is a gather at rank 0 and a scatter of the result. For
// consolidating on every rank from Python training code whatever its torch version (torchrun's
// MASTER_ADDR gives the host; the port is its own, so it never meets torch's TCPStore).
//
//   TcpGroupOptions o{.rank = 3, .world_size = 8, .host = "node0", .port = 29501};
//   ASSIGN_OR_RETURN(std::unique_ptr<Collective> c, NewTcpCollective(o));
//   Consolidate(fs, in, out, options, c.get());
//
// A rank that dies or hangs makes the others fail with an error naming it (connection closed,
// or no answer within `timeout`), never hang. Connections carry a group key (the job id, or the
// input and output paths): two jobs meeting on one port by mistake refuse each other.
#ifndef SAFESHARD_CORE_CONSOLIDATE_TCP_COLLECTIVE_H_
#define SAFESHARD_CORE_CONSOLIDATE_TCP_COLLECTIVE_H_

#include <atomic>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/consolidate/collective.h"

namespace safeshard {

struct TcpGroupOptions {
  int rank = 0;
  int world_size = 1;
  std::string host = "127.0.0.1";  // rank 0's address (it binds there)
  int port = 29501;
  std::string group_key;  // the same on every rank of one group
  absl::Duration timeout = absl::Seconds(300);
  // Set to give up waiting (for ranks to join, or in a collective): kCancelled.
  const std::atomic<bool>* cancel = nullptr;
};

absl::StatusOr<std::unique_ptr<Collective>> NewTcpCollective(const TcpGroupOptions& options);

}  // namespace safeshard

#endif  // SAFESHARD_CORE_CONSOLIDATE_TCP_COLLECTIVE_H_
