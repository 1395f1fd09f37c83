// Batched positional I/O: io_uring through raw syscalls (no liburing), or a
// persistent pool of threads running preadv/pwritev.
//
// io_uring: one ring per calling thread (thread_local), so concurrent callers
// share nothing and take no lock.  A batch flows through the ring as a sliding
// window of at most kRingEntries requests (IORING_OP_READV/WRITEV at explicit
// offsets): whenever requests complete, the next ops, and the remainders of
// short transfers, take their places.  The completion queue is twice the
// submission queue, so with at most kRingEntries requests out it never
// overflows.  Whether io_uring works is probed once (seccomp and
// kernel.io_uring_disabled make io_uring_setup fail with EPERM or ENOSYS).
//
// Threads: like copy.cpp, the caller publishes a batch for up to (ops - 1)
// workers and then claims ops itself from an atomic counter, so a batch never
// waits for a worker to start.
#include "io.h"
#include "work_pool.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace kvtier {
namespace {

constexpr std::size_t kMaxIov = 1024;  // UIO_MAXIOV: longer iovec lists move in pieces
constexpr unsigned kRingEntries = 128;
constexpr unsigned kMaxStalls = 1000;  // io_uring_enter EAGAINs in a row before giving up
constexpr std::size_t kAlign = 4096;

// Records n bytes moved by op; returns true if it has bytes left to move.
bool advance(IoOp& op, std::size_t n) {
  if (n == 0) return false;  // end of file (read), or no progress (write)
  op.done += static_cast<std::int64_t>(n);
  while (op.iovcnt > 0 && n >= op.iov->iov_len) {  // also skips empty iovecs
    n -= op.iov->iov_len;
    ++op.iov;
    --op.iovcnt;
  }
  if (op.iovcnt > 0) {
    op.iov->iov_base = static_cast<char*>(op.iov->iov_base) + n;
    op.iov->iov_len -= n;
  }
  return op.iovcnt > 0;
}

// How many of op's remaining iovecs its next preadv/pwritev or request takes.
int iov_count(const IoOp& op) { return static_cast<int>(std::min(op.iovcnt, kMaxIov)); }

void run_sync(bool write, IoOp& op) noexcept {
  for (;;) {
    const off_t at = static_cast<off_t>(op.offset + op.done);
    const ssize_t n = write ? pwritev(op.fd, op.iov, iov_count(op), at)
                            : preadv(op.fd, op.iov, iov_count(op), at);
    if (n < 0) {
      if (errno == EINTR) continue;
      op.result = -errno;
      return;
    }
    if (!advance(op, static_cast<std::size_t>(n))) {
      op.result = op.done;
      return;
    }
  }
}

// --- fork ----------------------------------------------------------------------------

// After fork() the child has none of the parent's pool workers, and its copies
// of the parent's rings share their queues with the parent: each is replaced
// on first use in the child (see ring_for_this_thread and get_pool).
std::atomic<unsigned> g_fork_generation{0};
std::mutex g_pool_mu;

void atfork_prepare() { g_pool_mu.lock(); }
void atfork_parent() { g_pool_mu.unlock(); }
void atfork_child();  // below, with the pool

void register_atfork() {
  static std::once_flag once;
  std::call_once(once, [] { pthread_atfork(atfork_prepare, atfork_parent, atfork_child); });
}

// --- io_uring ------------------------------------------------------------------------

int sys_io_uring_setup(unsigned entries, io_uring_params* p) {
  return static_cast<int>(syscall(__NR_io_uring_setup, entries, p));
}

// Returns the number of requests submitted, or -errno.
int sys_io_uring_enter(int fd, unsigned to_submit, unsigned min_complete, unsigned flags) {
  const long r = syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, nullptr, 0);
  return r < 0 ? -errno : static_cast<int>(r);
}

class Ring {
 public:
  // A ring with kRingEntries submission slots, or nullptr with *err (errno)
  // and *step (the call that failed) set.
  static std::unique_ptr<Ring> create(int* err, const char** step) noexcept {
    std::unique_ptr<Ring> ring(new (std::nothrow) Ring);
    if (!ring) {
      *err = ENOMEM, *step = "io_uring_setup";
      return nullptr;
    }
    *err = ring->setup(step);
    if (*err != 0) return nullptr;
    return ring;
  }

