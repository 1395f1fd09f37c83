"""How pages move between the local tiers and the shared remote tier (Redis).

Every page a put stores locally is also written to Redis: on the caller's thread in
``write_mode="sync"``, else encoded on the caller's thread and written by the transfer
engine's ``host->remote`` worker, which batches queued pages into one pipelined round trip.
A read that misses every local tier asks Redis (one round trip per batch) and, with
``promote_on_read``, copies the hits into the host tier.

A mixin of ``TieredStore`` (same lock, counters and engine), split out of store.py by concept.
Methods are called with the store's lock *not* held unless they say so.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, wait
from typing import Sequence

from .errors import BufferSizeError, StoreClosedError
from .keys import BlockKey
from .metrics import MissReason, TierStats
from .movement import REMOTE_READS, REMOTE_WRITES
from .tiers.remote import CORRUPT, HIT, UNAVAILABLE, WRONG_SIZE, RemoteRead, RemoteTier



class RemoteMoves:
    """The local <-> Redis paths of ``TieredStore`` (see docs/remote.md)."""

    _remote: RemoteTier | None

    def _init_remote(self) -> None:
        config = self.config.remote
        self._remote = None if config is None else RemoteTier(config)
        self._remote_lock = threading.Lock()
        self._remote_pending: set[Future] = set()
        self._remote_pending_keys: dict[BlockKey, Future] = {}  # latest queued write per key
        self._remote_pending_bytes = 0
        self._remote_dropped = 0
        self._remote_deadlines: OrderedDict[BlockKey, float] = OrderedDict()  # lock held

    # -- writes ------------------------------------------------------------------------------
    def _share(self, keys: Sequence[BlockKey], pages: Sequence[memoryview], ttl_s: float | None,
               local: list[bool]) -> list[bool]:
        """Write pages to Redis too; a page the host refused (``local[i]`` False) counts as
        stored if Redis took it, else as a rejected put."""
        shared = self._remote_put(keys, pages, ttl_s)
        stored = [a or b for a, b in zip(local, shared)]
        with self._lock:
            self._counters.puts_rejected += stored.count(False)
            for key, here, there in zip(keys, local, shared):
                if there and not here:  # Redis has the new version: drop older local copies
                    for _, index in self._tiers:
                        if key in index.entries:
                            index.remove(key, None)
        return stored

    def _remote_put(self, keys: Sequence[BlockKey], pages: Sequence[memoryview],
                    ttl_s: float | None) -> list[bool]:
        """Copy pages to Redis; per page, whether it was written (``sync``) or queued
        (``async``). Never raises for a Redis failure."""
        remote = self._remote
        window = remote.config.ttl_s or ttl_s
        self._remember_remote(keys, window)
        if remote.config.write_mode == "sync":
            nbytes = sum(p.nbytes for p in pages)
            return self._engine.run(REMOTE_WRITES, nbytes, remote.put_many, keys, pages, window)
        return [self._queue_remote(key, page, window) for key, page in zip(keys, pages)]

    def _queue_remote(self, key: BlockKey, page: memoryview, window: float | None) -> bool:
        remote = self._remote
        with self._remote_lock:
            room = (remote.available  # an open breaker: do not queue work that will fail
                    and self._remote_pending_bytes + page.nbytes <= remote.config.max_pending_bytes
                    and len(self._remote_pending) < self.config.transfer_queue_depth)
            if not room:
                self._remote_dropped += 1
                return False
        value = remote.encode(key, page, window)
        with self._remote_lock:
            self._remote_pending_bytes += len(value)
        try:
            future = self._engine.submit_item(REMOTE_WRITES, self._remote_write_batch,
                                              (key, value, window), nbytes=len(value))
        except StoreClosedError:
            with self._remote_lock:
                self._remote_pending_bytes -= len(value)
            raise StoreClosedError("this TieredStore is closed; open a new one") from None
        with self._remote_lock:
            self._remote_pending.add(future)
            self._remote_pending_keys[key] = future
        future.add_done_callback(lambda f, n=len(value): self._remote_written(f, n, key))
        return True

    def _remote_write_batch(self, items: list[tuple[BlockKey, bytearray, float | None]]) -> list[bool]:
        return self._remote.write(items)

    def _remote_written(self, future: Future, nbytes: int, key: BlockKey) -> None:
        with self._remote_lock:
            self._remote_pending.discard(future)
            self._remote_pending_bytes -= nbytes
            if self._remote_pending_keys.get(key) is future:
                del self._remote_pending_keys[key]

    def _drain_remote(self) -> None:
        """Wait until every queued Redis write has finished (or failed)."""
        if self._remote is None:
            return
        with self._remote_lock:
            pending = list(self._remote_pending)
        wait(pending)

    def _remember_remote(self, keys: Sequence[BlockKey], window: float | None) -> None:
        """Note when the Redis copies of ``keys`` expire, to tell ``expired`` from
        ``never_stored`` later (this process only; bounded like the ghost list)."""
        deadline = None if window is None else self._clock() + window
        limit = self.config.ghost_entries
        with self._lock:
            known = self._remote_deadlines
            for key in keys:
                if deadline is None:
                    known.pop(key, None)
                else:
                    known[key] = deadline
                    known.move_to_end(key)
            while len(known) > limit:
                known.popitem(last=False)

    # -- reads -------------------------------------------------------------------------------
    def _read_remote(self, positions: list[int], keys: list[BlockKey],
                     outs: list[memoryview] | None) -> list[RemoteRead]:
        """GET the keys at ``positions`` from Redis in one round trip."""
        wanted = [keys[i] for i in positions]
        with self._remote_lock:  # a queued write of a wanted key is its newest version
            queued = [self._remote_pending_keys[k] for k in wanted if k in self._remote_pending_keys]
        if queued:
            wait(queued)
        dsts = None if outs is None else [outs[i] for i in positions]
        start = time.perf_counter()
        reads = self._remote.get_many(wanted, dsts)
        got = sum(r.nbytes for r in reads if r.status == HIT)
        if got:
            self._engine.record(REMOTE_READS, got, time.perf_counter() - start)
        return reads

    def _settle_remote(self, keys: list[BlockKey], positions: list[int], reads: list[RemoteRead],
                       results: list[memoryview | None], count: bool) -> None:
        """Count remote hits and misses (with their reasons). Caller holds the lock."""
        now = self._clock()
        for i, read in zip(positions, reads):
            if read.status == HIT:
                results[i] = read.page
                if count:
                    self._counters.hit()
                continue
            if not count or read.status == WRONG_SIZE:
                continue
            if read.status == UNAVAILABLE:
                reason = MissReason.TIER_UNAVAILABLE
            elif read.status == CORRUPT:
                reason = MissReason.CORRUPT
                self._ghosts.record(keys[i], reason, "remote")
            else:
                reason = self._absent_reason(keys[i], now)
            self._counters.miss(reason)

    def _absent_reason(self, key: BlockKey, now: float) -> MissReason:
        """Why Redis does not have ``key``: ``expired`` if this process wrote it with a window
        that has closed, else what the local tiers remember. Caller holds the lock."""
        deadline = self._remote_deadlines.get(key)
        if deadline is not None and deadline <= now:
            return MissReason.EXPIRED
        return self._ghosts.reason(key)

    def _after_remote_hits(self, keys: list[BlockKey], positions: list[int], reads: list[RemoteRead],
                           outs: list[memoryview] | None, count: bool, promote: bool | None) -> None:
        """After a batch: refuse a wrong-size buffer, extend windows (read refresh), promote."""
        for i, read in zip(positions, reads):
            if read.status == WRONG_SIZE:
                raise BufferSizeError(f"outs[{i}] has {outs[i].nbytes} bytes but the stored page "
                                      f"has {read.nbytes}")
        hits = [(keys[i], read) for i, read in zip(positions, reads) if read.status == HIT]
        if not hits:
            return
        if count and self.config.ttl_refresh == "read":
            refresh = [(key, read.window_s) for key, read in hits if read.window_s is not None]
            if refresh:
                self._remember_remote_each(refresh)
                self._submit_quietly(self._remote.touch, refresh)
        if promote if promote is not None else self._remote.config.promote_on_read:
            now = self._clock()
            refreshed = count and self.config.ttl_refresh == "read"
            self._promote([(key, read.page, None, _deadline(now, read, refreshed), read.window_s)
                           for key, read in hits])

    def _remember_remote_each(self, items: list[tuple[BlockKey, float]]) -> None:
        for key, window in items:
            self._remember_remote([key], window)

    def _submit_quietly(self, fn, *args) -> None:
        """Best-effort background job on the remote route (skipped when closing)."""
        try:
            self._engine.submit(REMOTE_WRITES, fn, *args)
        except StoreClosedError:
            pass

    # -- lookups -----------------------------------------------------------------------------
    def _queued(self, key: BlockKey) -> bool:
        """Whether a write of ``key`` to Redis is still queued (it is as good as stored)."""
        with self._remote_lock:
            return key in self._remote_pending_keys

    def _remote_lookup(self, keys: list[BlockKey], local: list[bool]) -> int:
        """The leading run of ``keys`` held locally (``local[i]``) or in Redis."""
        first_gap = local.index(False) if False in local else len(keys)
        if first_gap == len(keys) or self._remote is None:
            return first_gap
        with self._remote_lock:  # a key whose write is queued is as good as in Redis
            local = [here or key in self._remote_pending_keys for key, here in zip(keys, local)]
        first_gap = local.index(False) if False in local else len(keys)
        if first_gap == len(keys):
            return first_gap
        ask = [i for i in range(first_gap, len(keys)) if not local[i]]
        present = self._remote.exists([keys[i] for i in ask])
        if present is None:
            return first_gap
        held = list(local)
        for i, there in zip(ask, present):
            held[i] = there
        return held.index(False) if False in held else len(keys)

    def _remote_stats(self) -> TierStats:
        remote = self._remote
        used, maximum = remote.used_memory()
        capacity = remote.config.capacity_bytes or maximum
        with self._remote_lock:
            extra = {"writes_pending": len(self._remote_pending),
                     "writes_pending_bytes": self._remote_pending_bytes,
                     "writes_dropped": self._remote_dropped}
        return TierStats(name=remote.name, hits=remote.hits, bytes_in=remote.bytes_in,
                         bytes_out=remote.bytes_out, used_bytes=used, capacity_bytes=capacity,
                         slots_used=0, slots_total=0, entries=0, pinned_bytes=0, evictions=0,
                         expirations=0, extra={**remote.stats_extra(), **extra})


def _deadline(now: float, read: RemoteRead, refreshed: bool) -> float | None:
    """The host copy of a remote hit expires when the Redis copy does."""
    if read.ttl_left_s is not None and not refreshed:
        return now + read.ttl_left_s
    return None if read.window_s is None else now + read.window_s
