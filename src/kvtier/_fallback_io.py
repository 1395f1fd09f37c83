"""Pure-Python twin of the native batched file I/O (csrc/io.cpp): ``io_batch``, its engine and
thread settings, and ``raw_io_bench``; re-exported by ``kvtier._fallback``. One engine here,
"threads": a thread pool running os.preadv/os.pwritev, which release the GIL."""

from __future__ import annotations

import errno
import mmap
import operator
import os
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any

import xxhash

from ._fallback_args import _byte_view, _nonnegative_index, _sequence

# --- batched file I/O (csrc/io.cpp) --------------------------------------------------

_IOV_MAX = 1024  # Linux UIO_MAXIOV: longer iovec lists move in pieces
_IO_ENGINE_ENV = "KVTIER_IO_ENGINE"
_IO_ENGINES = ("auto", "io_uring", "threads")
_io_engine_set = False  # KVTIER_IO_ENGINE applied, or set_io_engine() called
_io_threads = 0  # 0: default
_io_pool_lock = threading.Lock()
_io_pool: ThreadPoolExecutor | None = None
_io_pool_workers = 0
_io_atfork_registered = False


def _default_io_threads() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return min(8, max(2, cpus))


def _apply_io_engine_env() -> None:
    """KVTIER_IO_ENGINE, applied by the first I/O call unless set_io_engine() came first."""
    global _io_engine_set
    if _io_engine_set:
        return
    raw = os.environ.get(_IO_ENGINE_ENV, "")
    choice = raw.strip().lower() or "auto"
    if choice not in _IO_ENGINES:
        raise ValueError(
            f"{_IO_ENGINE_ENV}={raw!r} is not valid; use one of: auto, io_uring, threads"
        )
    if choice == "io_uring":
        raise RuntimeError(f"{_IO_ENGINE_ENV}=io_uring, but io_uring needs the native backend")
    _io_engine_set = True


def _fd_arg(value: Any, i: int) -> int:
    fd = operator.index(value)
    if not -(2**31) <= fd < 2**31:
        raise OverflowError(f"io_batch(): fds[{i}] is out of range for a file descriptor, got {fd}")
    return fd


def _run_op(write: bool, fd: int, offset: int, views: list[memoryview]) -> int:
    """One positional vectored transfer, continued until done: bytes moved or -errno."""
    done = 0
    while True:
        chunk, at = views[:_IOV_MAX], offset + done
        try:
            n = os.pwritev(fd, chunk, at) if write else os.preadv(fd, chunk, at)
        except OSError as exc:  # EINTR is retried by os itself (PEP 475)
            return -(exc.errno or errno.EIO)
        if n == 0:  # end of file (read), or no progress (write)
            return done
        done += n
        k = 0
        while k < len(views) and n >= views[k].nbytes:  # also skips empty buffers
            n -= views[k].nbytes
            k += 1
        views = views[k:]
        if not views:
            return done
        views[0] = views[0][n:]


def _forget_io_pool() -> None:
    """In a forked child: the parent's pool threads do not exist here."""
    global _io_pool, _io_pool_lock
    _io_pool, _io_pool_lock = None, threading.Lock()


def _get_io_pool(workers: int) -> ThreadPoolExecutor:
    global _io_pool, _io_pool_workers, _io_atfork_registered
    with _io_pool_lock:
        if not _io_atfork_registered:
            os.register_at_fork(after_in_child=_forget_io_pool)
            _io_atfork_registered = True
        if _io_pool is None or _io_pool_workers != workers:
            if _io_pool is not None:
                _io_pool.shutdown(wait=False)
            _io_pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kvtier-io")
            _io_pool_workers = workers
        return _io_pool


def _checksum_ranges(ranges: Any, n: int) -> list[tuple[int, int] | None] | None:
    if ranges is None:
        return None
    ranges = _sequence(ranges, "io_batch", "checksum_ranges", "(start, length) pairs or None")
    if len(ranges) != n:
        raise ValueError(
            f"io_batch(): checksum_ranges must have one entry per op, got {len(ranges)} for {n} ops")
    out: list[tuple[int, int] | None] = []
    for i, pair in enumerate(ranges):
        if pair is None:
            out.append(None)
            continue
        arg = f"checksum_ranges[{i}]"
        pair = _sequence(pair, "io_batch", arg, "int")
        if len(pair) != 2:
            raise ValueError(f"io_batch(): {arg} must be a (start, length) pair")
        out.append((_nonnegative_index(pair[0], "io_batch", arg),
                    _nonnegative_index(pair[1], "io_batch", arg)))
    return out


