"""Physical ceilings for the benchmarks, measured on this machine in the same run."""

from __future__ import annotations

import ctypes
import mmap
import time
from typing import Callable

from .. import native


def prefaulted(nbytes: int) -> memoryview:
    """A page-aligned, already-faulted anonymous buffer (like the host arena)."""
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)
    region = mmap.mmap(-1, nbytes, flags=flags)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        region.madvise(mmap.MADV_HUGEPAGE)
    return memoryview(region)


def _memmove(dst: memoryview, src: memoryview) -> None:
    ctypes.memmove(native.address(dst), native.address(src), src.nbytes)


def timed_ops(op: Callable[[int], object], seconds: float, min_ops: int) -> tuple[int, float]:
    """Run ``op(i)`` for at least ``seconds`` and ``min_ops`` calls; (ops, elapsed seconds)."""
    ops = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(min_ops):
            op(ops)
            ops += 1
        now = time.perf_counter()
        if now >= deadline:
            return ops, now - start


def memcpy_bandwidth(region: memoryview, pages: list[memoryview], *, to_region: bool,
                     seconds: float, min_ops: int) -> float:
    """Best bytes/s of raw copies between ``pages`` and rotating page-sized slots of ``region``.

    The access pattern is the store's: a hot source (or destination) page and a slot that moves
    through a region as large as the arena. Both the native copy and libc memmove are timed;
    the better one is the ceiling.
    """
    size = pages[0].nbytes
    slots = region.nbytes // size
    best = 0.0
    for copy in (native.copy, _memmove):
        def op(i: int) -> None:
            slot = region[(i % slots) * size:(i % slots + 1) * size]
            page = pages[i % len(pages)]
            if to_region:
                copy(slot, page)
            else:
                copy(page, slot)

        ops, elapsed = timed_ops(op, seconds, min_ops)
        best = max(best, ops * size / elapsed)
    return best
