"""Questions that move no bytes: ``plan()`` (load or recompute), ``miss_reason()``,
``stats()``, and ``sweep_expired()``. A mixin of ``TieredStore``, split out of store.py by concept."""

from __future__ import annotations

from typing import Sequence

from .keys import BlockKey
from . import native
from .metrics import MissReason, StoreStats, TierStats
from .movement import DISK_READS, HOST_READS, REMOTE_READS
from .planner import Plan, TierSpeed, make_plan

# What plan() assumes for a tier before the engine has measured it (conservative: DRAM at a
# single-thread memcpy, an NVMe drive at a modest queue depth, Redis over a 10 GbE link).
DEFAULT_SPEEDS = {"host": TierSpeed(8e9, 0.0), "disk": TierSpeed(1e9, 100e-6),
                  "remote": TierSpeed(1e9, 200e-6)}
_ROUTE_OF_TIER = {"host": HOST_READS, "disk": DISK_READS, "remote": REMOTE_READS}


class StoreQueries:
    """``plan`` and ``miss_reason`` of ``TieredStore``."""

    def plan(self, keys: Sequence[BlockKey | bytes], prefill_tokens_per_s: float, *,
             block_tokens: int | None = None, speeds: dict[str, TierSpeed] | None = None) -> Plan:
        """Whether loading the stored leading pages of ``keys`` beats recomputing them.

        Each tier's speed is the transfer engine's measured estimate for its route
        (``stats().routes``), else ``DEFAULT_SPEEDS``; ``speeds`` overrides per tier name.
        ``block_tokens`` defaults to ``config.block_tokens``. Not counted as a read; refreshes
        nothing. See ``kvtier.planner`` for the cost model.
        """
        checked = [self._key(k) for k in keys]
        with self._lock:
            self._check_open()
            now = self._clock()
            where = [self._locate(key, now) for key in checked]
        tiers = [None if w is None else w[1].name for w in where]
        sizes = [0 if w is None else w[0].nbytes for w in where]
        absent = [i for i, w in enumerate(where) if w is None]
        if absent and self._remote is not None:
            self._drain_remote()  # queued writes: sizes come from Redis
            remote_sizes = self._remote.sizes([checked[i] for i in absent]) or [0] * len(absent)
            for i, size in zip(absent, remote_sizes):
                tiers[i], sizes[i] = ("remote", size) if size else (None, 0)
        known = {name: self._measured_speed(name) for name in set(tiers) if name is not None}
        known.update(speeds or {})
        return make_plan(tiers, sizes, known, prefill_tokens_per_s=prefill_tokens_per_s,
                         block_tokens=self.config.block_tokens if block_tokens is None else block_tokens)

    def _measured_speed(self, tier: str) -> TierSpeed:
        bandwidth, _ = self._engine.estimate(_ROUTE_OF_TIER[tier])
        default = DEFAULT_SPEEDS[tier]
        # a measured call rate already includes its fixed costs, at the batch sizes seen
        return default if bandwidth is None else TierSpeed(bandwidth, 0.0)

    def miss_reason(self, key: BlockKey | bytes) -> MissReason | None:
        """Why ``key`` would miss now (``None`` if it would hit); not counted as a read."""
        key = self._key(key)
        with self._lock:
            self._check_open()
            if self._locate(key, self._clock()) is not None:
                return None
        if self._remote is not None:
            if self._queued(key):
                return None
            present = self._remote.exists([key])
            if present is None:
                return MissReason.TIER_UNAVAILABLE
            if present[0]:
                return None
        with self._lock:
            return self._absent_reason(key, self._clock())

    # -- maintenance and reporting -----------------------------------------------------------
    def sweep_expired(self) -> int:
        """Reclaim every expired block now (reads and puts also reclaim lazily); returns how many."""
        with self._lock:
            self._check_open()
            now = self._clock()
            return sum(index.reclaim_expired(now) for _, index in self._tiers)

    def stats(self) -> StoreStats:
        """A consistent snapshot of the counters (expired blocks are reclaimed first)."""
        with self._lock:
            now = self._clock()
            tiers = []
            for tier, index in self._tiers:
                if not self._closed:
                    index.reclaim_expired(now)
                alloc = index.allocator
                tiers.append(TierStats(
                    name=index.name, hits=index.hits, bytes_in=index.bytes_in,
                    bytes_out=index.bytes_out, used_bytes=index.used_bytes,
                    capacity_bytes=alloc.capacity_bytes, slots_used=alloc.used,
                    slots_total=alloc.slot_count, entries=len(index.entries),
                    pinned_bytes=index.pinned_bytes, evictions=index.evictions,
                    expirations=index.expirations, extra=tier.stats_extra(),
                ))
            device = self._device_stats()  # the HBM cache, fastest first (device_moves.py)
            if device is not None:
                tiers.insert(0, device)
            c = self._counters
        if self._remote is not None:
            tiers.append(self._remote_stats())
        latency = {} if self._timings is None else self._timings.snapshot()
        with self._lock:
            return StoreStats(tiers=tuple(tiers), puts=c.puts, puts_rejected=c.puts_rejected,
                              gets=c.gets, hits=c.hits, misses=dict(c.misses),
                              native_backend=native.backend, routes=self._engine.stats(),
                              latency=latency)
