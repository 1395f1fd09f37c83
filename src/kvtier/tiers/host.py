"""Host DRAM tier: one preallocated, page-aligned arena carved into fixed-size slots.

No per-block allocation happens after start, so RSS stays flat under churn. The arena is an
anonymous ``mmap`` (page-aligned); the GPU issue pins it with ``cudaHostRegister`` for DMA.
"""

from __future__ import annotations

import ctypes
import mmap

from .. import native
from ..config import HostTierConfig
from .base import TierCapabilities


def map_anonymous(nbytes: int, *, prefault: bool) -> mmap.mmap:
    """Page-aligned anonymous memory, backed by transparent huge pages where the kernel allows.

    The huge-page advice must come before the first touch (advice given after ``MAP_POPULATE``
    leaves 4 KiB pages, and copies are slower). ``prefault`` then touches every page.
    """
    region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        region.madvise(mmap.MADV_HUGEPAGE)
    if prefault:
        try:
            region.madvise(mmap.MADV_POPULATE_WRITE)  # Linux >= 5.14
        except (AttributeError, OSError):
            view = memoryview(region)
            ctypes.memset(native.address(view), 0, nbytes)
            view.release()
    return region


class HostArena:
    """Pinned-host DRAM slots. Thread-safe for distinct slots (the index serializes a slot)."""

    name = "host"
    capabilities = TierCapabilities(device_addressable=False, supports_batch=True)

    def __init__(self, config: HostTierConfig) -> None:
        self.slot_bytes = config.slot_bytes
        self.slot_count = config.slot_count
        self.verify = config.verify_checksums
        self._mmap: mmap.mmap | None = map_anonymous(self.slot_bytes * self.slot_count,
                                                     prefault=config.prefault)
        self._view = memoryview(self._mmap)

    def slot_view(self, slot: int, nbytes: int) -> memoryview:
        """A zero-copy view of the first ``nbytes`` of ``slot`` (valid until ``close``)."""
        start = slot * self.slot_bytes
        return self._view[start:start + nbytes]

    def write(self, slot: int, src: memoryview) -> int | None:
        start = slot * self.slot_bytes
        native.copy(self._view[start:start + src.nbytes], src)
        return native.checksum(src) if self.verify else None

    def read_into(self, slot: int, dst: memoryview, checksum: int | None) -> bool:
        start = slot * self.slot_bytes
        native.copy(dst, self._view[start:start + dst.nbytes])
        return checksum is None or native.checksum(dst) == checksum

    def stats_extra(self) -> dict[str, object]:
        return {"verify_checksums": self.verify}

    def close(self) -> None:
        if self._mmap is None:
            return
        self._view.release()
        try:
            self._mmap.close()
        except BufferError:  # a caller still holds a slot view; the GC unmaps it later
            pass
        self._mmap = None
