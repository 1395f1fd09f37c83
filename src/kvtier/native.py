"""Byte-level hot paths (page copy, checksum, allocation) with a selectable backend.

The backend is chosen once, at import, from the ``KVTIER_NATIVE`` environment variable:

* ``auto`` (default, also when unset or empty): the compiled extension ``kvtier._native``
  if it imports, else the pure-Python ``kvtier._fallback`` (why: ``fallback_reason``);
* ``native``: the extension, or ImportError if it is missing;
* ``python``: the pure-Python implementation.

Both backends have the same signatures and semantics, and raise the same errors with the
same messages (see kvtier/_fallback.py for the two small exceptions).  The functions
below are the backend's own (no wrapper), so calling them costs nothing extra.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

__all__ = [
    "address",
    "alloc_bytearray",
    "backend",
    "checksum",
    "copy",
    "copy_threads",
    "copy_threshold",
    "fallback_reason",
    "set_copy_threads",
    "set_copy_threshold",
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