def _copy_out(copies: Any, n: int, held: list[memoryview]) -> list[list[tuple[int, memoryview]]] | None:
    if copies is None:
        return None
    copies = _sequence(copies, "io_batch", "copy_out", "sequences of (start, buffer) pairs")
    if len(copies) != n:
        raise ValueError(
            f"io_batch(): copy_out must have one entry per op, got {len(copies)} for {n} ops")
    out: list[list[tuple[int, memoryview]]] = []
    for i, entry in enumerate(copies):
        out.append([])
        if entry is None:
            continue
        for j, pair in enumerate(_sequence(entry, "io_batch", f"copy_out[{i}]", "(start, buffer) pairs")):
            arg = f"copy_out[{i}][{j}]"
            pair = _sequence(pair, "io_batch", arg, "(start, buffer)")
            if len(pair) != 2:
                raise ValueError(f"io_batch(): {arg} must be a (start, buffer) pair")
            start = _nonnegative_index(pair[0], "io_batch", arg)
            view = _byte_view(pair[1], True, "io_batch", arg)
            held.append(view)
            out[-1].append((start, view))
    return out


def _copy_views(dst: memoryview, views: list[memoryview], start: int) -> None:
    """Copy bytes [start, start + len(dst)) of the views laid end to end into dst."""
    at = 0
    for view in views:
        if at == dst.nbytes:
            break
        if start >= view.nbytes:
            start -= view.nbytes
            continue
        part = view[start:start + dst.nbytes - at]
        dst[at:at + part.nbytes] = part
        at += part.nbytes
        start = 0


def _checksum_views(views: list[memoryview], start: int, length: int) -> int:
    """XXH3-64 of bytes [start, start + length) of the views laid end to end."""
    state = xxhash.xxh3_64()
    for view in views:
        if length == 0:
            break
        if start >= view.nbytes:
            start -= view.nbytes
            continue
        part = view[start:start + length]
        state.update(part)
        length -= part.nbytes
        start = 0
    return state.intdigest()


def _io_run(write: bool, ops: list[tuple[int, int, list[memoryview]]]) -> list[int]:
    """Runs the ops on io_threads() threads, the caller included (as csrc/io.cpp)."""
    results = [0] * len(ops)
    todo = iter(range(len(ops)))  # shared: each op is taken by one thread

    def drain() -> None:
        for i in todo:
            fd, offset, views = ops[i]
            results[i] = _run_op(write, fd, offset, list(views))

    threads = io_threads()
    helpers = min(len(ops), threads) - 1
    futures: list[Future[None]] = []
    if helpers > 0:
        pool = _get_io_pool(threads - 1)
        try:
            for _ in range(helpers):
                futures.append(pool.submit(drain))
        except RuntimeError:  # shut down by set_io_threads() meanwhile: do without it
            pass
    try:
        drain()
    finally:
        wait_futures(futures)  # the ops' buffers must outlive every transfer
    for future in futures:
        future.result()
    return results


def io_batch(write: Any, fds: Any, offsets: Any, buffers: Any, checksum_ranges: Any = None,
             copy_out: Any = None) -> list[int] | tuple[list[int], list[int | None]]:
    """Run op i as preadv/pwritev(fds[i], buffers[i], offsets[i]), all at once; bytes or -errno.

    With ``checksum_ranges`` (per op a ``(start, length)`` pair or None), returns ``(results,
    checksums)``: XXH3-64 of bytes ``[start, start + length)`` of op i's transfer, or None
    where not asked or not all moved (the native backend hashes each op as it completes).
    With ``copy_out`` (per op a sequence of ``(start, buffer)`` pairs, or None), bytes
    ``[start, start + len(buffer))`` of op i's transfer are then copied into each buffer, where
    it moved that many."""
    _apply_io_engine_env()
    write = bool(write)
    fds = _sequence(fds, "io_batch", "fds", "int")
    offsets = _sequence(offsets, "io_batch", "offsets", "int")
    buffers = _sequence(buffers, "io_batch", "buffers", "buffer sequences")
    n = len(fds)
    if len(offsets) != n or len(buffers) != n:
        raise ValueError(
            "io_batch(): fds, offsets and buffers must have the same length, "
            f"got {n}, {len(offsets)} and {len(buffers)}"
        )
    ops: list[tuple[int, int, list[memoryview]]] = []
    held: list[memoryview] = []
    try:
        for i in range(n):
            fd = _fd_arg(fds[i], i)
            offset = _nonnegative_index(offsets[i], "io_batch", f"offsets[{i}]")
            bufs = _sequence(buffers[i], "io_batch", f"buffers[{i}]", "buffers")
            views = []
            for j, buf in enumerate(bufs):
                # A read fills the buffers: they must be writable.
                views.append(_byte_view(buf, not write, "io_batch", f"buffers[{i}][{j}]"))
                held.append(views[-1])
            ops.append((fd, offset, views))
        ranges = _checksum_ranges(checksum_ranges, n)
        copies = _copy_out(copy_out, n, held)
        results = _io_run(write, ops)
        sums = None if ranges is None else [
            None if r is None or results[i] < r[0] + r[1] else _checksum_views(ops[i][2], *r)
            for i, r in enumerate(ranges)]
        for i, pairs in enumerate(copies or ()):
            for start, dst in pairs:
                if results[i] >= start + dst.nbytes:
                    _copy_views(dst, ops[i][2], start)
        return results if sums is None else (results, sums)
    finally:
        for view in held:
            view.release()