  ~Ring() {
    if (sqes_ != MAP_FAILED) munmap(sqes_, sqes_bytes_);
    if (cq_map_ != MAP_FAILED && cq_map_ != sq_map_) munmap(cq_map_, cq_bytes_);
    if (sq_map_ != MAP_FAILED) munmap(sq_map_, sq_bytes_);
    if (fd_ >= 0) close(fd_);
  }

  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;

  unsigned fork_generation() const { return generation_; }
  bool broken() const { return broken_; }

  // One no-op round trip: 0, or the errno of io_uring_enter.
  int nop() noexcept {
    io_uring_sqe& sqe = next_sqe();
    sqe.opcode = IORING_OP_NOP;
    publish();
    int r;
    while ((r = sys_io_uring_enter(fd_, 1, 1, IORING_ENTER_GETEVENTS)) == -EINTR) {
    }
    if (r < 0) {
      --sq_tail_local_;  // take the request back
      publish();
      return -r;
    }
    while (reap([](std::uint64_t, int) {}) == 0) {
      while ((r = sys_io_uring_enter(fd_, 0, 1, IORING_ENTER_GETEVENTS)) == -EINTR) {
      }
      if (r < 0) return -r;
    }
    return 0;
  }

  void run(bool write, IoOp* ops, std::size_t n, IoDone done, void* ctx) noexcept {
    const auto opcode = static_cast<std::uint8_t>(write ? IORING_OP_WRITEV : IORING_OP_READV);
    std::size_t next = 0;   // ops[next..n) have not started
    unsigned queued = 0;    // requests in the submission queue, not yet taken by the kernel
    unsigned inflight = 0;  // requests taken by the kernel, not yet completed
    bool failed = false;    // io_uring_enter failed: run the rest synchronously
    unsigned stalls = 0;    // EAGAIN/EBUSY from io_uring_enter in a row with nothing out
    again_.clear();         // ops to continue after a short transfer or EINTR/EAGAIN
    for (;;) {
      while ((failed || queued + inflight < sq_entries_) && (!again_.empty() || next < n)) {
        std::size_t i = next;
        if (!again_.empty()) {
          i = again_.back();
          again_.pop_back();
        } else {
          ++next;
        }
        IoOp& op = ops[i];
        if (failed) {
          run_sync(write, op);
          if (done) done(ctx, i);
          continue;
        }
        io_uring_sqe& sqe = next_sqe();
        sqe.opcode = opcode;
        sqe.fd = op.fd;
        sqe.addr = reinterpret_cast<std::uintptr_t>(op.iov);
        sqe.len = static_cast<unsigned>(iov_count(op));
        sqe.off = static_cast<std::uint64_t>(op.offset + op.done);
        sqe.user_data = i;
        ++queued;
      }
      if (queued + inflight == 0) return;
      if (!failed) {
        publish();
        const int r = sys_io_uring_enter(fd_, queued, 1, IORING_ENTER_GETEVENTS);
        const bool short_of_resources = r == -EAGAIN || r == -EBUSY;
        if (r >= 0) {
          queued -= static_cast<unsigned>(r);
          inflight += static_cast<unsigned>(r);
          stalls = 0;
        } else if (short_of_resources && (inflight > 0 || ++stalls < kMaxStalls)) {
          if (inflight == 0) sched_yield();  // reap (below), then retry
        } else if (r != -EINTR) {
          // Out of resources for long, or an error not expected with a valid
          // ring (e.g. its fd was closed behind our back).  Take back what the
          // kernel has not taken and run it synchronously; then wait for the
          // requests out before returning.
          failed = true;
          broken_ = !short_of_resources;
          for (; queued > 0; --queued) {
            again_.push_back(sqes_[--sq_tail_local_ & sq_mask_].user_data);
          }
          publish();
        }
      } else if (sys_io_uring_enter(fd_, 0, 1, IORING_ENTER_GETEVENTS) < 0) {
        // Cannot wait through the fd: the kernel still posts completions to
        // the mapped queue (also once the ring's fd is closed), so poll it.
        const timespec ms{0, 1000000};
        nanosleep(&ms, nullptr);
      }
      inflight -= reap([&](std::uint64_t i, int res) {
        IoOp& op = ops[i];
        if (res == -EINTR || res == -EAGAIN) {
          again_.push_back(i);
        } else if (res < 0) {
          op.result = res;
          if (done) done(ctx, i);
        } else if (advance(op, static_cast<std::size_t>(res))) {
          again_.push_back(i);
        } else {
          op.result = op.done;
          if (done) done(ctx, i);
        }
      });
    }
  }

 private:
  Ring() = default;

