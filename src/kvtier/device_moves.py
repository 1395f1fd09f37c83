"""How pages move between CUDA tensors and the store: the ``device->host`` and
``host->device`` routes, and the device tier (HBM), a mixin of ``TieredStore`` (same lock,
counters and tiers).

* ``put``/``batch_put`` of a contiguous CUDA tensor reserve a host slot as for any value and
  queue a D2H copy into it on the device's D2H stream, ordered after the work already queued
  on the caller's current stream, and return before the copy is done. The page is readable
  at once: a CPU read, a write-back to disk or a reuse of the slot first waits for the copy.
  Don't overwrite the tensor until ``synchronize()`` returns. With a Redis tier the copy is
  synchronous, because the shared copy is sent from host bytes.
* ``get_into``/``batch_get_into`` a contiguous CUDA tensor: a host-tier hit is copied from
  the arena slot on the H2D stream, a disk or Redis hit through a pinned bounce buffer (from
  a per-GPU pool, reused across calls); either way the caller's current stream waits for the
  copy (work queued on it afterwards sees the page) and the host does not. ``True``/``False``
  are known when the call returns.

With a device tier (``StoreConfig.device``), a write-through HBM cache in front of the host
tier (bookkeeping in ``device_cache.py``):

* a put of a CUDA tensor on the tier's GPU is also copied device to device into an HBM slot,
  on the D2H stream (after the caller's current stream; the caller does not wait), and
  published together with the host copy. A put of anything else drops the key's HBM copy.
* a ``get_into`` a CUDA tensor on that GPU that finds an HBM copy of a live page (its window
  is checked in the host or disk index) is one device-to-device copy on the H2D stream,
  which the caller's current stream waits for: no host traffic. It counts as a hit of tier
  ``device``. Other reads go to the lower tiers as above, and with ``promote_on_read`` a page
  read from the host or disk tier is then copied into HBM from the filled tensor (on the H2D
  stream, after its upload; the caller's stream waits for that too). A Redis hit is promoted
  into the host tier first and reaches HBM on its next read.
* a key that leaves both the host and the disk tier, or gets a new version, loses its HBM
  copy at once, so HBM never holds a page nobody else has, nor an old version.

Copies to and from host memory are measured with CUDA events and reported on their routes in
``stats().routes``; the device tier's device-to-device copies are not on a route.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any, Callable, Sequence

from .buffers import writable_byte_view
from .device_cache import DeviceCache, Fill
from .errors import BufferSizeError, NonContiguousError
from .index import Entry, Reservation
from .keys import BlockKey
from .metrics import TierStats
from .tiers.device import (DeviceArena, DeviceCopier, DeviceOut, DeviceValue, flat_bytes,
                           is_cuda_tensor)

__all__ = ["DeviceMoves", "is_cuda_tensor"]

Staged = list[tuple[Reservation, int] | None]  # per key of a put: its HBM slot and page size


class DeviceMoves:
    """The CUDA tensor paths of ``TieredStore`` (see the module docstring)."""

    _copiers: dict[Any, DeviceCopier]
    _device_cache: DeviceCache | None
    _device_arena: DeviceArena | None

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
        keys = [self._key(k) for k in keys]
        views: list[memoryview | None] = []
        for i, out in enumerate(outs):
            what = "out" if len(outs) == 1 else f"outs[{i}]"
            if is_cuda_tensor(out):
                if not out.is_contiguous():
                    raise NonContiguousError(f"{what} is a non-contiguous CUDA tensor: call "
                                             ".contiguous() first")
                views.append(None)
            else:
                views.append(writable_byte_view(out, what))
        hits, fills = self._device_begin(keys, outs, views)  # HBM hits held, promotions registered
        got = [False] * len(keys)
        targets: dict[int, DeviceOut] = {}
        finished = False
        try:
            rest = [i for i in range(len(keys)) if i not in hits]
            for i in rest:
                if views[i] is None:
                    targets[i] = DeviceOut(outs[i], self._copier(outs[i].device))
                    views[i] = targets[i].view
            host = self._first_tier
            for target in targets.values():
                host.expect_device_read(target)
            try:
                pages = self._get_many([keys[i] for i in rest], [views[i] for i in rest]) if rest else []
            except BufferSizeError as exc:  # it numbers the buffers it was given
                raise BufferSizeError(_OUT_INDEX.sub(lambda m: f"outs[{rest[int(m[1])]}]", str(exc))) from None
            finally:
                for target in targets.values():
                    host.forget_device_read(target)
            for i, page in zip(rest, pages):
                got[i] = page is not None
                if got[i] and i in targets:
                    targets[i].finish()  # a lower tier filled the bounce buffer: upload it
            for i, entry in hits.items():  # every size was checked: nothing raises now
                self._device_arena.load_into(entry.location, outs[i])
                got[i] = True
            finished = True
        finally:
            for target in targets.values():
                target.release()
            self._device_end(hits, fills, finished)
        if fills:
            self._device_fill(fills, outs, got)
        return got

    # -- the device tier (HBM) ---------------------------------------------------------------
    def _open_device_tier(self) -> None:
        """Allocate the device tier when configured (``GpuUnavailableError`` without CUDA)."""
        self._device_cache = self._device_arena = None
        config = self.config.device
        if config is None:
            return
        arena = self._make_device_arena(config)
        self._device_arena = arena
        self._device_cache = DeviceCache(arena.slot_count, arena.slot_bytes,
                                         promote_on_read=config.promote_on_read)
        if arena.copier is not None:  # one pair of streams per GPU: host copies use them too
            self.__dict__.setdefault("_copiers", {})[arena.device] = arena.copier

    def _make_device_arena(self, config: Any) -> DeviceArena:
        return DeviceArena(config.capacity_bytes, config.slot_bytes, config.device, self._engine.record)

    def _close_device_tier(self) -> None:
        if self._device_arena is not None:
            self._device_arena.close()

    def _device_watch(self, inner: Callable[[Entry], None] | None) -> Callable[[Entry], None]:
        """A local tier index's ``on_remove``: ``inner``, then drop the HBM copy of a key that
        no other local tier holds (it left the store, or a new version replaces it)."""
        def removed(entry: Entry) -> None:
            if inner is not None:
                inner(entry)
            cache = self._device_cache
            if cache is None:
                return
            for _, index in self._tiers:
                held = index.entries.get(entry.key)
                if held is not None and held is not entry:
                    return  # another tier (or the new version) has it
            cache.invalidate(entry.key)
        return removed

    def _device_source(self, value: Any) -> Any:
        """``value`` when the device tier should keep a copy of it (a CUDA tensor on its GPU)."""
        arena = self._device_arena
        if arena is None or not is_cuda_tensor(value) or value.device != arena.device:
            return None
        return value

    def _stage_device(self, keys: Sequence[BlockKey], tensors: Sequence[Any]) -> Staged:
        """A put's HBM copies (``tensors[i]`` None: none): reserve slots under the lock and queue
        the copies; they become visible with the host copies (``_publish_device``). Called
        inside the put's in-flight window, so the store cannot close meanwhile."""
        cache, arena = self._device_cache, self._device_arena
        sizes = [0 if t is None else t.numel() * t.element_size() for t in tensors]
        with self._lock:
            staged: Staged = [None if t is None or (r := cache.reserve(k, n)) is None else (r, n)
                              for k, t, n in zip(keys, tensors, sizes)]
        try:
            for item, tensor in zip(staged, tensors):
                if item is not None:
                    arena.store_from(item[0].location, tensor)
        except BaseException:
            with self._lock:
                for item in staged:
                    if item is not None:
                        cache.abort(item[0])
            raise
        return staged

    def _publish_device(self, keys: Sequence[BlockKey], admitted: Sequence[bool],
                        staged: Staged | None) -> None:
        """With the host publish of a put (lock held): the new HBM copies replace older ones;
        a key published without one loses its older copy; unused reservations go back."""
        cache = self._device_cache
        for i, key in enumerate(keys):
            item = None if staged is None else staged[i]
            if not admitted[i]:
                if item is not None:
                    cache.abort(item[0])
            elif item is None:
                cache.invalidate(key)
            else:
                cache.publish(key, item[0], item[1])

    def _forget_device(self, key: BlockKey) -> None:
        """``evict``: drop the HBM copy (lock held)."""
        if self._device_cache is not None:
            self._device_cache.invalidate(key)

    def _device_begin(self, keys: list[BlockKey], outs: Sequence[Any], views: list[memoryview | None]
                      ) -> tuple[dict[int, Entry], dict[int, Fill]]:
        """Under the lock: the HBM copies of live pages for CUDA ``outs`` on the tier's GPU
        (held as being read), and promotions for the others held locally. Every buffer's size
        is checked against the page held locally first, so nothing is held or copied when
        one is wrong."""
        cache, arena = self._device_cache, self._device_arena
        if cache is None:
            return {}, {}
        at = [i for i, out in enumerate(outs) if is_cuda_tensor(out) and out.device == arena.device]
        if not at:
            return {}, {}
        hits: dict[int, Entry] = {}
        fills: dict[int, Fill] = {}
        with self._lock:
            self._check_open()
            now = self._clock()
            found = [self._locate(key, now) for key in keys]  # expired pages drop their copy
            for i, (hit, view, out) in enumerate(zip(found, views, outs)):
                nbytes = view.nbytes if view is not None else out.numel() * out.element_size()
                if hit is not None and hit[0].nbytes != nbytes:
                    raise BufferSizeError(f"outs[{i}] has {nbytes} bytes but the stored page "
                                          f"has {hit[0].nbytes}")
            for i in at:
                if found[i] is None:
                    continue  # a miss, or only in Redis: the lower tiers answer
                entry = cache.lookup(keys[i])
                if entry is None:
                    fill = cache.begin_fill(keys[i], found[i][0].nbytes)
                    if fill is not None:
                        fills[i] = fill
                    continue
                cache.begin_read(entry)
                hits[i] = entry
                self._touch_local(found[i], now)
            if hits:
                self._inflight += 1
        return hits, fills

    def _touch_local(self, found: tuple, now: float) -> None:
        """An HBM hit is a use of the page: refresh its LRU place and (``ttl_refresh="read"``)
        its window in the local tier that holds it, as a host hit would. Lock held."""
        entry, index, tier = found
        if index.refresh_on_read and entry.ttl_s is not None:
            index.set_deadline(entry, now + entry.ttl_s)
        elif not entry.pinned:
            index.policy.touch(entry.key, entry.deadline)
        if tier is self._first_tier:
            self._refresh_disk_copy(entry)
        else:  # a disk page: its access time (and window) are persisted at close
            self._disk_reads[entry.key] = time.time()

    def _device_end(self, hits: dict[int, Entry], fills: dict[int, Fill], finished: bool) -> None:
        """Release the HBM hits (counted as hits once their copies were queued, which is all
        or none of them); after an error, drop the registered promotions too."""
        if not hits and (finished or not fills):
            return
        with self._lock:
            cache = self._device_cache
            for entry in hits.values():
                cache.end_read(entry, finished)
                if finished:
                    self._counters.hit()
            if hits:
                self._end_copy()
            if not finished:
                for fill in fills.values():
                    cache.end_fill(fill, None, 0)
                fills.clear()

    def _device_fill(self, fills: dict[int, Fill], outs: Sequence[Any], got: list[bool]) -> None:
        """Promotions: copy the pages just read into CUDA ``outs`` into HBM slots."""
        cache, arena = self._device_cache, self._device_arena
        plan: list[tuple[Fill, Reservation | None, int, Any]] = []
        with self._lock:
            for i, fill in fills.items():
                nbytes = outs[i].numel() * outs[i].element_size()
                reservation = cache.reserve_fill(fill, nbytes) if got[i] and not self._closed else None
                if reservation is None:
                    cache.end_fill(fill, None, nbytes)
                else:
                    plan.append((fill, reservation, nbytes, outs[i]))
            if not plan:
                return
            self._inflight += 1
        done = 0
        try:
            for _, reservation, _, out in plan:
                arena.fill_from(reservation.location, out)
                done += 1
        finally:
            with self._lock:
                for n, (fill, reservation, nbytes, _) in enumerate(plan):
                    if n < done:
                        cache.end_fill(fill, reservation, nbytes)
                    else:
                        cache.abort(reservation)
                        cache.end_fill(fill, None, nbytes)
                self._end_copy()

    def _device_stats(self) -> TierStats | None:
        """The device tier's ``TierStats`` (lock held), or None without one."""
        if self._device_cache is None:
            return None
        return self._device_cache.stats(self._device_arena.stats_extra())


_COPIER_LOCK = threading.Lock()
_OUT_INDEX = re.compile(r"outs\[(\d+)\]")
