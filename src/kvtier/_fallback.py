"""Pure-Python twin of the ``kvtier._native`` extension.

Same signatures, semantics and error types/messages as csrc/ (see csrc/buffer.h);
used when the extension is missing or when ``KVTIER_NATIVE=python``.  The copy
thread count and threshold are stored so the API behaves alike, but unused here.
Batched file I/O (io_batch) has one engine here, "threads": a thread pool running
os.preadv/os.pwritev, which release the GIL; io_uring needs the extension.

Two known differences: calls with missing or extra arguments raise TypeError with
Python's wording rather than pybind11's; and buffers are read through memoryview(),
which asks the exporter for a format, so objects that cannot describe theirs (e.g.
numpy datetime64 arrays) raise the exporter's ValueError here but work natively.
"""

from __future__ import annotations

import ctypes
import operator
import os
from typing import Any

import xxhash

from ._fallback_args import _byte_view, _nonnegative_index
from ._fallback_io import (io_batch, io_engine, io_threads, raw_io_bench, set_io_engine,  # noqa: F401
                          set_io_threads)

__all__ = [
    "address",
    "alloc_bytearray",
    "checksum",
    "copy",
    "copy_threads",
    "copy_threshold",
    "io_batch",
    "io_engine",
    "io_threads",
    "paged_copy",
    "raw_io_bench",
    "set_copy_threads",
    "set_copy_threshold",
    "set_io_engine",
    "set_io_threads",
]

_DEFAULT_THRESHOLD = 4 << 20
_threads = 0  # 0: default
_threshold = _DEFAULT_THRESHOLD


def _default_threads() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


def copy(dst: Any, src: Any) -> None:
    """Copy the bytes of buffer src into the writable buffer dst of the same size."""
    with _byte_view(dst, True, "copy", "dst") as d, _byte_view(src, False, "copy", "src") as s:
        if d.nbytes != s.nbytes:
            raise ValueError(
                f"copy(): size mismatch: dst has {d.nbytes} bytes, src has {s.nbytes} bytes"
            )
        d[:] = s


def checksum(data: Any) -> int:
    """XXH3-64 (seed 0) of the buffer's bytes, as xxhash.xxh3_64_intdigest."""
    with _byte_view(data, False, "checksum", "data") as v:
        return xxhash.xxh3_64_intdigest(v)


def alloc_bytearray(n: int) -> bytearray:
    """A bytearray of n bytes whose contents are not initialised."""
    return bytearray(_nonnegative_index(n, "alloc_bytearray", "n"))


class _PyBuffer(ctypes.Structure):
    """CPython's Py_buffer (stable layout since Python 3.3)."""

    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]
_release_buffer.restype = None


def address(buf: Any) -> int:
    """Address of the first byte of the C-contiguous buffer buf."""
    # ctypes' from_buffer() needs a writable buffer, so ask CPython directly
    # (PyBUF_SIMPLE, as the extension does); the address is the same for any view.
    with _byte_view(buf, False, "address", "buf") as v:
        raw = _PyBuffer()
        _get_buffer(v, ctypes.byref(raw), 0)  # raises on failure (pythonapi checks errors)
        try:
            return raw.buf or 0
        finally:
            _release_buffer(ctypes.byref(raw))


def set_copy_threads(n: int) -> None:
    """Use n threads (caller included) for large copies; 0 restores the default."""
    global _threads
    _threads = _nonnegative_index(n, "set_copy_threads", "n")


def copy_threads() -> int:
    """Number of threads (caller included) that share a large copy."""
    return _threads or _default_threads()


def set_copy_threshold(nbytes: int) -> None:
    """Split copies of at least nbytes bytes across the copy threads."""
    global _threshold
    _threshold = _nonnegative_index(nbytes, "set_copy_threshold", "nbytes")


def copy_threshold() -> int:
    """Size in bytes from which a copy is split across the copy threads."""
    return _threshold


