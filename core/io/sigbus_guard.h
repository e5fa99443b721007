// sigbus_guard.h: turn a SIGBUS from a memory-mapped input that shrank under us into an error.
//
// Reading a mapped file that another process truncates raises SIGBUS, which kills the process
// (the CLI, or the whole daemon). GuardMappedAccess runs `fn` with a per-thread recovery point:
// a SIGBUS raised by this thread inside `fn` unwinds to it (siglongjmp) and becomes kDataLoss
// naming the file; SIGBUS anywhere else keeps its default action (the process still dies for a
// real bug). `fn` must only read and write memory (memcpy, memcmp, hashing, dtype conversion):
// no allocation, no locks, no objects with destructors, since a jump skips them.
//
//   absl::Status s = GuardMappedAccess(path, offset, [&] { std::memcpy(dst, src, n); });
#ifndef SAFESHARD_CORE_IO_SIGBUS_GUARD_H_
#define SAFESHARD_CORE_IO_SIGBUS_GUARD_H_

#include <csetjmp>
#include <cstdint>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace safeshard {
namespace internal {
// The recovery point of this thread's innermost GuardMappedAccess, or nullptr.
sigjmp_buf*& SigbusRecoveryPoint();
// Installs the process-wide SIGBUS handler once (chaining to the previous disposition).
void InstallSigbusHandler();
absl::Status SigbusError(absl::string_view file, uint64_t offset);
absl::Status SigbusWriteError(absl::string_view file, uint64_t offset);
// The faulting address of this thread's last SIGBUS caught by a guard.
void*& LastSigbusAddress();
}  // namespace internal

template <typename Fn>
absl::Status GuardMappedAccess(absl::string_view file, uint64_t offset, Fn&& fn) {
  internal::InstallSigbusHandler();
  sigjmp_buf env;
  sigjmp_buf* const outer = internal::SigbusRecoveryPoint();
  // savemask 0: the handler runs with SA_NODEFER, so SIGBUS is not blocked after the jump and no
  // sigprocmask call is needed per guarded access.
  if (sigsetjmp(env, 0) != 0) {
    internal::SigbusRecoveryPoint() = outer;
    return internal::SigbusError(file, offset);
  }
  internal::SigbusRecoveryPoint() = &env;
  fn();
  internal::SigbusRecoveryPoint() = outer;
  return absl::OkStatus();
}

// GuardMappedAccess for `fn` that reads a mapped input and writes a mapped output
// [out, out + out_size): a write through an output mapping whose blocks are not reserved (tmpfs:
// see WritableFile::MapWritable) raises SIGBUS when the file system is full. The error names
// the mapping the fault hit: the output (kResourceExhausted) or the input (kDataLoss).
template <typename Fn>
absl::Status GuardMappedCopy(absl::string_view in_file, uint64_t in_offset,
                             absl::string_view out_file, const char* out, uint64_t out_size,
                             Fn&& fn) {
  absl::Status s = GuardMappedAccess(in_file, in_offset, std::forward<Fn>(fn));
  if (s.ok()) return s;
  const char* at = static_cast<const char*>(internal::LastSigbusAddress());
  if (at != nullptr && at >= out && at < out + out_size) {
    return internal::SigbusWriteError(out_file, static_cast<uint64_t>(at - out));
  }
  return s;
}

}  // namespace safeshard

#endif  // SAFESHARD_CORE_IO_SIGBUS_GUARD_H_
