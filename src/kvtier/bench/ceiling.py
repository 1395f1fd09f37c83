"""Physical ceilings for the benchmarks, measured on this machine in the same run."""

from __future__ import annotations

import time
from typing import Callable

from .. import native
from ..tiers.host import map_anonymous


def prefaulted(nbytes: int) -> memoryview:
    """A page-aligned, already-faulted anonymous buffer, mapped exactly like the host arena."""
    return memoryview(map_anonymous(nbytes, prefault=True))


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


def memcpy_bandwidth(region: memoryview, page: memoryview, *, to_region: bool,
                     seconds: float, min_ops: int) -> float:
    """Bytes/s of raw copies between ``page`` and rotating page-sized slots of ``region``.

    The access pattern is the store's: a hot caller-side page and a slot that moves through a
    region as large as the arena, mapped the same way. The copy is ``native.copy``: libc
    ``memcpy`` below the threading threshold (measured level with ``ctypes.memmove``, minus its
    call overhead), the same pool-split copy the store uses above it.
    """
    size = page.nbytes
    slots = region.nbytes // size
    copy = native.copy

    def op(i: int) -> None:
        start = (i % slots) * size
        if to_region:
            copy(region[start:start + size], page)
        else:
            copy(page, region[start:start + size])

    ops, elapsed = timed_ops(op, seconds, min_ops)
    return ops * size / elapsed
