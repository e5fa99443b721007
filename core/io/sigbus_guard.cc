#include "core/io/sigbus_guard.h"

#include <signal.h>

#include <mutex>

#include "absl/strings/str_cat.h"

namespace safeshard::internal {
namespace {

struct sigaction g_previous;

void OnSigbus(int sig, siginfo_t* info, void* ctx) {
  sigjmp_buf* env = SigbusRecoveryPoint();
  if (env != nullptr) {
    LastSigbusAddress() = info != nullptr ? info->si_addr : nullptr;
    siglongjmp(*env, 1);
  }
  // Not inside a guarded access: what would have happened without us.
  if (g_previous.sa_flags & SA_SIGINFO) {
    if (g_previous.sa_sigaction != nullptr) return g_previous.sa_sigaction(sig, info, ctx);
  } else if (g_previous.sa_handler != SIG_DFL && g_previous.sa_handler != SIG_IGN &&
             g_previous.sa_handler != nullptr) {
    return g_previous.sa_handler(sig);
  }
  signal(SIGBUS, SIG_DFL);
  raise(SIGBUS);
}

}  // namespace

sigjmp_buf*& SigbusRecoveryPoint() {
  thread_local sigjmp_buf* point = nullptr;
  return point;
}

void*& LastSigbusAddress() {
  thread_local void* address = nullptr;
  return address;
}

absl::Status SigbusWriteError(absl::string_view file, uint64_t offset) {
  return absl::ResourceExhaustedError(absl::StrCat(
      file, ": no space to write at byte offset ", offset,
      " (SIGBUS writing its mapping): the file system is full (on tmpfs: its size limit or "
      "memory), or another process truncated the file"));
}

void InstallSigbusHandler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa = {};
    sa.sa_sigaction = OnSigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, &g_previous);
  });
}

absl::Status SigbusError(absl::string_view file, uint64_t offset) {
  return absl::DataLossError(absl::StrCat(
      file, ": the file shrank while it was being read (SIGBUS reading its mapping near byte ",
      offset,
      "): another process truncated or is rewriting it. Run again once its writer has "
      "finished"));
}

}  // namespace safeshard::internal