  // Returns 0 or an errno (with *step set).
  int setup(const char** step) noexcept {
    // A plain ring: SINGLE_ISSUER | DEFER_TASKRUN (Linux 6.1+) measured no
    // faster here (raw_io_bench, 64 KiB and 1 MiB pages).
    io_uring_params p{};
    fd_ = sys_io_uring_setup(kRingEntries, &p);
    if (fd_ < 0) {
      *step = "io_uring_setup";
      return errno;
    }
    *step = "mmap";
    sq_bytes_ = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    cq_bytes_ = p.cq_off.cqes + p.cq_entries * sizeof(io_uring_cqe);
    const bool single = (p.features & IORING_FEAT_SINGLE_MMAP) != 0;
    if (single) sq_bytes_ = cq_bytes_ = std::max(sq_bytes_, cq_bytes_);
    const int prot = PROT_READ | PROT_WRITE, share = MAP_SHARED | MAP_POPULATE;
    sq_map_ = mmap(nullptr, sq_bytes_, prot, share, fd_, IORING_OFF_SQ_RING);
    if (sq_map_ == MAP_FAILED) return errno;
    cq_map_ = single ? sq_map_ : mmap(nullptr, cq_bytes_, prot, share, fd_, IORING_OFF_CQ_RING);
    if (cq_map_ == MAP_FAILED) return errno;
    sqes_bytes_ = p.sq_entries * sizeof(io_uring_sqe);
    void* sqes = mmap(nullptr, sqes_bytes_, prot, share, fd_, IORING_OFF_SQES);
    if (sqes == MAP_FAILED) return errno;
    sqes_ = static_cast<io_uring_sqe*>(sqes);

    auto* sq = static_cast<char*>(sq_map_);
    sq_tail_ = reinterpret_cast<unsigned*>(sq + p.sq_off.tail);
    sq_mask_ = *reinterpret_cast<unsigned*>(sq + p.sq_off.ring_mask);
    sq_entries_ = p.sq_entries;
    auto* array = reinterpret_cast<unsigned*>(sq + p.sq_off.array);
    for (unsigned i = 0; i < sq_entries_; ++i) array[i] = i;  // slot i holds SQE i, always
    sq_tail_local_ = *sq_tail_;
    auto* cq = static_cast<char*>(cq_map_);
    cq_head_ = reinterpret_cast<unsigned*>(cq + p.cq_off.head);
    cq_tail_ = reinterpret_cast<unsigned*>(cq + p.cq_off.tail);
    cq_mask_ = *reinterpret_cast<unsigned*>(cq + p.cq_off.ring_mask);
    cqes_ = reinterpret_cast<io_uring_cqe*>(cq + p.cq_off.cqes);
    generation_ = g_fork_generation.load(std::memory_order_relaxed);
    try {
      again_.reserve(sq_entries_);  // holds only ops out of the ring: never more
    } catch (...) {
      return ENOMEM;
    }
    return 0;
  }

  // The next free submission slot, zeroed (the caller checked there is one).
  io_uring_sqe& next_sqe() {
    io_uring_sqe& sqe = sqes_[sq_tail_local_++ & sq_mask_];
    std::memset(&sqe, 0, sizeof sqe);
    return sqe;
  }

  // Makes the slots filled so far visible to the kernel.
  void publish() { __atomic_store_n(sq_tail_, sq_tail_local_, __ATOMIC_RELEASE); }

  // Passes each posted completion to done(user_data, res); returns how many.
  template <class Done>
  unsigned reap(Done&& done) {
    unsigned head = *cq_head_;  // only this thread moves the head
    const unsigned tail = __atomic_load_n(cq_tail_, __ATOMIC_ACQUIRE);
    const unsigned count = tail - head;
    for (; head != tail; ++head) {
      const io_uring_cqe& cqe = cqes_[head & cq_mask_];
      done(cqe.user_data, cqe.res);
    }
    __atomic_store_n(cq_head_, head, __ATOMIC_RELEASE);
    return count;
  }

  int fd_ = -1;
  void* sq_map_ = MAP_FAILED;
  void* cq_map_ = MAP_FAILED;
  std::size_t sq_bytes_ = 0, cq_bytes_ = 0, sqes_bytes_ = 0;
  io_uring_sqe* sqes_ = nullptr;
  unsigned* sq_tail_ = nullptr;
  unsigned sq_tail_local_ = 0, sq_mask_ = 0, sq_entries_ = 0;
  unsigned *cq_head_ = nullptr, *cq_tail_ = nullptr;
  unsigned cq_mask_ = 0;
  io_uring_cqe* cqes_ = nullptr;
  std::vector<std::size_t> again_;  // ops out of the ring: never more than sq_entries_
  unsigned generation_ = 0;
  bool broken_ = false;
};

