"""GPU memory: the device tier (a slot arena in HBM) and the device <-> host copies.

Stream semantics (see docs/gpu.md):

* ``DeviceCopier.to_host`` (the ``device->host`` route) runs on a dedicated D2H stream that
  first waits for the caller's current stream, so the copy sees everything queued there
  before the call; the call returns at once. The source tensor is recorded on the D2H
  stream (torch's allocator does not reuse its memory until the copy is done); the caller
  must not *overwrite* it until the copy is done (``DmaPending.wait``,
  ``TieredStore.synchronize``).
* ``DeviceCopier.to_device`` (``host->device``) runs on a dedicated H2D stream that waits
  for the caller's current stream (so earlier readers of the destination are done), and
  the caller's current stream then waits for the copy: work queued there afterwards sees
  the page, and the host never blocks.
* Host memory a pending copy reads or writes stays untouched until it is done: the host
  arena waits (``settle``) before any CPU access to such a slot.
* ``DeviceArena`` copies between CUDA tensors and its HBM slots on the same two streams: a
  put's copy on the D2H stream (after the caller's current stream, caller does not wait), a
  hit's copy on the H2D stream (the caller's current stream waits for it). Copies touching
  one slot are ordered with events across the two streams (a write waits for the slot's
  last write and read, a read for its last write).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Callable, Sequence

from .. import gpu
from .base import TierCapabilities

Recorder = Callable[[str, int, float], None]  # (route, bytes, seconds), e.g. TransferEngine.record

DEVICE_TO_HOST = "device->host"
HOST_TO_DEVICE = "host->device"


def is_cuda_tensor(obj: Any) -> bool:
    """Whether ``obj`` is a torch tensor on a CUDA device (never imports torch)."""
    return (type(obj).__module__.startswith("torch") and getattr(obj, "is_cuda", False) is True)


def flat_bytes(tensor: Any) -> Any:
    """A 1-D uint8 view of a contiguous tensor (any dtype, any device)."""
    import torch

    return tensor.reshape(-1).view(torch.uint8)


class DmaPending:
    """One copy queued on a CUDA stream; done when its end event is reached."""

    __slots__ = ("route", "nbytes", "start", "end", "keep", "_finished", "_on_done")

    def __init__(self, route: str, nbytes: int, start: Any, end: Any, keep: tuple,
                 on_done: Recorder | None) -> None:
        self.route, self.nbytes, self.start, self.end = route, nbytes, start, end
        self.keep = keep  # tensors the copy uses, alive until it is done
        self._finished = False
        self._on_done = on_done

    def done(self) -> bool:
        if self._finished:
            return True
        if not self.end.query():
            return False
        self._finish()
        return True

    def wait(self) -> None:
        """Block the calling thread until the copy is done."""
        if not self._finished:
            self.end.synchronize()
            self._finish()

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self.keep = ()
        if self._on_done is not None and self.start is not None:
            self._on_done(self.route, self.nbytes, self.start.elapsed_time(self.end) / 1e3)


class DeviceCopier:
    """The ``device->host`` and ``host->device`` routes of one GPU: a dedicated CUDA stream
    per direction, timed with events; finished copies are reported to ``record``. Also the
    GPU's pool of pinned bounce buffers (``bounces``) for lower-tier hits into CUDA tensors."""

    def __init__(self, device: Any, record: Recorder | None = None) -> None:
        gpu.require()
        import torch

        self.device = torch.device(device)
        self.d2h = torch.cuda.Stream(self.device)
        self.h2d = torch.cuda.Stream(self.device)
        self.bounces = BouncePool(pin=True)
        self._record = record
        self._lock = threading.Lock()
        self._pending: deque[DmaPending] = deque()

    def to_host(self, dst: memoryview, src: Any) -> DmaPending:
        """Queue ``src`` (a contiguous CUDA tensor of ``len(dst)`` bytes) -> ``dst`` (host
        memory, pinned for true DMA) on the D2H stream; returns at once."""
        import torch

        host = torch.frombuffer(dst, dtype=torch.uint8)
        data = flat_bytes(src)
        return self._queue(DEVICE_TO_HOST, self.d2h, host, data, (host, data, src), src,
                           caller_waits=False)

    def to_device(self, dst: Any, src: Any) -> DmaPending:
        """Queue host ``src`` (a memoryview or CPU tensor) -> ``dst`` (a contiguous CUDA
        tensor of the same size) on the H2D stream, ordered before later work on the
        caller's current stream; returns at once."""
        import torch

        host = src if isinstance(src, torch.Tensor) else torch.frombuffer(src, dtype=torch.uint8)
        data = flat_bytes(dst)
        return self._queue(HOST_TO_DEVICE, self.h2d, data, host.reshape(-1).view(torch.uint8),
                           (host, data, dst), dst, caller_waits=True)

    def device_copy(self, stream: Any, dst: Any, src: Any, user_tensor: Any, *,
                    after: Sequence[Any] = (), caller_waits: bool) -> DmaPending:
        """Queue ``src`` -> ``dst`` (uint8 CUDA tensors of this GPU, same size) on ``stream``
        (``d2h`` or ``h2d``), after the caller's current stream and the events ``after``;
        ``user_tensor`` (the caller's side of the copy) is recorded on ``stream``. Not timed
        (no route): the device tier's own copies."""
        return self._queue("", stream, dst, src, (dst, src, user_tensor), user_tensor,
                           caller_waits=caller_waits, after=after, timed=False)

    def _queue(self, route: str, stream: Any, dst: Any, src: Any, keep: tuple, device_tensor: Any,
               *, caller_waits: bool, after: Sequence[Any] = (), timed: bool = True) -> DmaPending:
        import torch

        caller = torch.cuda.current_stream(self.device)
        start = torch.cuda.Event(enable_timing=True) if timed else None
        end = torch.cuda.Event(enable_timing=timed)
        stream.wait_stream(caller)
        for event in after:
            stream.wait_event(event)
        with torch.cuda.stream(stream):
            if start is not None:
                start.record(stream)
            dst.copy_(src, non_blocking=True)
            end.record(stream)
        device_tensor.record_stream(stream)
        if caller_waits:
            caller.wait_event(end)
        pending = DmaPending(route, dst.numel(), start, end, keep, self._record if timed else None)
        with self._lock:
            while self._pending and self._pending[0].done():
                self._pending.popleft()
            self._pending.append(pending)
        return pending

    def synchronize(self) -> None:
        """Wait until every copy queued so far is done."""
        with self._lock:
            pending = list(self._pending)
            self._pending.clear()
        for item in pending:
            item.wait()


