"""Counters, miss reasons, operation latencies, the ``stats()`` result types, and the
Prometheus exporter's entry points.

Exporting (docs/metrics.md lists every metric)::

    store = TieredStore(config, metrics_port=9400)      # serve /metrics on 127.0.0.1:9400
    # or, for stores you already have:
    kvtier.metrics.register(store, name="llama-8b")
    server = kvtier.metrics.start_http_server(9400)

The exporter reads ``store.stats()`` at scrape time, so the hot path keeps no second set of
counters; only operation latencies are timed on it (``OpTimings``). prometheus-client is
imported by ``kvtier.prometheus`` on the first ``register``/``start_http_server``, never at
``import kvtier``.
"""

from __future__ import annotations

import sys
import threading
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

from .errors import KvtierError

if TYPE_CHECKING:
    from .prometheus import MetricsServer, StoreCollector
    from .store import TieredStore


class MissReason(str, Enum):
    """Why a read found nothing. ``str`` values are stable names for logs and metrics."""

    NEVER_STORED = "never_stored"      # no record of this key (or it fell off the ghost list)
    EVICTED = "evicted"                # removed to make room, or by an explicit evict()
    EXPIRED = "expired"                # its TTL window closed
    CORRUPT = "corrupt"                # stored bytes failed verification; dropped (fail closed)
    TIER_UNAVAILABLE = "tier_unavailable"  # the tier holding it cannot be reached
    DEADLINE = "deadline"              # the read did not finish before its deadline


@dataclass(frozen=True, slots=True)
class TierStats:
    """One tier's counters at the time of ``stats()``."""

    name: str
    hits: int
    bytes_in: int        # payload bytes written into this tier
    bytes_out: int       # payload bytes read out of this tier
    used_bytes: int      # payload bytes of the blocks it holds
    capacity_bytes: int
    slots_used: int
    slots_total: int
    entries: int
    pinned_bytes: int
    evictions: int
    expirations: int
    extra: dict = field(default_factory=dict)  # tier-specific, e.g. disk: direct_io, io_errors


@dataclass(frozen=True, slots=True)
class StoreStats:
    """What ``TieredStore.stats()`` returns."""

    tiers: tuple[TierStats, ...]
    puts: int
    puts_rejected: int          # put() returned False: no tier admitted the block
    gets: int
    hits: int
    misses: dict[str, int]      # MissReason value -> count
    native_backend: str         # "native" or "python" (kvtier.native.backend)
    routes: dict = field(default_factory=dict)  # transfer route -> kvtier.transfer.RouteStats
    latency: dict = field(default_factory=dict)  # operation ("get", ...) -> LatencySnapshot

    @property
    def miss_count(self) -> int:
        return sum(self.misses.values())

    @property
    def hit_rate(self) -> float:
        return self.hits / self.gets if self.gets else 0.0

    def tier(self, name: str) -> TierStats:
        """The stats of the tier called ``name`` (e.g. ``"host"``)."""
        for tier in self.tiers:
            if tier.name == name:
                return tier
        raise KeyError(f"no tier named {name!r}; tiers: {[t.name for t in self.tiers]}")


@dataclass(slots=True)
class StoreCounters:
    """Mutable store-wide counters, updated under the store's metadata lock."""

    puts: int = 0
    puts_rejected: int = 0
    gets: int = 0
    hits: int = 0
    misses: Counter = field(default_factory=Counter)

    def miss(self, reason: MissReason) -> None:
        self.gets += 1
        self.misses[reason.value] += 1

    def hit(self) -> None:
        self.gets += 1
        self.hits += 1


