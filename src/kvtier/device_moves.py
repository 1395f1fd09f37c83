"""How pages move between CUDA tensors and the store: the ``device->host`` and
``host->device`` routes, a mixin of ``TieredStore`` (same lock, counters and tiers).

* ``put``/``batch_put`` of a contiguous CUDA tensor reserve a host slot as for any value and
  queue a D2H copy into it on the device's D2H stream, ordered after the work already queued
  on the caller's current stream, and return before the copy is done. The page is readable
  at once: a CPU read, a write-back to disk or a reuse of the slot first waits for the copy.
  Don't overwrite the tensor until ``synchronize()`` returns. With a Redis tier the copy is
  synchronous, because the shared copy is sent from host bytes.
* ``get_into``/``batch_get_into`` a contiguous CUDA tensor: a host-tier hit is copied from
  the arena slot on the H2D stream, a disk or Redis hit through a pinned bounce buffer; either
  way the caller's current stream waits for the copy (work queued on it afterwards sees the
  page) and the host does not. ``True``/``False`` are known when the call returns.

Copies are measured with CUDA events and reported on their routes in ``stats().routes``.
"""

from __future__ import annotations

import threading
from typing import Any, Sequence

from .buffers import writable_byte_view
from .errors import NonContiguousError
from .keys import BlockKey
from .tiers.device import DeviceCopier, DeviceOut, DeviceValue, flat_bytes, is_cuda_tensor

__all__ = ["DeviceMoves", "is_cuda_tensor"]


class DeviceMoves:
    """The CUDA tensor paths of ``TieredStore`` (see the module docstring)."""

    _copiers: dict[Any, DeviceCopier]

    def synchronize(self) -> None:
        """Wait until every copy between CUDA tensors and this store queued so far is done
        (after it, tensors given to ``put`` may be overwritten)."""
        for copier in list(getattr(self, "_copiers", {}).values()):
            copier.synchronize()

    def _copier(self, device: Any) -> DeviceCopier:
        copiers = self.__dict__.setdefault("_copiers", {})  # created on the first CUDA call
        copier = copiers.get(device)
        if copier is None:
            with _COPIER_LOCK:
                copier = copiers.get(device)
                if copier is None:
                    copier = copiers[device] = DeviceCopier(device, self._engine.record)
        return copier

    def _device_value(self, value: Any, what: str = "value") -> DeviceValue | memoryview | None:
        """A CUDA tensor as a value to store (None when ``value`` is not one)."""
        if not is_cuda_tensor(value):
            return None
        if not value.is_contiguous():
            raise NonContiguousError(f"{what} is a non-contiguous CUDA tensor: call .contiguous() first")
        if self._remote is not None:  # the shared copy is sent from host bytes: copy now
            return memoryview(flat_bytes(value).cpu().numpy())
        return DeviceValue(value, self._copier(value.device))

    def _get_into_device(self, keys: Sequence[BlockKey], outs: Sequence[Any]) -> list[bool]:
        """``batch_get_into`` where some ``outs`` are CUDA tensors (see the module docstring)."""
        views: list[memoryview] = []
        targets: list[DeviceOut | None] = []
        for i, out in enumerate(outs):
            what = "out" if len(outs) == 1 else f"outs[{i}]"
            if is_cuda_tensor(out):
                if not out.is_contiguous():
                    raise NonContiguousError(f"{what} is a non-contiguous CUDA tensor: call "
                                             ".contiguous() first")
                target = DeviceOut(out, self._copier(out.device))
                targets.append(target)
                views.append(target.view)
            else:
                targets.append(None)
                views.append(writable_byte_view(out, what))
        host = self._first_tier
        live = [t for t in targets if t is not None]
        for target in live:
            host.expect_device_read(target)
        try:
            got = self._get_many([self._key(k) for k in keys], views)
        finally:
            for target in live:
                host.forget_device_read(target)
        for target, page in zip(targets, got):
            if target is not None and page is not None:
                target.finish()  # a lower tier filled the bounce buffer: upload it
        return [page is not None for page in got]


_COPIER_LOCK = threading.Lock()
