"""Byte-level hot paths (page copy, checksum, allocation, file I/O), selectable backend.

The backend is chosen once, at import, from the ``KVTIER_NATIVE`` environment variable:

* ``auto`` (default, also when unset or empty): the compiled extension ``kvtier._native``
  if it imports, else the pure-Python ``kvtier._fallback`` (why: ``fallback_reason``);
* ``native``: the extension, or ImportError if it is missing;
* ``python``: the pure-Python implementation.

Both backends have the same signatures and semantics, and raise the same errors with the
same messages (see kvtier/_fallback.py for the two small exceptions).  The functions
below are the backend's own (no wrapper), so calling them costs nothing extra.

Disk I/O for the NVMe tier: ``io_batch(write, fds, offsets, buffers)`` runs op ``i`` as one
positional vectored transfer, ``pwritev(fds[i], buffers[i], offsets[i])`` if ``write`` is
true, else ``preadv``, with all ops in flight at once and the GIL released.

* ``fds``: ints; ``offsets``: byte offsets (ints >= 0); ``buffers``: one sequence of buffers
  (the op's iovec list) per op; all three of the same length, else ValueError.  A buffer is
  any C-contiguous host buffer (bytes-like: bytearray, mmap, numpy array...), writable for
  reads, read as raw bytes whatever its dtype or shape.  With ``O_DIRECT``, addresses, sizes
  and offsets must be multiples of ``DIRECT_IO_ALIGNMENT`` (mmap memory is page-aligned).
* Returns a list with, per op, the bytes moved (fewer than its buffers hold when a read
  reaches end of file) or ``-errno`` if the op failed, also after moving some bytes.
  EINTR is retried and short transfers are continued.  I/O errors never raise; bad
  arguments do, with the same errors as copy() (e.g. TypeError for a read-only buffer).
* ``checksum_ranges`` (optional, one entry per op: a ``(start, length)`` pair or None): then
  the result is ``(results, checksums)``, where ``checksums[i]`` is the XXH3-64 of bytes
  ``[start, start + length)`` of op i's transfer (its buffers laid end to end), or None where
  no range was given or the op moved fewer than ``start + length`` bytes.  The native engine
  hashes each op on the thread that completes it while the rest of the batch is in flight,
  so verifying a read overlaps the reads still out (the disk tier checks pages this way).
* ``copy_out`` (optional, one entry per op: a sequence of ``(start, buffer)`` pairs, or None):
  bytes ``[start, start + len(buffer))`` of op i's transfer are copied into each writable
  buffer once op i is done (after its checksum), where it moved that many bytes; others are
  left alone.  The disk tier uses it to land pages that bounced through aligned scratch memory
  in the caller's buffer, and to promote pages into the host tier, during the batch.
* Engines: ``"io_uring"`` (native only; raw syscalls, one ring per calling thread) where the
  kernel allows it, else ``"threads"`` (a pool of ``io_threads()`` threads, caller included,
  running preadv/pwritev).  ``io_engine()`` says which one is live; ``set_io_engine()`` or
  ``KVTIER_IO_ENGINE`` (``auto``, ``io_uring``, ``threads``; read by the first I/O call)
  chooses, and asking for io_uring where it cannot work raises RuntimeError saying why.

``raw_io_bench(path, page_bytes, batch, count, write)`` is the raw ceiling ``kvtier bench``
compares with when fio is absent: count pages of page_bytes (a multiple of 4096) at offsets
``k * page_bytes`` of path, batch pages per io_batch call on the same engine, from/into
aligned buffers; O_DIRECT unless the file system refuses it (EINVAL, e.g. tmpfs before
Linux 6.6), where it falls back to buffered I/O.  A write creates the file (0600) and sizes
it; a read needs it to exist and be large enough.  Returns the seconds the transfers took
(not opening or allocation); OSError if a transfer fails or comes up short.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

__all__ = [
    "DIRECT_IO_ALIGNMENT",
    "address",
    "alloc_bytearray",
    "backend",
    "checksum",
    "copy",
    "copy_threads",
    "copy_threshold",
    "fallback_reason",
    "io_batch",
    "io_engine",
    "io_threads",
    "paged_copy",
    "raw_io_bench",
    "set_copy_threads",
    "set_copy_threshold",
    "set_io_engine",
    "set_io_threads",
    "shuffle",
    "unshuffle",
]

_ENV = "KVTIER_NATIVE"
_CHOICES = ("auto", "native", "python")


def _select() -> tuple[ModuleType, str, str | None]:
    """(implementation module, backend name, reason for falling back or None)."""
    raw = os.environ.get(_ENV, "")
    choice = raw.strip().lower() or "auto"
    if choice not in _CHOICES:
        raise ValueError(f"{_ENV}={raw!r} is not valid; use one of: {', '.join(_CHOICES)}")
    if choice == "python":
        from . import _fallback

        return _fallback, "python", None
    try:
        from . import _native  # type: ignore[attr-defined]  # compiled, no stub
    except ImportError as exc:
        if choice == "native":
            raise ImportError(
                f"{_ENV}=native, but the compiled extension kvtier._native could not be "
                f"imported ({exc}). Reinstall kvtier where a C++17 compiler is available "
                f"(pip install .), or set {_ENV}=auto or {_ENV}=python."
            ) from exc
        from . import _fallback

        return _fallback, "python", f"kvtier._native could not be imported: {exc}"
    return _native, "native", None


_impl, _backend, _reason = _select()
backend: str = _backend  # "native" or "python"
fallback_reason: str | None = _reason  # why KVTIER_NATIVE=auto fell back to Python, else None

# Docstrings come from the implementation; both backends document these alike.
copy: Callable[[Any, Any], None] = _impl.copy
"""Copy the bytes of buffer src into the writable buffer dst of the same size."""
checksum: Callable[[Any], int] = _impl.checksum
"""XXH3-64 (seed 0) of the buffer's bytes, as xxhash.xxh3_64_intdigest."""
alloc_bytearray: Callable[[int], bytearray] = _impl.alloc_bytearray
"""A bytearray of n bytes whose contents are not initialised."""
address: Callable[[Any], int] = _impl.address
"""Address of the first byte of the C-contiguous buffer buf."""
set_copy_threads: Callable[[int], None] = _impl.set_copy_threads
"""Use n threads (caller included) for large copies; 0 restores the default."""
copy_threads: Callable[[], int] = _impl.copy_threads
"""Number of threads (caller included) that share a large copy."""
set_copy_threshold: Callable[[int], None] = _impl.set_copy_threshold
"""Split copies of at least nbytes bytes across the copy threads."""
copy_threshold: Callable[[], int] = _impl.copy_threshold
"""Size in bytes from which a copy is split across the copy threads."""