# -- operation latencies ---------------------------------------------------------------------
# Upper bounds (seconds) of the latency buckets: a host-tier hit of a small page takes a few
# microseconds, a remote read that runs into its socket deadline about a second.
LATENCY_BUCKETS_S = (1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3,
                     5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
TIMED_OPS = ("put", "get", "get_into", "batch_put", "batch_get", "batch_get_into", "lookup_prefix")
_FOLD_EVERY = 256  # samples a histogram buffers before it sorts them into buckets


@dataclass(frozen=True, slots=True)
class LatencySnapshot:
    """One operation's latency histogram at the time of ``stats()``.

    ``counts[i]`` calls took at most ``bounds[i]`` seconds and more than ``bounds[i - 1]``;
    the last count (``counts[len(bounds)]``) is the calls slower than every bound.
    """

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    count: int      # calls completed (calls that raised are not timed)
    sum_s: float    # seconds they took in all

    @property
    def cumulative(self) -> tuple[int, ...]:
        """Calls that took at most ``bounds[i]`` seconds (Prometheus ``le`` buckets), then all."""
        total, out = 0, []
        for n in self.counts:
            total += n
            out.append(total)
        return tuple(out)

    @property
    def mean_s(self) -> float:
        return self.sum_s / self.count if self.count else 0.0


class LatencyHistogram:
    """A latency histogram cheap enough for the hot path: ``observe`` only appends to a list
    (atomic in CPython, so no lock), and every ``_FOLD_EVERY`` samples, or at ``snapshot``,
    the buffered samples are sorted into buckets under a lock. No sample is lost or counted
    twice: a fold takes the first ``n`` buffered samples and deletes exactly those.
    """

    __slots__ = ("bounds", "_pending", "_counts", "_count", "_sum", "_lock")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS_S) -> None:
        self.bounds = bounds
        self._pending: list[float] = []
        self._counts = [0] * (len(bounds) + 1)
        self._count = 0
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        pending = self._pending
        pending.append(seconds)
        if len(pending) >= _FOLD_EVERY:
            self._fold()

    def snapshot(self) -> LatencySnapshot:
        with self._lock:
            self._fold_locked()
            return LatencySnapshot(self.bounds, tuple(self._counts), self._count, self._sum)

    def _fold(self) -> None:
        with self._lock:
            self._fold_locked()

    def _fold_locked(self) -> None:
        pending = self._pending
        n = len(pending)
        if not n:
            return
        samples = pending[:n]
        del pending[:n]  # samples appended meanwhile stay for the next fold
        counts, bounds = self._counts, self.bounds
        for seconds in samples:
            counts[bisect_left(bounds, seconds)] += 1
        self._count += n
        self._sum += sum(samples)


class OpTimings:
    """One ``LatencyHistogram`` per public store operation (``TIMED_OPS``), as attributes."""

    __slots__ = TIMED_OPS

    def __init__(self) -> None:
        for op in TIMED_OPS:
            setattr(self, op, LatencyHistogram())

    def snapshot(self) -> dict[str, LatencySnapshot]:
        return {op: getattr(self, op).snapshot() for op in TIMED_OPS}


# -- the Prometheus exporter (kvtier.prometheus, imported on first use) -------------------------
class MetricsServerError(KvtierError, OSError):
    """The metrics exporter could not listen where it was asked to (port in use, no permission,
    no such address); pick another ``metrics_port`` (``KVTIER_METRICS_PORT``), or 0 for any."""


def register(store: "TieredStore", name: str = "default") -> None:
    """Export ``store``'s counters under the label ``store=name`` on every kvtier exporter in
    this process (``start_http_server``) and through ``collector()``. Two live stores cannot
    share a name (``ConfigError``). The store leaves when it is closed (or ``unregister``)."""
    from . import prometheus

    prometheus.register(store, name)


def unregister(store: "TieredStore") -> bool:
    """Stop exporting ``store``; ``False`` if it was not registered. ``close()`` calls it."""
    prometheus = sys.modules.get(f"{__package__}.prometheus")
    return prometheus is not None and prometheus.unregister(store)


def start_http_server(port: int, addr: str = "127.0.0.1") -> "MetricsServer":
    """Serve every registered store's metrics at ``http://addr:port/metrics`` on a daemon
    thread, until the returned server's ``close()``. Loopback by default: set ``addr`` (e.g.
    ``"0.0.0.0"``) to let another host scrape. ``port=0`` picks a free port (``server.port``).
    Asking again for a port this process already serves returns that server.
    ``MetricsServerError`` if the address cannot be bound (e.g. the port is in use)."""
    from . import prometheus

    return prometheus.start_http_server(port, addr)


def collector() -> "StoreCollector":
    """The prometheus-client ``Collector`` of every registered store, to add kvtier's metrics
    to an endpoint the application already serves: ``prometheus_client.REGISTRY.register(
    kvtier.metrics.collector())`` (once per registry)."""
    from . import prometheus

    return prometheus.COLLECTOR