class DeviceValue:
    """A CUDA tensor given to ``put``: the host tier copies it on its ``device->host`` stream."""

    __slots__ = ("tensor", "copier", "nbytes")

    def __init__(self, tensor: Any, copier: DeviceCopier) -> None:
        self.tensor, self.copier = tensor, copier
        self.nbytes = tensor.numel() * tensor.element_size()

    def copy_to(self, dst: memoryview) -> DmaPending:
        return self.copier.to_host(dst, self.tensor)


class BouncePool:
    """Host bounce buffers for disk and Redis hits into CUDA tensors, reused across calls
    instead of allocated per call: one free list per size (pages of one model have one
    size). A buffer comes back with the upload that reads it (``release``) and is handed
    out again only once that upload is done; at most ``max_free_bytes`` are kept free.

    ``pin``: page-locked buffers (``pin_memory``), so uploads are DMA; off only in tests.
    """

    def __init__(self, *, pin: bool, max_free_bytes: int = 256 << 20) -> None:
        self.pin = pin
        self.max_free_bytes = max_free_bytes
        self._free: dict[int, deque[tuple[Any, memoryview, DmaPending | None]]] = {}
        self._free_bytes = 0
        self._lock = threading.Lock()
        self.allocated = self.reused = 0

    def acquire(self, nbytes: int) -> tuple[Any, memoryview]:
        """A ``(uint8 CPU tensor, memoryview of it)`` of ``nbytes`` no copy is using."""
        with self._lock:
            free = self._free.get(nbytes)
            if free and (free[0][2] is None or free[0][2].done()):
                tensor, view, _ = free.popleft()
                self._free_bytes -= nbytes
                self.reused += 1
                return tensor, view
            self.allocated += 1
        import torch

        tensor = torch.empty(nbytes, dtype=torch.uint8, pin_memory=self.pin)
        return tensor, memoryview(tensor.numpy())

    def release(self, tensor: Any, view: memoryview, pending: DmaPending | None) -> None:
        """Give a buffer back; ``pending``: the copy still reading it (None: none)."""
        nbytes = view.nbytes
        with self._lock:
            if self._free_bytes + nbytes > self.max_free_bytes:
                return  # dropped: torch frees it once ``pending`` no longer holds it
            self._free.setdefault(nbytes, deque()).append((tensor, view, pending))
            self._free_bytes += nbytes

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"bounce_allocated": self.allocated, "bounce_reused": self.reused,
                    "bounce_free_bytes": self._free_bytes}


