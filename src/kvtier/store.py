"""``TieredStore``: the facade engines, integrations, the benchmark and the CLI talk to.

Metadata (the tier indexes) changes under one short lock; bytes move outside it. A read
protects its slot with a reader count, a write reserves a slot before copying and publishes it
after, so no reader ever sees a torn or reused page.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

from . import native
from .buffers import byte_view, writable_byte_view
from .config import StoreConfig
from .errors import (BufferSizeError, ConfigError, InvalidArgumentError, InvalidKeyError,
                     StoreClosedError, UnsupportedValueError)
from .index import Entry, GhostList, Reservation, SlotAllocator, TierIndex
from .keys import BlockKey, as_block_key
from .metrics import MissReason, OpTimings, StoreCounters, unregister
from .device_moves import DeviceMoves, is_cuda_tensor
from .movement import HOST_READS, TierMoves, make_engine
from .queries import DEFAULT_SPEEDS, StoreQueries  # noqa: F401  (DEFAULT_SPEEDS: public)
from .remote_moves import RemoteMoves
from .async_api import StoreAsync
from .residency import StoreResidency
from .policy import make_policy
from .tiers import DiskTier, HostArena, Tier
from .tiers.base import check_fits

_timer = time.perf_counter  # times public calls for stats().latency (kvtier_op_duration_seconds)
KeyLike = BlockKey | bytes


class TieredStore(TierMoves, RemoteMoves, StoreQueries, StoreAsync, StoreResidency, DeviceMoves):
    """KV pages across memory tiers, fastest first: optionally GPU memory (``config.device``,
    a write-through cache of the host tier), host DRAM, then NVMe (``config.disk``), then a
    shared Redis (``config.remote``).

    Args:
        config: the store's configuration (``StoreConfig()`` defaults if omitted).
        clock: monotonic seconds used for TTL windows; inject one to test or simulate expiry.
        metrics_port: serve this store's metrics to Prometheus at
            ``http://{config.metrics_addr}:{metrics_port}/metrics`` (joining an exporter this
            process already runs on that port; docs/metrics.md); default
            ``config.metrics_port`` (``KVTIER_METRICS_PORT``), ``None``: no exporter.
        metrics_name: the ``store`` label of its metrics (default ``config.metrics_name``).

    Keys are ``BlockKey`` (see ``Namespace.prefix_keys``) or plain ``bytes``, which are hashed
    into the default namespace. Values are C-contiguous buffers: bytes, bytearray, memoryview,
    numpy arrays or CPU torch tensors of any dtype and shape; pages come back as flat bytes.
    Usable as a context manager; ``close()`` is idempotent. All methods are thread-safe.
    """

    def __init__(self, config: StoreConfig | None = None, *,
                 clock: Callable[[], float] = time.monotonic, metrics_port: int | None = None,
                 metrics_name: str | None = None) -> None:
        config = StoreConfig() if config is None else config
        if not isinstance(config, StoreConfig):
            raise ConfigError(f"TieredStore needs a StoreConfig, got {type(config).__name__}")
        self.config = config
        self._default_ttl_s = config.ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # signalled when in-flight copies drain
        self._inflight = 0
        self._closed = False
        self._executor: ThreadPoolExecutor | None = None
        self._counters = StoreCounters()
        self._timings: OpTimings | None = None  # see time_operations()
        self._ghosts = GhostList(config.ghost_entries)
        if config.copy_threads:
            native.set_copy_threads(config.copy_threads)
        self._tiers: list[tuple[Tier, TierIndex]] = []
        self._disk: DiskTier | None = None
        self._disk_index: TierIndex | None = None
        self._disk_reads: dict[BlockKey, float] = {}  # key -> wall time of its last disk hit
        self._engine = make_engine(config.transfer_queue_depth)
        self._device_cache = self._device_arena = None
        try:
            self._open_device_tier()  # device_moves.py; GpuUnavailableError without CUDA
            for tier in self._open_tiers(config):
                self._add_tier(tier)
            self._init_remote()
        except BaseException:
            for tier, _ in self._tiers:
                tier.close()
            self._close_device_tier()
            raise
        self._first_tier, self._first_index = self._tiers[0]
        port = config.metrics_port if metrics_port is None else metrics_port
        if port is not None:
            from .prometheus import serve_store  # imports prometheus-client: only when exporting
            try:
                serve_store(self, port, config.metrics_addr, metrics_name or config.metrics_name)
            except BaseException:
                self.close()
                raise

    @staticmethod
    def _open_tiers(config: StoreConfig) -> list[Tier]:
        """The configured tiers, fastest first."""
        tiers: list[Tier] = [HostArena(config.host)]
        if config.disk is not None:
            try:
                tiers.append(DiskTier(config.disk))
            except BaseException:
                tiers[0].close()
                raise
        return tiers

    def _add_tier(self, tier: Tier) -> None:
        config = self.config
        persistent = isinstance(tier, DiskTier)
        allocator = SlotAllocator(tier.slot_count, tier.slot_bytes,
                                  can_grow=tier.has_room if persistent else None)
        on_remove = self._forget_disk_page if persistent else None
        if self._device_cache is not None:  # a key leaving the local tiers leaves HBM too
            on_remove = self._device_watch(on_remove)
        index = TierIndex(
            tier.name, allocator, make_policy(config.policy), self._ghosts,
            max_pinned_bytes=int(allocator.capacity_bytes * config.max_pinned_fraction),
            refresh_on_read=config.ttl_refresh == "read",
            on_remove=on_remove,
        )
        if persistent:
            # Write-back: the host tier may drop a page on its own only once disk has a copy.
            self._tiers[0][1].can_evict = lambda entry: entry.key in index.entries
            self._disk, self._disk_index = tier, index
            index.restore(self._restored_entries(tier))
        self._tiers.append((tier, index))

    # -- context management ------------------------------------------------------------------
    def __enter__(self) -> "TieredStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Finish queued async operations, wait for copies in flight, write host-only pages
        back to disk (``disk.flush_on_close``), release every tier, leave the metrics exporter."""
        unregister(self)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        if not self._closed:
            self._drain_remote()  # queued Redis writes are the page's shared copy: finish them
        self._engine.close(cancel_queued=True)  # queued prefetches are optional: drop them
        if self._disk is not None and self.config.disk.flush_on_close and not self._closed:
            try:
                self.flush()
            except StoreClosedError:
                pass
        with self._lock:
            if self._closed:
                return
            self._closed = True
            while self._inflight:
                self._idle.wait()
        if self._disk is not None:
            self._save_disk_access_times()
        self._close_device_tier()  # waits for the copies queued on its streams
        for tier, _ in self._tiers:
            tier.close()
        if self._remote is not None:
            self._remote.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def time_operations(self) -> None:
        """Time every later put/get/batch/lookup_prefix call into ``stats().latency`` (about
        0.3 us per call). Exporting the store to Prometheus turns it on; idempotent."""
        with self._lock:
            if self._timings is None:
                self._timings = OpTimings()

    # -- single-block API --------------------------------------------------------------------
    def put(self, key: KeyLike, value: Any, *, ttl_s: float | None = None, pin: bool = False) -> bool:
        """Store ``value`` under ``key``; ``False`` when no tier admits it (full of pinned or
        in-use blocks, or the pin budget is spent). Replaces an older value of ``key``.

        Args:
            value: a C-contiguous buffer (bytes, bytearray, memoryview, numpy array, CPU torch
                tensor), at most the first tier's ``slot_bytes``. Not retained: copied in. A
                contiguous CUDA tensor is copied asynchronously, after the work queued on the
                current stream; don't overwrite it before ``synchronize()`` (docs/gpu.md).
                With a device tier (``config.device``) it is also kept in HBM.
            ttl_s: this block's cache window in seconds (default: ``StoreConfig.ttl_s``).
            pin: keep the block in its tier (never evicted or expired) until ``unpin``.
        """
        timings = self._timings  # None unless exported: then a call costs nothing extra
        start = _timer() if timings is not None else 0.0
        if type(key) is not BlockKey:
            key = self._key(key)
        tensor = None if self._device_cache is None else self._device_source(value)
        stored = self._put(key, self._value(value), self._ttl(ttl_s), pin, tensor)
        if timings is not None:
            timings.put.observe(_timer() - start)
        return stored

    def get(self, key: KeyLike) -> memoryview | None:
        """A copy of the page as a flat byte ``memoryview`` (writable, caller-owned), or ``None``."""
        timings = self._timings
        start = _timer() if timings is not None else 0.0
        got = self._get(self._key(key), None)
        if timings is not None:
            timings.get.observe(_timer() - start)
        return got

    def get_into(self, key: KeyLike, out: Any) -> bool:
        """Copy the page straight into ``out`` (no intermediate buffer); ``False`` on a miss.

        Args:
            out: a writable C-contiguous buffer (bytearray, numpy array, CPU torch tensor, ...)
                whose size in bytes equals the stored page's; ``BufferSizeError`` otherwise.
                A contiguous CUDA tensor is filled asynchronously: later work on the current
                stream sees the page (docs/gpu.md); from HBM when the device tier has it. Use its bytes only on ``True``: a disk
                read that fails verification may have landed in it first.
        """
        timings = self._timings
        start = _timer() if timings is not None else 0.0
        if type(key) is not BlockKey:
            key = self._key(key)
        try:
            got = self._get(key, writable_byte_view(out, "out")) is not None
        except UnsupportedValueError:
            if not is_cuda_tensor(out):
                raise
            got = self._get_into_device([key], [out])[0]  # device_moves.py
        if timings is not None:
            timings.get_into.observe(_timer() - start)
        return got

    def contains(self, key: KeyLike) -> bool:
        """Whether a live (stored, not expired) copy of ``key`` exists; does not count as a read."""
        key = self._key(key)
        with self._lock:
            self._check_open()
            if self._locate(key, self._clock()) is not None:
                return True
        return self._remote is not None and (self._queued(key) or self._remote.exists([key]) == [True])

    # -- batches and prefixes ----------------------------------------------------------------
    def batch_put(self, keys: Sequence[KeyLike], values: Sequence[Any], *,
                  ttl_s: float | None = None, pin: bool = False) -> list[bool]:
        """``put`` of many blocks with one lock round trip for the whole batch.

        Every key and value is checked before any is stored. Slots for the whole batch are
        reserved first, so a batch never evicts its own blocks: if it is larger than what the
        tier can free, its tail is refused (``False``) rather than its head evicted.
        """
        timings = self._timings
        start = _timer() if timings is not None else 0.0
        keys, values = list(keys), list(values)
        if len(keys) != len(values):
            raise InvalidKeyError(f"batch_put got {len(keys)} keys but {len(values)} values")
        checked = [self._key(k) for k in keys]
        views = [self._value(v) for v in values]
        tensors = None if self._device_cache is None else [self._device_source(v) for v in values]
        stored = self._put_many(checked, views, self._ttl(ttl_s), pin, tensors)
        if timings is not None:
            timings.batch_put.observe(_timer() - start)
        return stored

    def batch_get(self, keys: Sequence[KeyLike]) -> list[memoryview | None]:
        """``get`` of many blocks, in order, with one lock round trip for the whole batch."""
        timings = self._timings
        start = _timer() if timings is not None else 0.0
        got = self._get_many([self._key(k) for k in keys], None)
        if timings is not None:
            timings.batch_get.observe(_timer() - start)
        return got

    def batch_get_into(self, keys: Sequence[KeyLike], outs: Sequence[Any]) -> list[bool]:
        """``get_into`` of many blocks: ``outs[i]`` receives the page of ``keys[i]`` (same rules
        as ``get_into``; every size is checked before anything is copied)."""
        timings = self._timings
        start = _timer() if timings is not None else 0.0
        keys, outs = list(keys), list(outs)
        if len(keys) != len(outs):
            raise InvalidKeyError(f"batch_get_into got {len(keys)} keys but {len(outs)} buffers")
        if any(map(is_cuda_tensor, outs)):
            got = self._get_into_device(keys, outs)  # device_moves.py
        else:
            views = [writable_byte_view(out, f"outs[{i}]") for i, out in enumerate(outs)]
            got = [view is not None for view in self._get_many([self._key(k) for k in keys], views)]
        if timings is not None:
            timings.batch_get_into.observe(_timer() - start)
        return got

    def lookup_prefix(self, keys: Sequence[KeyLike]) -> int:
        """How many leading ``keys`` are stored, in one call (no LRU or hit-count side effects).
        Keys not held locally are asked of the remote tier in one round trip."""
        timings = self._timings
        start = _timer() if timings is not None else 0.0
        found = self._lookup_prefix(keys)
        if timings is not None:
            timings.lookup_prefix.observe(_timer() - start)
        return found

    def _lookup_prefix(self, keys: Sequence[KeyLike]) -> int:
        checked = [k if type(k) is BlockKey else self._key(k) for k in keys]
        with self._lock:
            self._check_open()
            now = self._clock()
            first = self._first_index.entries
            local = []
            for key in checked:
                entry = first.get(key)  # fast path: a live block in the first tier
                local.append((entry is not None and (entry.deadline is None or entry.deadline > now))
                             or self._locate(key, now) is not None)
                if not local[-1] and self._remote is None:
                    return len(local) - 1
        return self._remote_lookup(checked, local)

    # -- internals ---------------------------------------------------------------------------
    def _put(self, key: BlockKey, src: memoryview, ttl_s: float | None, pin: bool,
             tensor: Any = None) -> bool:
        # The single-block paths mirror _put_many/_get_many without their list handling, which
        # visibly lowers the put/get_into rates of `kvtier bench` (its metadata line).
        tier, index = self._first_tier, self._first_index
        nbytes = src.nbytes
        check_fits(tier, nbytes)
        attempts = 0
        while True:
            if self._disk is not None and not index.allocator.free_slots:
                self._make_room(1)
            with self._lock:
                self._check_open()
                now = self._clock()
                reservation = index.reserve(key, nbytes, now, pin)
                if reservation is None and self._disk is not None and attempts < _ROOM_RETRIES:
                    attempts += 1  # another thread took the room we made: make more
                    continue
                self._counters.puts += 1
                if reservation is None:
                    if self._remote is None:
                        self._counters.puts_rejected += 1
                        return False
                    break
                self._inflight += 1
                break
        if reservation is None:  # the host refused it: the shared tier may still take it
            return self._share([key], [src], ttl_s, [False])[0]
        staged = None  # the HBM copy of a CUDA tensor (device tier, device_moves.py)
        try:
            checksum = tier.write(reservation.location, src)
            if tensor is not None:
                staged = self._stage_device([key], [tensor])
        except BaseException:
            with self._lock:
                index.abort(reservation)
                self._end_copy()
            raise
        with self._lock:
            index.publish(key, reservation, nbytes, None if ttl_s is None else now + ttl_s,
                          ttl_s, checksum)
            through = self._after_publish([key])
            if self._device_cache is not None:
                self._publish_device([key], [True], staged)
            self._end_copy()
        if through:
            self._copy_down(through, demote=False)
        if self._remote is not None:
            self._share([key], [src], ttl_s, [True])
        return True

    def _get(self, key: BlockKey, out: memoryview | None) -> memoryview | None:
        with self._lock:
            self._check_open()
            now = self._clock()
            found = self._locate(key, now)
            if found is None and self._remote is None:
                self._counters.miss(self._ghosts.reason(key))
                return None
            entry, index, tier = found if found is not None else (None, None, None)
            if tier is not self._first_tier:
                slow = True
            elif out is not None and out.nbytes != entry.nbytes:
                raise BufferSizeError(
                    f"out has {out.nbytes} bytes but the stored page has {entry.nbytes}"
                )
            else:
                slow = False
                index.begin_read(entry, now)
                self._refresh_disk_copy(entry)
                self._inflight += 1
        if slow:  # a lower tier holds it (or may): the batch path reads (and promotes) it
            return self._get_many([key], None if out is None else [out])[0]
        ok: bool | None = None  # None: the copy raised, which says nothing about the page
        try:
            dst = out if out is not None else memoryview(native.alloc_bytearray(entry.nbytes))
            if entry.nbytes >= _TIMED_BYTES:  # timing a tiny copy would cost more than it tells
                ok = self._engine.run(HOST_READS, entry.nbytes, tier.read_into, entry.location, dst,
                                      entry.checksum)
            else:
                ok = tier.read_into(entry.location, dst, entry.checksum)
        finally:
            with self._lock:
                index.end_read(entry, ok)
                if ok:
                    self._counters.hit()
                elif ok is False:
                    self._counters.miss(MissReason.CORRUPT)
                self._end_copy()
        return dst if ok else None

    def _put_many(self, keys: list[BlockKey], srcs: list[memoryview], ttl_s: float | None,
                  pin: bool, tensors: list[Any] | None = None) -> list[bool]:
        """Reserve every slot under the lock, copy outside it, publish under the lock."""
        tier, index = self._first_tier, self._first_index
        for src in srcs:
            check_fits(tier, src.nbytes)
        reservations: list[Reservation | None] = [None] * len(keys)
        for attempt in range(_ROOM_RETRIES + 1):
            missing = [i for i, r in enumerate(reservations) if r is None]
            if self._disk is not None and index.allocator.free_slots < len(missing):
                self._make_room(len(missing))
            with self._lock:
                self._check_open()
                now = self._clock()
                for i in missing:
                    reservations[i] = index.reserve(keys[i], srcs[i].nbytes, now, pin)
            if self._disk is None or all(r is not None for r in reservations):
                break
        with self._lock:
            self._check_open()
            admitted = [r is not None for r in reservations]
            self._counters.puts += len(keys)
            if self._remote is None:
                self._counters.puts_rejected += admitted.count(False)
            nothing = not any(admitted)
            if not nothing:
                self._inflight += 1
        if nothing:
            return admitted if self._remote is None else self._share(keys, srcs, ttl_s, admitted)
        staged = None  # HBM copies of CUDA tensors (device tier, device_moves.py)
        try:
            checksums = [None if r is None else tier.write(r.location, src)
                         for r, src in zip(reservations, srcs)]
            if tensors is not None and any(t is not None and ok for t, ok in zip(tensors, admitted)):
                staged = self._stage_device(keys, [t if ok else None for t, ok in zip(tensors, admitted)])
        except BaseException:
            with self._lock:
                for reservation in reservations:
                    if reservation is not None:
                        index.abort(reservation)
                self._end_copy()
            raise
        deadline = None if ttl_s is None else now + ttl_s
        with self._lock:
            for key, reservation, src, checksum in zip(keys, reservations, srcs, checksums):
                if reservation is not None:
                    index.publish(key, reservation, src.nbytes, deadline, ttl_s, checksum)
            through = self._after_publish([k for k, ok in zip(keys, admitted) if ok])
            if self._device_cache is not None:
                self._publish_device(keys, admitted, staged)
            self._end_copy()
        if through:
            self._copy_down(through, demote=False)
        if self._remote is not None:
            return self._share(keys, srcs, ttl_s, admitted)
        return admitted

    def _get_many(self, keys: list[BlockKey], outs: list[memoryview] | None, *,
                  count: bool = True, promote: bool | None = None) -> list[memoryview | None]:
        """Mark every hit as being read under the lock, copy outside it, settle under the lock.

        ``outs`` (for ``get_into``) are checked against the stored sizes before anything is
        read or counted; without them each hit gets a fresh caller-owned buffer.
        """
        with self._lock:
            self._check_open()
            now = self._clock()
            found = [self._locate(key, now) for key in keys]
            if outs is not None:
                for i, (hit, out) in enumerate(zip(found, outs)):
                    if hit is not None and out.nbytes != hit[0].nbytes:
                        raise BufferSizeError(
                            f"outs[{i}] has {out.nbytes} bytes but the stored page has {hit[0].nbytes}"
                        )
            remote_at = []  # positions no local tier holds: asked of the remote tier
            for i, (key, hit) in enumerate(zip(keys, found)):
                if hit is None:
                    if self._remote is not None:
                        remote_at.append(i)
                    elif count:
                        self._counters.miss(self._ghosts.reason(key))
                else:
                    hit[1].begin_read(hit[0], now, refresh=count)
                    if count and hit[2] is self._first_tier:
                        self._refresh_disk_copy(hit[0])
            reading = remote_at or any(hit is not None for hit in found)
            if not reading:
                return [None] * len(keys)
            self._inflight += 1
        results: list[memoryview | None] = [None] * len(keys)
        outcomes: list[bool | None] = [None] * len(keys)  # None: not copied (error or miss)
        lower: list[int] = []  # positions of hits in the disk tier, read as one batch
        remote_reads = None
        start, host_bytes = time.perf_counter(), 0
        try:
            for i, hit in enumerate(found):
                if hit is None:
                    continue
                entry, _, tier = hit
                if tier is not self._first_tier:
                    lower.append(i)
                    continue
                dst = outs[i] if outs is not None else memoryview(native.alloc_bytearray(entry.nbytes))
                outcomes[i] = tier.read_into(entry.location, dst, entry.checksum)
                host_bytes += entry.nbytes
                if outcomes[i]:
                    results[i] = dst
            if host_bytes >= _TIMED_BYTES:
                self._engine.record(HOST_READS, host_bytes, time.perf_counter() - start)
            if lower:  # promoted into the host tier during the read (movement.py)
                self._read_disk(lower, found, outs, outcomes, results,
                                promote=promote if promote is not None else self.config.disk.promote_on_read)
            if remote_at:
                remote_reads = self._read_remote(remote_at, keys, outs)
        finally:
            with self._lock:
                for hit, outcome in zip(found, outcomes):
                    if hit is None:
                        continue
                    hit[1].end_read(hit[0], outcome)
                    if not count:
                        pass
                    elif outcome:
                        self._counters.hit()
                    elif outcome is False:
                        self._counters.miss(MissReason.CORRUPT)
                if remote_reads is not None:
                    self._settle_remote(keys, remote_at, remote_reads, results, count)
                self._end_copy()
        if remote_reads is not None:
            self._after_remote_hits(keys, remote_at, remote_reads, outs, count, promote)
        return results

    def _locate(self, key: BlockKey, now: float) -> tuple[Entry, TierIndex, Tier] | None:
        """The fastest live copy of ``key``. Caller holds the lock."""
        for tier, index in self._tiers:
            entry = index.find(key, now)
            if entry is not None:
                return entry, index, tier
        return None

    def _end_copy(self) -> None:
        self._inflight -= 1
        if self._closed and not self._inflight:
            self._idle.notify_all()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError("this TieredStore is closed; open a new one")

    _key = staticmethod(as_block_key)

    def _value(self, value: Any) -> memoryview:
        try:
            view = byte_view(value)
        except UnsupportedValueError:
            device = self._device_value(value)  # a CUDA tensor: device_moves.py
            if device is None:
                raise
            view = device
        if view.nbytes == 0:
            raise UnsupportedValueError("value is empty: a KV page has at least one byte")
        return view

    def _ttl(self, ttl_s: float | None) -> float | None:
        if ttl_s is None:
            return self._default_ttl_s
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) or not ttl_s > 0:
            raise InvalidArgumentError(f"ttl_s must be a positive number of seconds, got {ttl_s!r}")
        return float(ttl_s)


_TIMED_BYTES = 64 << 10  # host reads at least this large feed the host->caller estimate
_ROOM_RETRIES = 8  # write-back: how often a put makes room again when other threads took it
