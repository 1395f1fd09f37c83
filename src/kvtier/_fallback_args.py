"""Argument checks shared by the pure-Python twins of the native module (``_fallback``,
``_fallback_io``): the same errors and messages as csrc/module.cpp and csrc/buffer.h."""

from __future__ import annotations

import ctypes
import operator
from typing import Any


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


def _sequence(obj: Any, func: str, arg: str, of: str) -> tuple[Any, ...]:
    """tuple(obj), refusing buffer objects; errors as in csrc/module.cpp."""
    try:
        memoryview(obj).release()
    except TypeError:
        try:
            return tuple(obj)
        except TypeError:
            pass
    raise TypeError(f"{func}(): {arg} must be a sequence of {of}, got '{type(obj).__name__}'")