class DeviceOut:
    """A CUDA tensor given to ``get_into``. ``view`` is a host bounce buffer of the same size
    from the copier's pool: lower tiers read into it and ``finish`` uploads it; a host-tier
    hit instead goes straight from the arena slot to the tensor (``deliver``), and the bounce
    is unused. ``release`` gives the bounce back to the pool (once, at the end of the call)."""

    __slots__ = ("tensor", "copier", "nbytes", "bounce", "view", "delivered", "pending")

    def __init__(self, tensor: Any, copier: DeviceCopier) -> None:
        self.tensor, self.copier = tensor, copier
        self.nbytes = tensor.numel() * tensor.element_size()
        self.bounce, self.view = copier.bounces.acquire(self.nbytes)
        self.delivered = False
        self.pending: DmaPending | None = None  # the upload reading the bounce

    def deliver(self, src: memoryview) -> DmaPending:
        """Queue host ``src`` (an arena slot) -> the tensor."""
        self.delivered = True
        return self.copier.to_device(self.tensor, src)

    def finish(self) -> None:
        """After a lower-tier hit filled the bounce buffer: queue it -> the tensor."""
        if not self.delivered:
            self.delivered = True
            self.pending = self.copier.to_device(self.tensor, self.bounce)

    def release(self) -> None:
        """Return the bounce buffer to the pool (it is reused once its upload is done)."""
        if self.bounce is not None:
            self.copier.bounces.release(self.bounce, self.view, self.pending)
            self.bounce = None


