"""Pure-Python twin of the ``kvtier._native`` extension.

Same signatures, semantics and error types/messages as csrc/ (see csrc/buffer.h);
used when the extension is missing or when ``KVTIER_NATIVE=python``.  The copy
thread count and threshold are stored so the API behaves alike, but unused here.

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

__all__ = [
    "address",
    "alloc_bytearray",
    "checksum",
    "copy",
    "copy_threads",
    "copy_threshold",
    "set_copy_threads",
    "set_copy_threshold",
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


def _byte_view(obj: Any, writable: bool, func: str, arg: str) -> memoryview:
    """A flat unsigned-byte view of obj's memory; errors as in csrc/buffer.cpp."""
    try:
        view = memoryview(obj)
    except TypeError:
        raise TypeError(
            f"{func}(): {arg} must be a bytes-like object (buffer protocol), "
            f"got '{type(obj).__name__}'"
        ) from None
    with view:  # release the export at once, also on error (else e.g. an mmap cannot close)
        if not view.c_contiguous:
            raise ValueError(f"{func}(): {arg} is not C-contiguous")
        if writable and view.readonly:
            raise TypeError(
                f"{func}(): {arg} is read-only; a writable buffer is required "
                f"(got '{type(obj).__name__}')"
            )
        return view.cast("B")  # a new view; stays valid after `view` is released


def _nonnegative_index(value: Any, func: str, arg: str) -> int:
    # Like PyNumber_AsSsize_t(value, OverflowError) in csrc/module.cpp.
    n = operator.index(value)
    if n.bit_length() >= 8 * ctypes.sizeof(ctypes.c_ssize_t):
        raise OverflowError("cannot fit 'int' into an index-sized integer")
    if n < 0:
        raise ValueError(f"{func}(): {arg} must be >= 0, got {n}")
    return n


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