// This thread's ring.  A broken ring (io_uring_enter failed, see Ring::run)
// is leaked, not destroyed: the kernel may still complete requests into it.
struct ThreadRing {
  std::unique_ptr<Ring> ring;
  ~ThreadRing() {
    if (ring && ring->broken()) ring.release();
  }
};
thread_local ThreadRing t_ring;

int g_uring_errno = 0;
const char* g_uring_step = nullptr;

// Whether io_uring works here: probed once, on this thread's future ring.
void probe_io_uring() {
  static std::once_flag once;
  std::call_once(once, [] {
    register_atfork();
    int err = 0;
    const char* step = nullptr;
    auto ring = Ring::create(&err, &step);
    if (ring && (err = ring->nop()) != 0) step = "io_uring_enter";
    g_uring_errno = err;
    g_uring_step = step;
    if (err == 0 && !t_ring.ring) t_ring.ring = std::move(ring);
  });
}

// This thread's ring, created on first use (or after fork), or nullptr if
// that fails now although the probe worked (e.g. out of memory).
Ring* ring_for_this_thread() noexcept {
  auto& ring = t_ring.ring;
  if (ring && ring->broken()) ring.release();  // leaked, see ThreadRing
  if (ring && ring->fork_generation() != g_fork_generation.load(std::memory_order_relaxed)) {
    ring.reset();  // the parent's ring, inherited: close this process's copy
  }
  if (!ring) {
    int err;
    const char* step;
    ring = Ring::create(&err, &step);
  }
  return ring.get();
}

// --- threads -------------------------------------------------------------------------

struct Batch {
  bool write;
  IoOp* ops;
  IoDone done;
  void* ctx;
  std::size_t n;
  std::atomic<std::size_t> next{0};
  std::size_t seats = 0;  // workers that may still join   (guarded by the pool)
  int active = 0;         // workers that joined, not done (guarded by the pool)

  void work() noexcept {
    for (std::size_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < n;) {
      run_sync(write, ops[i]);
      if (done) done(ctx, i);
    }
  }
};

using Pool = WorkPool<Batch>;

std::size_t default_threads() {
  std::size_t cpus = 0;
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) cpus = static_cast<std::size_t>(CPU_COUNT(&set));
  if (cpus == 0) cpus = std::thread::hardware_concurrency();
  return std::min<std::size_t>(8, std::max<std::size_t>(2, cpus));
}

std::atomic<std::size_t> g_threads{0};  // 0: not set, use default_threads()
std::atomic<IoEngine> g_engine{IoEngine::kAuto};

// Created on the first threaded batch and replaced (lazily) when the thread
// count changes.  Its holder is deliberately leaked: destroying it at process
// exit would join threads during static destruction.
auto* const g_pool = new std::shared_ptr<Pool>();

void atfork_child() {
  new std::shared_ptr<Pool>(std::move(*g_pool));  // the parent's pool: leaked on purpose
  g_fork_generation.fetch_add(1, std::memory_order_relaxed);
  g_pool_mu.unlock();
}

// The pool with `workers` threads, or nullptr if it cannot be created (the
// caller then runs the batch alone).
std::shared_ptr<Pool> get_pool(std::size_t workers) noexcept {
  register_atfork();
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

void run_threads(bool write, IoOp* ops, std::size_t n, IoDone done, void* ctx) noexcept {
  const std::size_t threads = io_threads();
  Batch batch;
  batch.write = write;
  batch.ops = ops;
  batch.done = done;
  batch.ctx = ctx;
  batch.n = n;
  if (threads > 1 && n > 1) {
    if (auto pool = get_pool(threads - 1)) return pool->run(batch, batch.n);
  }
  batch.work();
}

}  // namespace

// --- engine selection ----------------------------------------------------------------

bool parse_io_engine(const char* name, IoEngine* engine) {
  for (IoEngine e : {IoEngine::kAuto, IoEngine::kIoUring, IoEngine::kThreads}) {
    if (std::strcmp(name, io_engine_name(e)) == 0) {
      *engine = e;
      return true;
    }
  }
  return false;
}