def shuffle(dst: Any, src: Any, element_bytes: int) -> None:
    """Split src into byte planes (bit planes for 1-byte elements) in dst, tail unchanged."""
    _shuffle_call(dst, src, element_bytes, True)


def unshuffle(dst: Any, src: Any, element_bytes: int) -> None:
    """Reassemble elements from the byte planes (bit planes for 1-byte elements) of src."""
    _shuffle_call(dst, src, element_bytes, False)


def _shuffle_call(dst: Any, src: Any, element_bytes: int, forward: bool) -> None:
    import numpy as np  # a dependency of matplotlib, so always installed with kvtier

    func = "shuffle" if forward else "unshuffle"
    with _byte_view(dst, True, func, "dst") as d, _byte_view(src, False, func, "src") as s:
        elem = _nonnegative_index(element_bytes, func, "element_bytes")
        if elem not in (1, 2, 4):
            raise ValueError(f"{func}(): element_bytes must be 1, 2 or 4, got {elem}")
        n = d.nbytes
        if n != s.nbytes:
            raise ValueError(f"{func}(): size mismatch: dst has {n} bytes, src has {s.nbytes} bytes")
        if n and address(d) < address(s) + n and address(s) < address(d) + n:
            raise ValueError(f"{func}(): dst and src overlap")
        out, inp = np.frombuffer(d, np.uint8), np.frombuffer(s, np.uint8)
        group = 8 if elem == 1 else elem
        body = n - n % group
        if elem == 1:
            if forward:  # (count, 8 bits) -> (8 planes, count bits), packed MSB first
                bits = np.unpackbits(inp[:body].reshape(-1, 1), axis=1)
                out[:body] = np.packbits(bits.T, axis=1).reshape(-1)
            else:
                planes = np.unpackbits(inp[:body].reshape(8, -1), axis=1)
                out[:body] = np.packbits(planes.T, axis=1).reshape(-1)
        elif forward:
            out[:body] = inp[:body].reshape(-1, elem).T.reshape(-1)
        else:
            out[:body] = inp[:body].reshape(elem, -1).T.reshape(-1)
        out[body:] = inp[body:]


# --- paged gather/scatter (csrc/paged.cpp) -------------------------------------------


def _address(value: Any, func: str, arg: str) -> int:
    n = operator.index(value)
    if not 0 <= n < 1 << 64:
        raise ValueError(f"{func}(): {arg} must be an address in [0, 2**64), got {n}")
    return n


def paged_copy(gather: Any, pages: Any, segments: Any, block_ids: Any, num_pages: Any,
               blocks_per_page: Any, num_segments: Any, chunk_bytes: Any) -> None:
    """Gather engine blocks into pages (or scatter back) from int64 tables at host addresses."""
    func = "paged_copy"
    forward = bool(gather)
    pages_at = _address(pages, func, "pages")
    segments_at = _address(segments, func, "segments")
    ids_at = _address(block_ids, func, "block_ids")
    n_pages = _nonnegative_index(num_pages, func, "num_pages")
    per_page = _nonnegative_index(blocks_per_page, func, "blocks_per_page")
    n_segments = _nonnegative_index(num_segments, func, "num_segments")
    chunk = _nonnegative_index(chunk_bytes, func, "chunk_bytes")
    if not (n_pages and per_page and n_segments and chunk):
        return
    table = ctypes.c_int64
    page_addrs = (table * n_pages).from_address(pages_at)
    segs = (table * (2 * n_segments)).from_address(segments_at)
    ids = (table * (n_pages * per_page)).from_address(ids_at)
    for p in range(n_pages):
        out = page_addrs[p]
        for s in range(n_segments):
            base, stride = segs[2 * s], segs[2 * s + 1]
            for j in range(per_page):
                block = base + ids[p * per_page + j] * stride
                if forward:
                    ctypes.memmove(out, block, chunk)
                else:
                    ctypes.memmove(block, out, chunk)
                out += chunk
