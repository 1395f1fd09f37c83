// Batched positional file I/O for the disk tier: many preadv/pwritev calls at
// once, on io_uring when the kernel allows it, else on a persistent thread pool.
// Pure C++, no Python: io_run() and raw_io_bench() run without the GIL.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>

namespace kvtier {

// One positional vectored transfer: preadv/pwritev(fd, iov, iovcnt, offset),
// continued until every byte has moved (a read stops early at end of file).
struct IoOp {
  int fd = -1;
  std::int64_t offset = 0;
  iovec* iov = nullptr;  // advanced in place as bytes move: the caller's array is consumed
  std::size_t iovcnt = 0;
  std::int64_t done = 0;    // bytes moved so far
  std::int64_t result = 0;  // set by io_run: bytes moved, or -errno if the op failed
};

// Runs ops[0..n) concurrently on the current engine and fills in each result.
// EINTR is retried and short transfers are continued; an error, even after
// some bytes moved, makes result -errno.  Never throws.
//
// done, if given, is called as done(ctx, i) once op i's result is final, on
// whichever thread completed it (the caller's, or a pool worker's), while the
// other ops may still be in flight: work on a finished op's bytes (a checksum)
// overlaps the rest of the batch.  It must not throw.  Note that the op's iov
// array has been consumed by then.
using IoDone = void (*)(void* ctx, std::size_t i) noexcept;
void io_run(bool write, IoOp* ops, std::size_t n, IoDone done = nullptr,
            void* ctx = nullptr) noexcept;

enum class IoEngine { kAuto, kIoUring, kThreads };

// "auto", "io_uring" or "threads"; false for anything else.
bool parse_io_engine(const char* name, IoEngine* engine);
const char* io_engine_name(IoEngine engine);

// The engine io_run uses now: kIoUring or kThreads (auto resolved).  The first
// call that needs to know probes io_uring once (setup, a no-op round trip).
IoEngine io_engine();

// Why io_uring cannot be used here: 0 if it can, else the errno of the failed
// step, named in *step ("io_uring_setup", "mmap" or "io_uring_enter").
int io_uring_error(const char** step);

// Selects the engine.  Returns 0, or (asking for kIoUring where it does not
// work) io_uring_error()'s errno, leaving the engine unchanged.
int set_io_engine(IoEngine engine);

// Threads (caller included) that share a batch on the threads engine (>= 1).
std::size_t io_threads();
// 0 restores the default, min(8, max(2, CPUs available to this process)).
void set_io_threads(std::size_t n);

// What failed in raw_io_bench.
struct RawIoBenchError {
  enum Stage { kNone, kOpen, kTruncate, kAlloc, kTransfer, kShort } stage = kNone;
  int err = 0;              // errno (kOpen, kTruncate, kAlloc, kTransfer)
  std::int64_t offset = 0;  // file offset of the failed page (kTransfer, kShort)
  std::int64_t got = 0;     // bytes moved by the short transfer (kShort)
};

// The raw O_DIRECT ceiling: moves count pages of page_bytes (a multiple of
// 4096) at offsets k * page_bytes of the file at path, batch pages per io_run
// call, from/into batch 4096-aligned buffers.  A write creates the file (0600)
// and sizes it first.  The file is opened with O_DIRECT, or buffered where
// O_DIRECT is refused with EINVAL (e.g. tmpfs before Linux 6.6).  Returns the
// seconds the transfers took (steady clock; opening and allocation not
// included), or a negative value with *error filled in.
double raw_io_bench(const char* path, std::size_t page_bytes, std::size_t batch,
                    std::size_t count, bool write, RawIoBenchError* error) noexcept;

}  // namespace kvtier