class DeviceArena:
    """The device tier's medium: one CUDA allocation carved into fixed-size slots.

    Slots are CUDA memory: ``slot_tensor`` gives a uint8 view to gather engine blocks into
    (``kvtier.layout``) or to copy from. ``store_from``/``fill_from``/``load_into`` copy pages
    between CUDA tensors and slots on the copier's streams without blocking the host (see
    the module docstring); ``write``/``read_into`` move host pages in and out synchronously,
    so the Tier protocol holds. Which slot holds what is the caller's business
    (``kvtier.device_cache.DeviceCache``): the arena only orders the copies of each slot.

    ``_allow_cpu_for_tests``: let ``device`` be ``"cpu"`` (copies are then synchronous
    ``copy_`` calls), so the store's device-tier bookkeeping is testable without a GPU.
    """

    name = "device"
    capabilities = TierCapabilities(device_addressable=True, supports_batch=True)

    def __init__(self, capacity_bytes: int, slot_bytes: int, device: Any = "cuda",
                 record: Recorder | None = None, *, _allow_cpu_for_tests: bool = False) -> None:
        if not (_allow_cpu_for_tests and str(device) == "cpu"):
            gpu.require()
        import torch

        if slot_bytes <= 0 or capacity_bytes < slot_bytes:
            raise ValueError("the device tier needs slot_bytes > 0 and room for one slot")
        self.slot_bytes, self.slot_count = slot_bytes, capacity_bytes // slot_bytes
        self._pool = torch.empty(self.slot_count * slot_bytes, dtype=torch.uint8, device=device)
        self.device = self._pool.device
        self.copier = DeviceCopier(self.device, record) if self.device.type == "cuda" else None
        self._order = threading.Lock()  # slot events change together with the copies they follow
        self._written: dict[int, Any] = {}  # slot -> event after its last write
        self._read: dict[int, Any] = {}     # slot -> event after its last read (all on h2d)

    def slot_tensor(self, slot: int, nbytes: int) -> Any:
        """A uint8 CUDA view of the first ``nbytes`` of ``slot``."""
        start = slot * self.slot_bytes
        return self._pool[start:start + nbytes]

    # -- copies between CUDA tensors and slots (asynchronous) ------------------------------------
    def store_from(self, slot: int, tensor: Any) -> DmaPending | None:
        """A put: queue ``tensor`` (contiguous, on this GPU) -> ``slot`` on the D2H stream,
        after the work queued on the caller's current stream; the caller does not wait.
        ``tensor`` must not be overwritten until the copy is done (``DeviceCopier.synchronize``)."""
        return self._copy_in(slot, tensor, None if self.copier is None else self.copier.d2h,
                             caller_waits=False)

    def fill_from(self, slot: int, tensor: Any) -> DmaPending | None:
        """A promotion: queue ``tensor`` -> ``slot`` on the H2D stream, after the upload that
        filled ``tensor`` there; the caller's current stream waits for it, so later work
        may overwrite ``tensor``."""
        return self._copy_in(slot, tensor, None if self.copier is None else self.copier.h2d,
                             caller_waits=True)

    def load_into(self, slot: int, tensor: Any) -> DmaPending | None:
        """A hit: queue ``slot`` -> ``tensor`` (contiguous, on this GPU, the page's size) on the
        H2D stream after the caller's current stream; the caller's current stream waits for it."""
        dst = flat_bytes(tensor)
        src = self.slot_tensor(slot, dst.numel())
        if self.copier is None:
            dst.copy_(src)
            return None
        with self._order:
            written = self._written.get(slot)
            pending = self.copier.device_copy(self.copier.h2d, dst, src, tensor, caller_waits=True,
                                              after=() if written is None else (written,))
            self._read[slot] = pending.end
        return pending

    def _copy_in(self, slot: int, tensor: Any, stream: Any, *, caller_waits: bool) -> DmaPending | None:
        src = flat_bytes(tensor)
        dst = self.slot_tensor(slot, src.numel())
        if self.copier is None:
            dst.copy_(src)
            return None
        with self._order:  # after the slot's last write and last read, whatever their stream
            after = [e for e in (self._written.get(slot), self._read.pop(slot, None)) if e is not None]
            pending = self.copier.device_copy(stream, dst, src, tensor, after=after,
                                              caller_waits=caller_waits)
            self._written[slot] = pending.end
        return pending

    def _settle(self, slot: int) -> None:
        """Block until every copy queued on ``slot`` is done."""
        with self._order:
            events = [e for e in (self._written.pop(slot, None), self._read.pop(slot, None)) if e is not None]
        for event in events:
            event.synchronize()

    # -- host pages (synchronous) ----------------------------------------------------------------
    def write(self, slot: int, src: Any) -> None:
        """Copy a host page (memoryview) or a ``DeviceValue`` into ``slot``; returns once a
        host page is in device memory (a ``DeviceValue`` is queued like ``store_from``)."""
        if isinstance(src, DeviceValue):
            self.store_from(slot, src.tensor)
            return None
        self._settle(slot)
        dst = self.slot_tensor(slot, src.nbytes)
        if self.copier is None:
            dst.copy_(flat_bytes(_host_tensor(src)))
        else:
            self.copier.to_device(dst, src).wait()
        return None

    def read_into(self, slot: int, dst: memoryview, checksum: int | None) -> bool:
        """Copy ``len(dst)`` bytes of ``slot`` to host ``dst`` and wait for them."""
        self._settle(slot)
        src = self.slot_tensor(slot, dst.nbytes)
        if self.copier is None:
            _host_tensor(dst).copy_(src)
        else:
            self.copier.to_host(dst, src).wait()
        return True

    def synchronize(self) -> None:
        """Wait until every copy queued on this arena's streams so far is done."""
        if self.copier is not None:
            self.copier.synchronize()

    def stats_extra(self) -> dict[str, object]:
        extra: dict[str, object] = {"device": str(self.device)}
        if self.copier is not None:
            extra.update(self.copier.bounces.stats())
        return extra

    def close(self) -> None:
        if self._pool is not None:
            self.synchronize()
            self._written.clear()
            self._read.clear()
            self._pool = None


def _host_tensor(buffer: Any) -> Any:
    import torch

    return torch.frombuffer(buffer, dtype=torch.uint8)
