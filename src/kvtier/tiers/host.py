"""Host DRAM tier: one preallocated, page-aligned arena carved into fixed-size slots.

No per-block allocation happens after start, so RSS stays flat under churn. The arena is an
anonymous ``mmap`` (page-aligned), page-locked with ``cudaHostRegister`` where a CUDA device is
usable (``HostTierConfig.cuda_pin``), so copies to and from GPUs are DMA.

CUDA tensors reach the arena as ``kvtier.tiers.device.DeviceValue`` (put) and ``DeviceOut``
(get_into): their copies run asynchronously on the device's streams, and every CPU access to a
slot with a copy in flight first waits for it (``settle``), so no reader or writer ever sees a
half-copied slot.
"""

from __future__ import annotations

import ctypes
import mmap
import threading
from typing import Any

from .. import gpu, native
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
        self._dma: dict[int, Any] = {}  # slot -> DmaPending: a GPU copy in flight
        self._dma_lock = threading.Lock()
        self._device_outs: dict[int, Any] = {}  # id(bounce view) -> DeviceOut (get_into)
        self._pinned: int | None = None
        self.pin_error: str | None = "cuda_pin is off"
        if config.cuda_pin:
            address = native.address(self._view)
            self.pin_error = gpu.pin_host(address, len(self._view))
            self._pinned = address if self.pin_error is None else None

    def slot_view(self, slot: int, nbytes: int) -> memoryview:
        """A zero-copy view of the first ``nbytes`` of ``slot`` (valid until ``close``)."""
        if self._dma:
            self.settle(slot)
        start = slot * self.slot_bytes
        return self._view[start:start + nbytes]

    def write(self, slot: int, src: memoryview) -> int | None:
        if self._dma:
            self.settle(slot)
        start = slot * self.slot_bytes
        if type(src) is not memoryview:  # a DeviceValue: DMA on its device->host stream
            self._track(slot, src.copy_to(self._view[start:start + src.nbytes]))
            if not self.verify:
                return None
            self.settle(slot)
            return native.checksum(self._view[start:start + src.nbytes])
        native.copy(self._view[start:start + src.nbytes], src)
        return native.checksum(src) if self.verify else None

    def read_into(self, slot: int, dst: memoryview, checksum: int | None) -> bool:
        if self._dma:
            self.settle(slot)
        start = slot * self.slot_bytes
        if self._device_outs and id(dst) in self._device_outs:  # get_into a CUDA tensor
            src = self._view[start:start + dst.nbytes]
            if checksum is not None and native.checksum(src) != checksum:
                return False
            self._track(slot, self._device_outs[id(dst)].deliver(src))
            return True
        native.copy(dst, self._view[start:start + dst.nbytes])
        return checksum is None or native.checksum(dst) == checksum

    # -- GPU copies in flight ------------------------------------------------------------------
    def expect_device_read(self, out: Any) -> None:
        """A read into ``out.view`` (a ``DeviceOut``'s bounce buffer) from this tier goes
        straight from the slot to the CUDA tensor instead."""
        self._device_outs[id(out.view)] = out

    def forget_device_read(self, out: Any) -> None:
        self._device_outs.pop(id(out.view), None)

    def _track(self, slot: int, pending: Any) -> None:
        with self._dma_lock:
            for done in [s for s, p in self._dma.items() if p.done()]:
                del self._dma[done]
            self._dma[slot] = pending

    def settle(self, slot: int) -> None:
        """Wait for the GPU copy in flight on ``slot``, if any."""
        pending = self._dma.get(slot)
        if pending is not None:
            pending.wait()
            with self._dma_lock:
                if self._dma.get(slot) is pending:
                    del self._dma[slot]

    def stats_extra(self) -> dict[str, object]:
        return {"verify_checksums": self.verify, "cuda_pinned": self._pinned is not None,
                "cuda_pin_error": self.pin_error}

    def close(self) -> None:
        if self._mmap is None:
            return
        for slot in list(self._dma):
            self.settle(slot)
        if self._pinned is not None:
            gpu.unpin_host(self._pinned)
            self._pinned = None
        self._view.release()
        try:
            self._mmap.close()
        except BufferError:  # a caller still holds a slot view; the GC unmaps it later
            pass
        self._mmap = None
