"""Aligned scratch memory for the disk tier's O_DIRECT batches.

O_DIRECT moves bytes only between 4096-aligned memory and the file. Every page needs a header
block, and a page whose caller buffer is not aligned (a torch CPU tensor is 64-byte aligned)
bounces through scratch memory. Scratch maps are reused across batches: touching a fresh
anonymous map costs a page fault, and the kernel zeroing 4 KiB, per page, which was about a
quarter of a cold read into unaligned buffers on the development VM.
"""

from __future__ import annotations

import mmap
import threading

from .. import native

ALIGN = 4096
_KEEP_MAPS = 4  # scratch maps kept between batches (one per concurrent batch, roughly)
_KEEP_BYTES = 512 << 20  # at most this much kept mapped; only touched pages use memory
_ROUND = 2 << 20  # map sizes are rounded up to this, so nearby batch sizes share maps


def align_up(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


class StagingMaps:
    """A few anonymous maps kept for reuse (thread-safe). A map is taken for one batch and
    given back only once no transfer uses it; one dropped from the pool is unmapped when the
    last view of it goes away."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: list[mmap.mmap] = []

    def take(self, nbytes: int) -> mmap.mmap:
        """The smallest kept map of at least ``nbytes``, else a new one."""
        with self._lock:
            fits = [m for m in self._free if len(m) >= nbytes]
            if fits:
                best = min(fits, key=len)
                self._free.remove(best)
                return best
        size = -(-max(nbytes, ALIGN) // _ROUND) * _ROUND
        new = mmap.mmap(-1, size)
        if hasattr(mmap, "MADV_HUGEPAGE"):
            try:  # fewer faults on first touch where transparent huge pages are on madvise
                new.madvise(mmap.MADV_HUGEPAGE)
            except OSError:
                pass
        return new

    def give(self, used: mmap.mmap) -> None:
        """Keep ``used`` for the next batch (dropping the smallest kept maps over the limits)."""
        with self._lock:
            self._free.append(used)
            self._free.sort(key=len, reverse=True)
            while len(self._free) > _KEEP_MAPS or sum(len(m) for m in self._free) > _KEEP_BYTES:
                self._free.pop()

    @property
    def kept_bytes(self) -> int:
        with self._lock:
            return sum(len(m) for m in self._free)


SHARED_MAPS = StagingMaps()  # one pool per process: a reopened disk tier finds its maps warm


class Staging:
    """Scratch memory for one batch: a header block per page, plus a bounce area for a page
    whose own buffer is not aligned (or whose tail is not a whole 4096-byte block). Call
    ``release()`` once every transfer of the batch is done; without it (an error midway) the
    map is simply not reused."""

    def __init__(self, sizes: list[int], maps: StagingMaps) -> None:
        self._tail_at: list[int] = []
        total = ALIGN * len(sizes)
        for n in sizes:
            self._tail_at.append(total)
            total += align_up(n)  # worst case: the whole page bounces
        self._maps = maps
        self._map = maps.take(total)
        self._view = memoryview(self._map)
        self._bounced: list[int] = [0] * len(sizes)  # bytes of the page that go through staging

    def release(self) -> None:
        self._maps.give(self._map)

    def header(self, i: int) -> memoryview:
        return self._view[i * ALIGN:(i + 1) * ALIGN]

    def payload_iovecs(self, i: int, buf: memoryview, *, for_write: bool) -> list[memoryview]:
        """The iovecs that move page ``i`` to/from ``buf``, aligned for O_DIRECT."""
        n = buf.nbytes
        direct_part = n & ~(ALIGN - 1)
        if native.address(buf) % ALIGN:
            direct_part = 0  # unaligned caller buffer: the whole page bounces
        rest = n - direct_part
        iov = [buf[:direct_part]] if direct_part else []
        if rest:
            start = self._tail_at[i]
            bounce = self._view[start:start + align_up(rest)]
            if for_write:
                native.copy(bounce[:rest], buf[direct_part:])
            iov.append(bounce)
        self._bounced[i] = rest
        return iov

    def scratch(self, i: int, nbytes: int) -> memoryview:
        """Page ``i``'s aligned bounce area, ``align_up(nbytes)`` long (a compressed payload)."""
        start = self._tail_at[i]
        return self._view[start:start + align_up(nbytes)]

    def copy_out(self, i: int, buf: memoryview) -> list[tuple[int, memoryview]]:
        """For a read of page ``i`` into ``buf`` (after ``payload_iovecs``): where its bounced
        part starts in the transfer (after the header block) and the part of ``buf`` it
        belongs in, as ``native.io_batch`` ``copy_out`` pairs (none if nothing bounced)."""
        rest = self._bounced[i]
        if not rest:
            return []
        return [(ALIGN + buf.nbytes - rest, buf[buf.nbytes - rest:])]