# Disk I/O (see the module docstring).
DIRECT_IO_ALIGNMENT = 4096
"""Alignment in bytes of O_DIRECT buffer addresses, sizes and file offsets."""
io_batch: Callable[..., Any] = _impl.io_batch
"""Run op i as preadv/pwritev(fds[i], buffers[i], offsets[i]), all at once; bytes or -errno."""
io_engine: Callable[[], str] = _impl.io_engine
"""The engine io_batch uses now: 'io_uring' or 'threads'."""
set_io_engine: Callable[[str], None] = _impl.set_io_engine
"""Make io_batch use 'io_uring', 'threads' or 'auto' (io_uring where it works)."""
set_io_threads: Callable[[int], None] = _impl.set_io_threads
"""Run threads-engine batches on n threads (caller included); 0 restores the default."""
io_threads: Callable[[], int] = _impl.io_threads
"""Number of threads (caller included) that share a threads-engine batch."""
raw_io_bench: Callable[[Any, int, int, int, Any], float] = _impl.raw_io_bench
"""Seconds to move count pages of page_bytes to/from path, batch per io_batch (O_DIRECT)."""

# Codec filter (see kvtier/codec.py): element_bytes 2 or 4 split byte planes, 1 bit planes.
shuffle: Callable[[Any, Any, int], None] = _impl.shuffle
"""Split src into byte planes (bit planes for 1-byte elements) in dst, tail unchanged."""
unshuffle: Callable[[Any, Any, int], None] = _impl.unshuffle
"""Reassemble elements from the byte planes (bit planes for 1-byte elements) of src."""

# Paged gather/scatter, the CPU reference of the CUDA kernels; use it through kvtier.layout.
paged_copy: Callable[..., None] = _impl.paged_copy
"""Gather engine blocks into pages (or scatter back) from int64 tables at host addresses."""