const char* io_engine_name(IoEngine engine) {
  switch (engine) {
    case IoEngine::kIoUring:
      return "io_uring";
    case IoEngine::kThreads:
      return "threads";
    default:
      return "auto";
  }
}

int io_uring_error(const char** step) {
  probe_io_uring();
  if (step) *step = g_uring_step;
  return g_uring_errno;
}

IoEngine io_engine() {
  const IoEngine e = g_engine.load(std::memory_order_relaxed);
  if (e != IoEngine::kAuto) return e;
  return io_uring_error(nullptr) == 0 ? IoEngine::kIoUring : IoEngine::kThreads;
}

int set_io_engine(IoEngine engine) {
  if (engine == IoEngine::kIoUring) {
    if (const int err = io_uring_error(nullptr)) return err;
  }
  g_engine.store(engine, std::memory_order_relaxed);
  return 0;
}

std::size_t io_threads() {
  static const std::size_t fallback = default_threads();  // one sched_getaffinity call
  const std::size_t n = g_threads.load(std::memory_order_relaxed);
  return n ? n : fallback;
}

void set_io_threads(std::size_t n) {
  g_threads.store(n, std::memory_order_relaxed);
  // Drop a pool of the wrong size now rather than at the next batch.
  std::shared_ptr<Pool> stale;
  std::lock_guard<std::mutex> lock(g_pool_mu);
  if (*g_pool && (*g_pool)->workers() != io_threads() - 1) stale = std::move(*g_pool);
}

// --- batches -------------------------------------------------------------------------

void io_run(bool write, IoOp* ops, std::size_t n, IoDone done, void* ctx) noexcept {
  if (n == 0) return;
  if (io_engine() == IoEngine::kIoUring) {
    // A ring that cannot be created now (the probe worked) degrades to threads.
    if (Ring* ring = ring_for_this_thread()) return ring->run(write, ops, n, done, ctx);
  }
  run_threads(write, ops, n, done, ctx);
}

double raw_io_bench(const char* path, std::size_t page_bytes, std::size_t batch,
                    std::size_t count, bool write, RawIoBenchError* error) noexcept {
  using Stage = RawIoBenchError::Stage;
  *error = RawIoBenchError{};
  auto fail = [error](Stage stage, int err) {
    error->stage = stage;
    error->err = err;
    return -1.0;
  };
  const int flags = (write ? O_RDWR | O_CREAT : O_RDONLY) | O_CLOEXEC;
  int fd = open(path, flags | O_DIRECT, 0600);
  if (fd < 0 && errno == EINVAL) fd = open(path, flags, 0600);  // no O_DIRECT (old tmpfs)
  if (fd < 0) return fail(Stage::kOpen, errno);
  const std::unique_ptr<int, void (*)(int*)> closer(&fd, [](int* f) { close(*f); });
  if (write && ftruncate(fd, static_cast<off_t>(page_bytes * count)) != 0) {
    return fail(Stage::kTruncate, errno);
  }

  void* block = nullptr;
  if (const int err = posix_memalign(&block, kAlign, page_bytes * batch)) {
    return fail(Stage::kAlloc, err);
  }
  const std::unique_ptr<void, void (*)(void*)> owner(block, free);
  std::memset(block, 0xA5, page_bytes * batch);  // non-zero: no zero-page shortcut anywhere
  std::vector<iovec> iov;
  std::vector<IoOp> ops;
  try {
    iov.resize(batch);
    ops.resize(batch);
  } catch (...) {
    return fail(Stage::kAlloc, ENOMEM);
  }

  const auto start = std::chrono::steady_clock::now();
  for (std::size_t first = 0; first < count; first += batch) {
    const std::size_t m = std::min(batch, count - first);
    for (std::size_t j = 0; j < m; ++j) {
      iov[j] = {static_cast<char*>(block) + j * page_bytes, page_bytes};
      ops[j] = IoOp{};
      ops[j].fd = fd;
      ops[j].offset = static_cast<std::int64_t>((first + j) * page_bytes);
      ops[j].iov = &iov[j];
      ops[j].iovcnt = 1;
    }
    io_run(write, ops.data(), m);
    for (std::size_t j = 0; j < m; ++j) {
      if (ops[j].result == static_cast<std::int64_t>(page_bytes)) continue;
      error->offset = ops[j].offset;
      if (ops[j].result < 0) return fail(Stage::kTransfer, static_cast<int>(-ops[j].result));
      error->got = ops[j].result;
      return fail(Stage::kShort, 0);
    }
  }
  const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
  return elapsed.count();
}

}  // namespace kvtier