def io_engine() -> str:
    """The engine io_batch uses now: 'io_uring' or 'threads'."""
    _apply_io_engine_env()
    return "threads"


def set_io_engine(name: str) -> None:
    """Make io_batch use 'io_uring', 'threads' or 'auto' (io_uring where it works)."""
    global _io_engine_set
    if not isinstance(name, str):
        raise TypeError(f"set_io_engine(): name must be a str, got '{type(name).__name__}'")
    if name not in _IO_ENGINES:
        raise ValueError(
            f"set_io_engine(): name must be 'auto', 'io_uring' or 'threads', got {name!r}"
        )
    if name == "io_uring":
        raise RuntimeError("set_io_engine(): io_uring needs the native backend")
    _io_engine_set = True


def set_io_threads(n: int) -> None:
    """Run threads-engine batches on n threads (caller included); 0 restores the default."""
    global _io_threads, _io_pool
    _io_threads = _nonnegative_index(n, "set_io_threads", "n")
    # Drop a pool of the wrong size now rather than at the next batch.
    with _io_pool_lock:
        if _io_pool is not None and _io_pool_workers != io_threads() - 1:
            _io_pool.shutdown(wait=False)
            _io_pool = None


def io_threads() -> int:
    """Number of threads (caller included) that share a threads-engine batch."""
    return _io_threads or _default_io_threads()


def raw_io_bench(path: Any, page_bytes: int, batch: int, count: int, write: Any) -> float:
    """Seconds to move count pages of page_bytes to/from path, batch per io_batch (O_DIRECT)."""
    _apply_io_engine_env()
    path = os.fspath(path)
    if b"\0" in os.fsencode(path):
        raise ValueError("embedded null byte")
    page_bytes = _nonnegative_index(page_bytes, "raw_io_bench", "page_bytes")
    batch = _nonnegative_index(batch, "raw_io_bench", "batch")
    count = _nonnegative_index(count, "raw_io_bench", "count")
    write = bool(write)
    if page_bytes == 0 or page_bytes % 4096:
        raise ValueError(
            f"raw_io_bench(): page_bytes must be a positive multiple of 4096, got {page_bytes}"
        )
    if batch == 0:
        raise ValueError("raw_io_bench(): batch must be >= 1, got 0")
    if page_bytes * max(batch, count) > sys.maxsize:
        raise OverflowError(
            "raw_io_bench(): page_bytes * batch and page_bytes * count must not exceed sys.maxsize"
        )
    flags = (os.O_RDWR | os.O_CREAT if write else os.O_RDONLY) | os.O_CLOEXEC
    try:
        fd = os.open(path, flags | os.O_DIRECT, 0o600)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        fd = -1
    if fd < 0:  # no O_DIRECT (old tmpfs)
        fd = os.open(path, flags, 0o600)
    try:
        if write:
            try:
                os.ftruncate(fd, page_bytes * count)
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, path) from None
        return _raw_io_bench_loop(fd, path, page_bytes, batch, count, write)
    finally:
        os.close(fd)


def _raw_io_bench_loop(
    fd: int, path: Any, page_bytes: int, batch: int, count: int, write: bool
) -> float:
    what = "write" if write else "read"
    with mmap.mmap(-1, page_bytes * batch) as block:  # page-aligned
        block[:] = b"\xa5" * len(block)  # non-zero: no zero-page shortcut anywhere
        pages = [memoryview(block)[j * page_bytes : (j + 1) * page_bytes] for j in range(batch)]
        try:
            start = time.perf_counter()
            for first in range(0, count, batch):
                m = min(batch, count - first)
                ops = [(fd, (first + j) * page_bytes, [pages[j]]) for j in range(m)]
                for (_, offset, _), got in zip(ops, _io_run(write, ops)):
                    if got != page_bytes:
                        raise _bench_error(what, offset, got, page_bytes, path)
            return time.perf_counter() - start
        finally:
            for page in pages:
                page.release()


def _bench_error(what: str, offset: int, got: int, page_bytes: int, path: Any) -> OSError:
    """The OSError for a page transfer that failed (got < 0) or came up short."""
    if got < 0:
        message = f"raw_io_bench(): {what} at offset {offset} failed: {os.strerror(-got)}"
        return OSError(-got, message, path)
    message = f"raw_io_bench(): short {what} at offset {offset}: {got} of {page_bytes} bytes"
    return OSError(errno.EIO, message, path)


# -- codec filter (csrc/shuffle.cpp) -------------------------------------------------------------
