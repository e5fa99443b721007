// parallel.h: run fn(0) .. fn(n - 1) on up to `threads` threads (the calling thread alone when
// threads <= 1 or n <= 1). Items are handed out one at a time, so slow items (a remote file on a
// distant host) do not hold back the rest. fn must be safe to call concurrently.
#ifndef SAFESHARD_CORE_UTIL_PARALLEL_H_
#define SAFESHARD_CORE_UTIL_PARALLEL_H_

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <thread>
#include <vector>

namespace safeshard {

template <typename Fn>
void ParallelFor(size_t n, int threads, Fn&& fn) {
  const size_t t = std::min<size_t>(n, static_cast<size_t>(std::max(1, threads)));
  if (t <= 1) {
    for (size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::atomic<size_t> next{0};
  std::vector<std::thread> pool;
  pool.reserve(t);
  for (size_t k = 0; k < t; ++k) {
    pool.emplace_back([&] {
      for (size_t i = next++; i < n; i = next++) fn(i);
    });
  }
  for (std::thread& th : pool) th.join();
}

}  // namespace safeshard

#endif  // SAFESHARD_CORE_UTIL_PARALLEL_H_
