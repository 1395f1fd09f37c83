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
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Callable

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
        if self._on_done is not None:
            self._on_done(self.route, self.nbytes, self.start.elapsed_time(self.end) / 1e3)


class DeviceCopier:
    """The ``device->host`` and ``host->device`` routes of one GPU: a dedicated CUDA stream
    per direction, timed with events; finished copies are reported to ``record``."""

    def __init__(self, device: Any, record: Recorder | None = None) -> None:
        gpu.require()
        import torch

        self.device = torch.device(device)
        self.d2h = torch.cuda.Stream(self.device)
        self.h2d = torch.cuda.Stream(self.device)
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

    def _queue(self, route: str, stream: Any, dst: Any, src: Any, keep: tuple, device_tensor: Any,
               *, caller_waits: bool) -> DmaPending:
        import torch

        caller = torch.cuda.current_stream(self.device)
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        stream.wait_stream(caller)
        with torch.cuda.stream(stream):
            start.record(stream)
            dst.copy_(src, non_blocking=True)
            end.record(stream)
        device_tensor.record_stream(stream)
        if caller_waits:
            caller.wait_event(end)
        pending = DmaPending(route, dst.numel(), start, end, keep, self._record)
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


class DeviceOut:
    """A CUDA tensor given to ``get_into``. ``view`` is a pinned host bounce buffer of the
    same size: lower tiers read into it and ``finish`` uploads it; a host-tier hit instead
    goes straight from the arena slot to the tensor (``deliver``), and the bounce is unused."""

    __slots__ = ("tensor", "copier", "nbytes", "bounce", "view", "delivered")

    def __init__(self, tensor: Any, copier: DeviceCopier) -> None:
        import torch

        self.tensor, self.copier = tensor, copier
        self.nbytes = tensor.numel() * tensor.element_size()
        self.bounce = torch.empty(self.nbytes, dtype=torch.uint8, pin_memory=True)
        self.view = memoryview(self.bounce.numpy())
        self.delivered = False

    def deliver(self, src: memoryview) -> DmaPending:
        """Queue host ``src`` (an arena slot) -> the tensor."""
        self.delivered = True
        return self.copier.to_device(self.tensor, src)

    def finish(self) -> None:
        """After a lower-tier hit filled the bounce buffer: queue it -> the tensor."""
        if not self.delivered:
            self.delivered = True
            self.copier.to_device(self.tensor, self.bounce)


class DeviceArena:
    """The device tier's medium: one CUDA allocation carved into fixed-size slots.

    Slots are CUDA memory: ``slot_tensor`` gives a uint8 view to gather engine blocks into
    (``kvtier.layout``) or to copy from; ``write``/``read_into`` move host pages in and out
    on the copier's streams (synchronously for host buffers, so the Tier protocol holds).
    """

    name = "device"
    capabilities = TierCapabilities(device_addressable=True, supports_batch=True)

    def __init__(self, capacity_bytes: int, slot_bytes: int, device: Any = "cuda",
                 record: Recorder | None = None) -> None:
        gpu.require()
        import torch

        if slot_bytes <= 0 or capacity_bytes < slot_bytes:
            raise ValueError("the device tier needs slot_bytes > 0 and room for one slot")
        self.slot_bytes, self.slot_count = slot_bytes, capacity_bytes // slot_bytes
        self._pool = torch.empty(self.slot_count * slot_bytes, dtype=torch.uint8, device=device)
        self.copier = DeviceCopier(self._pool.device, record)

    def slot_tensor(self, slot: int, nbytes: int) -> Any:
        """A uint8 CUDA view of the first ``nbytes`` of ``slot``."""
        start = slot * self.slot_bytes
        return self._pool[start:start + nbytes]

    def write(self, slot: int, src: Any) -> None:
        """Copy a host page (memoryview) or a ``DeviceValue`` into ``slot``; for a host page,
        returns once it is in device memory."""
        dst = self.slot_tensor(slot, src.nbytes)
        if isinstance(src, DeviceValue):
            dst.copy_(flat_bytes(src.tensor))  # device to device, on the current stream
            return None
        self.copier.to_device(dst, src).wait()
        return None

    def read_into(self, slot: int, dst: memoryview, checksum: int | None) -> bool:
        """Copy ``len(dst)`` bytes of ``slot`` to host ``dst`` and wait for them."""
        self.copier.to_host(dst, self.slot_tensor(slot, dst.nbytes)).wait()
        return True

    def stats_extra(self) -> dict[str, object]:
        return {"device": str(self._pool.device)}

    def close(self) -> None:
        if self._pool is not None:
            self.copier.synchronize()
            self._pool = None
