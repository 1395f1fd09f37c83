// Parallel copy with a lazily created, persistent thread pool.
//
// A large copy becomes a Job split into chunks.  The caller publishes the job
// for up to (chunks - 1) workers, then claims chunks itself from an atomic
// counter until none are left, so it never waits for a worker to *start*: a
// busy or slow-to-wake pool only means the caller copies more chunks itself.
// It then waits for the workers that did join to finish the chunks they claimed.
#include "copy.h"
#include "work_pool.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace kvtier {
namespace {

constexpr std::size_t kChunkAlign = 4096;

struct Job {
  char* dst;
  const char* src;
  std::size_t n;
  std::size_t stride;   // nominal chunk length; boundaries are then page-aligned
  std::size_t chunks;
  std::atomic<std::size_t> next{0};
  std::size_t seats = 0;  // workers that may still join   (guarded by the pool)
  int active = 0;         // workers that joined, not done (guarded by the pool)

  // Offset where chunk i starts: i * stride rounded up so that dst + offset is
  // 4 KiB-aligned (a page is never shared by two threads), capped at n.
  std::size_t boundary(std::size_t i) const {
    if (i == 0) return 0;
    if (i >= chunks) return n;
    const auto base = reinterpret_cast<std::uintptr_t>(dst);
    const std::uintptr_t end = (base + i * stride + kChunkAlign - 1) & ~(kChunkAlign - 1);
    return std::min<std::size_t>(end - base, n);
  }

  void work() noexcept {
    for (std::size_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < chunks;) {
      const std::size_t begin = boundary(i), end = boundary(i + 1);
      if (end > begin) std::memcpy(dst + begin, src + begin, end - begin);
    }
  }
};

using Pool = WorkPool<Job>;

std::size_t default_threads() {
  std::size_t cpus = 0;
#ifdef __linux__
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) cpus = static_cast<std::size_t>(CPU_COUNT(&set));
#endif
  if (cpus == 0) cpus = std::thread::hardware_concurrency();
  return std::clamp<std::size_t>(cpus, 1, 4);
}

std::atomic<std::size_t> g_threshold{std::size_t{4} << 20};
std::atomic<std::size_t> g_threads{0};  // 0: not set, use default_threads()

// The pool is created on the first large copy and replaced (lazily) when the
// thread count changes.  Its holder is deliberately leaked: destroying it at
// process exit would join threads during static destruction.
std::mutex g_pool_mu;
auto* const g_pool = new std::shared_ptr<Pool>();

// After fork() the child has none of the parent's workers, and the pool's
// mutex may have been copied locked: abandon (leak) the inherited pool.
void atfork_prepare() { g_pool_mu.lock(); }
void atfork_parent() { g_pool_mu.unlock(); }
void atfork_child() {
  new std::shared_ptr<Pool>(std::move(*g_pool));  // leaked on purpose
  g_pool_mu.unlock();
}

// The pool with `workers` threads, or nullptr if it cannot be created (the
// caller then copies alone: a large copy never fails for lack of threads).
std::shared_ptr<Pool> get_pool(std::size_t workers) noexcept {
  static std::once_flag atfork_once;
  std::call_once(atfork_once, [] { pthread_atfork(atfork_prepare, atfork_parent, atfork_child); });
  std::shared_ptr<Pool> stale;  // destroyed (joined) after the lock is dropped
  std::lock_guard<std::mutex> lock(g_pool_mu);
  if (!*g_pool || (*g_pool)->workers() != workers) {
    stale = std::move(*g_pool);
    try {
      *g_pool = std::make_shared<Pool>(workers);
    } catch (...) {  // std::system_error (no threads left) or std::bad_alloc
      return nullptr;
    }
  }
  return *g_pool;
}

}  // namespace

std::size_t copy_threads() {
  static const std::size_t fallback = default_threads();  // one sched_getaffinity call
  const std::size_t n = g_threads.load(std::memory_order_relaxed);
  return n ? n : fallback;
}

void set_copy_threads(std::size_t n) {
  g_threads.store(n, std::memory_order_relaxed);
  // Drop a pool of the wrong size now rather than at the next large copy.
  std::shared_ptr<Pool> stale;
  std::lock_guard<std::mutex> lock(g_pool_mu);
  if (*g_pool && (*g_pool)->workers() != copy_threads() - 1) stale = std::move(*g_pool);
}

std::size_t copy_threshold() { return g_threshold.load(std::memory_order_relaxed); }

void set_copy_threshold(std::size_t nbytes) { g_threshold.store(nbytes, std::memory_order_relaxed); }

void copy_bytes(void* dst, const void* src, std::size_t n) noexcept {
  if (n == 0) return;
  auto* d = static_cast<char*>(dst);
  const auto* s = static_cast<const char*>(src);
  if (d < s + n && s < d + n) {  // overlapping: splitting could read bytes already overwritten
    std::memmove(d, s, n);
    return;
  }
  if (n < copy_threshold()) {
    std::memcpy(d, s, n);
    return;
  }
  const std::size_t threads = copy_threads();
  const std::size_t chunks = std::min(threads, n / kChunkAlign);
  if (chunks < 2) {
    std::memcpy(d, s, n);
    return;
  }
  Job job;
  job.dst = d;
  job.src = s;
  job.n = n;
  job.chunks = chunks;
  job.stride = (n + chunks - 1) / chunks;
  if (auto pool = get_pool(threads - 1)) {
    pool->run(job, job.chunks);
  } else {
    std::memcpy(d, s, n);
  }
}

}  // namespace kvtier
