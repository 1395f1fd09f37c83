"""Prometheus exposition of ``TieredStore`` counters (docs/metrics.md lists every metric).

One process-wide ``StoreCollector`` holds the registered stores by name and turns each one's
``stats()`` into metric families at scrape time, so nothing is counted twice on the hot path.
Every sample carries a ``store`` label, so several stores in one process share the families.
``MetricsServer`` serves the collector's own registry over HTTP on a daemon thread.

Imported on first use through ``kvtier.metrics`` (or ``TieredStore(metrics_port=...)``):
``import kvtier`` does not import prometheus-client.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
import weakref
from collections.abc import Iterator
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import make_wsgi_app
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from .errors import ConfigError, InvalidArgumentError, StoreClosedError
from .metrics import MetricsServerError, MissReason, StoreStats

if TYPE_CHECKING:
    from .store import TieredStore

logger = logging.getLogger(__name__)

_S, _T, _R = ("store",), ("store", "tier"), ("store", "route")

# name -> (type, labels, help). The exposed names: counters end in _total, and histograms add
# _bucket/_count/_sum. docs/metrics.md has the same list (tests/test_metrics.py checks it).
METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "kvtier_store_info": ("gauge", ("store", "native_backend"),
                          "Always 1; native_backend says whether the compiled core or the Python fallback is live"),
    "kvtier_puts_total": ("counter", _S, "Pages offered to put/batch_put (each page of a batch counts)"),
    "kvtier_puts_rejected_total": ("counter", _S, "Pages no tier admitted (put returned False)"),
    "kvtier_gets_total": ("counter", _S, "Page reads (get, get_into and each page of a batch read)"),
    "kvtier_hits_total": ("counter", _S, "Page reads that returned the page"),
    "kvtier_misses_total": ("counter", ("store", "reason"), "Page reads that found nothing, by reason"),
    "kvtier_tier_hits_total": ("counter", _T, "Pages read out of the tier (reads, promotions and prefetches)"),
    "kvtier_tier_read_bytes_total": ("counter", _T, "Page bytes read out of the tier"),
    "kvtier_tier_written_bytes_total": ("counter", _T, "Page bytes written into the tier"),
    "kvtier_tier_used_bytes": ("gauge", _T, "Page bytes the tier holds (remote: Redis used_memory)"),
    "kvtier_tier_capacity_bytes": ("gauge", _T, "Page bytes the tier can hold (remote: only when a limit is known)"),
    "kvtier_tier_pinned_bytes": ("gauge", _T, "Bytes of pinned pages (local tiers)"),
    "kvtier_tier_slots_used": ("gauge", _T, "Slots in use (local tiers)"),
    "kvtier_tier_slots": ("gauge", _T, "Slots in all (local tiers)"),
    "kvtier_tier_entries": ("gauge", _T, "Pages the tier holds (local tiers)"),
    "kvtier_tier_evictions_total": ("counter", _T, "Pages removed to make room (local tiers)"),
    "kvtier_tier_expirations_total": ("counter", _T, "Pages removed because their TTL window closed (local tiers)"),
    "kvtier_disk_info": ("gauge", ("store", "tier", "io_engine", "direct_io"),
                         "Always 1; the disk I/O engine (io_uring or threads) and whether O_DIRECT is in use"),
    "kvtier_disk_io_errors_total": ("counter", _T, "Disk reads and writes that failed"),
    "kvtier_disk_enospc_total": ("counter", _T, "Disk writes refused for lack of space"),
    "kvtier_disk_index_errors_total": ("counter", _T, "LMDB index commits and deletes that failed"),
    "kvtier_disk_preallocated_bytes": ("gauge", _T, "Bytes of slot files preallocated with fallocate"),
    "kvtier_disk_dropped_at_open": ("gauge", _T, "Invalid index records deleted when the tier was opened"),
    "kvtier_codec_info": ("gauge", ("store", "tier", "codec", "codec_now"),
                          "Always 1; the configured codec and the one auto picks now"),
    "kvtier_codec_ratio": ("gauge", _T, "Raw page bytes per stored byte, over every page written so far"),
    "kvtier_codec_ratio_estimate": ("gauge", _T, "Compression ratio, EWMA over pages recently encoded"),
    "kvtier_codec_bandwidth_bytes_per_second": ("gauge", ("store", "tier", "op"),
                                                "Codec speed in raw bytes/s (op: compress, decompress), EWMA"),
    "kvtier_tier_io_bandwidth_bytes_per_second": ("gauge", ("store", "tier", "direction"),
                                                  "Tier I/O speed in stored bytes/s (direction: write, read), EWMA"),
    "kvtier_remote_info": ("gauge", ("store", "tier", "url", "cluster"),
                           "Always 1; the Redis URL (password removed) and whether it is a cluster"),
    "kvtier_remote_round_trips_total": ("counter", _T, "Redis calls that succeeded (a pipelined batch is one)"),
    "kvtier_remote_errors_total": ("counter", _T, "Redis calls that failed (the tier was unavailable to them)"),
    "kvtier_remote_timeouts_total": ("counter", _T, "Redis calls that ran past their deadline"),
    "kvtier_remote_corrupt_total": ("counter", _T, "Redis values that failed verification"),
    "kvtier_remote_writes_failed_total": ("counter", _T, "Pages whose Redis write failed"),
    "kvtier_remote_writes_skipped_full_total": ("counter", _T, "Pages not written because Redis was above capacity_bytes"),
    "kvtier_remote_writes_dropped_total": ("counter", _T, "Async writes skipped because the queue was full or the breaker open"),
    "kvtier_remote_writes_pending": ("gauge", _T, "Async Redis writes queued now"),
    "kvtier_remote_writes_pending_bytes": ("gauge", _T, "Bytes of async Redis writes queued now"),
    "kvtier_remote_breaker_state": ("gauge", ("store", "tier", "state"),
                                    "1 for the circuit breaker's state now (closed, open, half_open), 0 for the others"),
    "kvtier_remote_breaker_opened_total": ("counter", _T, "Times the circuit breaker opened"),
    "kvtier_remote_breaker_refused_total": ("counter", _T, "Calls refused while the breaker was open"),
    "kvtier_remote_redis_used_memory_bytes": ("gauge", _T, "Redis used_memory (sampled at most once a second)"),
    "kvtier_remote_redis_maxmemory_bytes": ("gauge", _T, "Redis maxmemory (0: no limit)"),
    "kvtier_route_transfers_total": ("counter", _R, "Transfers completed on the route (a batch counts its pages)"),
    "kvtier_route_bytes_total": ("counter", _R, "Bytes moved on the route"),
    "kvtier_route_errors_total": ("counter", _R, "Transfer jobs that raised"),
    "kvtier_route_deadline_exceeded_total": ("counter", _R, "Transfers failed by their deadline"),
    "kvtier_route_cancelled_total": ("counter", _R, "Transfers cancelled before they started"),
    "kvtier_route_queued": ("gauge", _R, "Transfer jobs waiting now"),
    "kvtier_route_running": ("gauge", _R, "Transfer jobs running now"),
    "kvtier_route_bandwidth_bytes_per_second": ("gauge", _R, "Bandwidth of the route's transfers, EWMA"),
    "kvtier_route_latency_seconds": ("gauge", _R, "Seconds per transfer call on the route, EWMA"),
    "kvtier_op_duration_seconds": ("histogram", ("store", "op"),
                                   "Wall time of completed store calls, by operation"),
}

# TierStats.extra keys -> metric (labels store, tier); a key a tier does not have is skipped
_EXTRA = {
    "io_errors": "kvtier_disk_io_errors_total", "enospc": "kvtier_disk_enospc_total",
    "index_errors": "kvtier_disk_index_errors_total",
    "preallocated_bytes": "kvtier_disk_preallocated_bytes",
    "dropped_at_open": "kvtier_disk_dropped_at_open",
    "codec_ratio_written": "kvtier_codec_ratio", "codec_ratio_est": "kvtier_codec_ratio_estimate",
    "round_trips": "kvtier_remote_round_trips_total", "errors": "kvtier_remote_errors_total",
    "timeouts": "kvtier_remote_timeouts_total", "corrupt": "kvtier_remote_corrupt_total",
    "writes_failed": "kvtier_remote_writes_failed_total",
    "writes_skipped_full": "kvtier_remote_writes_skipped_full_total",
    "writes_dropped": "kvtier_remote_writes_dropped_total",
    "writes_pending": "kvtier_remote_writes_pending",
    "writes_pending_bytes": "kvtier_remote_writes_pending_bytes",
    "breaker_opened": "kvtier_remote_breaker_opened_total",
    "breaker_refused": "kvtier_remote_breaker_refused_total",
    "redis_used_memory": "kvtier_remote_redis_used_memory_bytes",
    "redis_maxmemory": "kvtier_remote_redis_maxmemory_bytes",
}
_MBPS = {"compress_MBps": ("kvtier_codec_bandwidth_bytes_per_second", "compress"),
         "decompress_MBps": ("kvtier_codec_bandwidth_bytes_per_second", "decompress"),
         "write_MBps": ("kvtier_tier_io_bandwidth_bytes_per_second", "write"),
         "read_MBps": ("kvtier_tier_io_bandwidth_bytes_per_second", "read")}
_BREAKER_STATES = ("closed", "open", "half_open")


def _family(name: str):
    kind, labels, doc = METRICS[name]
    if kind == "counter":
        return CounterMetricFamily(name, doc, labels=labels)
    if kind == "histogram":
        return HistogramMetricFamily(name, doc, labels=labels)
    return GaugeMetricFamily(name, doc, labels=labels)


class _Families:
    """The families of one scrape, created as samples arrive, yielded in ``METRICS`` order."""

    def __init__(self) -> None:
        self._by_name: dict[str, object] = {}

    def add(self, name: str, labels: tuple[str, ...], value: float) -> None:
        family = self._by_name.get(name)
        if family is None:
            family = self._by_name[name] = _family(name)
        family.add_metric(labels, value)

    def histogram(self, name: str, labels: tuple[str, ...], buckets: list, total: float) -> None:
        family = self._by_name.get(name)
        if family is None:
            family = self._by_name[name] = _family(name)
        family.add_metric(labels, buckets, total)

    def __iter__(self) -> Iterator:
        return (self._by_name[name] for name in METRICS if name in self._by_name)


def add_store(out: _Families, store: str, stats: StoreStats) -> None:
    """The samples of one store's ``stats()``, labelled ``store``."""
    s = (store,)
    out.add("kvtier_store_info", (store, stats.native_backend), 1)
    out.add("kvtier_puts_total", s, stats.puts)
    out.add("kvtier_puts_rejected_total", s, stats.puts_rejected)
    out.add("kvtier_gets_total", s, stats.gets)
    out.add("kvtier_hits_total", s, stats.hits)
    for reason in MissReason:
        out.add("kvtier_misses_total", (store, reason.value), stats.misses.get(reason.value, 0))
    for tier in stats.tiers:
        t = (store, tier.name)
        out.add("kvtier_tier_hits_total", t, tier.hits)
        out.add("kvtier_tier_read_bytes_total", t, tier.bytes_out)
        out.add("kvtier_tier_written_bytes_total", t, tier.bytes_in)
        out.add("kvtier_tier_used_bytes", t, tier.used_bytes)
        if tier.capacity_bytes:
            out.add("kvtier_tier_capacity_bytes", t, tier.capacity_bytes)
        if tier.slots_total:  # a local tier: kvtier knows its slots, pins and removals
            out.add("kvtier_tier_pinned_bytes", t, tier.pinned_bytes)
            out.add("kvtier_tier_slots_used", t, tier.slots_used)
            out.add("kvtier_tier_slots", t, tier.slots_total)
            out.add("kvtier_tier_entries", t, tier.entries)
            out.add("kvtier_tier_evictions_total", t, tier.evictions)
            out.add("kvtier_tier_expirations_total", t, tier.expirations)
        _add_extra(out, t, tier.extra)
    for route in stats.routes.values():
        r = (store, route.name)
        out.add("kvtier_route_transfers_total", r, route.ops)
        out.add("kvtier_route_bytes_total", r, route.bytes)
        out.add("kvtier_route_errors_total", r, route.errors)
        out.add("kvtier_route_deadline_exceeded_total", r, route.deadline_exceeded)
        out.add("kvtier_route_cancelled_total", r, route.cancelled)
        out.add("kvtier_route_queued", r, route.queued)
        out.add("kvtier_route_running", r, route.running)
        if route.bandwidth_Bps is not None:
            out.add("kvtier_route_bandwidth_bytes_per_second", r, route.bandwidth_Bps)
        if route.latency_s is not None:
            out.add("kvtier_route_latency_seconds", r, route.latency_s)
    for op, snap in stats.latency.items():
        buckets = [(floatToGoString(b), n) for b, n in zip(snap.bounds, snap.cumulative)]
        buckets.append(("+Inf", snap.count))
        out.histogram("kvtier_op_duration_seconds", (store, op), buckets, snap.sum_s)


def _add_extra(out: _Families, t: tuple[str, str], extra: dict) -> None:
    for key, name in _EXTRA.items():
        value = extra.get(key)
        if isinstance(value, (int, float)):
            out.add(name, t, value)
    for key, (name, kind) in _MBPS.items():
        value = extra.get(key)
        if isinstance(value, (int, float)):
            out.add(name, (*t, kind), value * 1e6)
    if "io_engine" in extra:
        out.add("kvtier_disk_info", (*t, str(extra["io_engine"]), _flag(extra.get("direct_io"))), 1)
    if "codec" in extra:
        out.add("kvtier_codec_info", (*t, str(extra["codec"]), str(extra.get("codec_now", ""))), 1)
    if "url" in extra:
        out.add("kvtier_remote_info", (*t, str(extra["url"]), _flag(extra.get("cluster"))), 1)
    if extra.get("breaker") in _BREAKER_STATES:
        for state in _BREAKER_STATES:
            out.add("kvtier_remote_breaker_state", (*t, state), int(extra["breaker"] == state))


def _flag(value: object) -> str:
    return "true" if value else "false"


class StoreCollector(Collector):
    """The registered stores' metrics, read from ``stats()`` at every ``collect()``.

    Stores are held weakly: one dropped without ``close()`` disappears at the next scrape.
    A store that fails to report (closed meanwhile) is left out of that scrape only.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stores: dict[str, weakref.ref] = {}

    def add(self, store: "TieredStore", name: str) -> None:
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError(f"a store's metrics name must be a non-empty string, got {name!r}")
        if store.closed:
            raise StoreClosedError("this TieredStore is closed: only open stores can be exported")
        with self._lock:
            held = self._stores.get(name)
            other = held() if held is not None else None
            if other is not None and other is not store:
                raise ConfigError(
                    f"a store named {name!r} is already registered for metrics in this process: "
                    "give each store its own name (metrics_name=..., KVTIER_METRICS_NAME)")
            for known, ref in list(self._stores.items()):  # one name per store
                if ref() is store:
                    del self._stores[known]
            self._stores[name] = weakref.ref(store)
        store.time_operations()  # kvtier_op_duration_seconds

    def remove(self, store: "TieredStore") -> bool:
        with self._lock:
            names = [name for name, ref in self._stores.items() if ref() is store]
            for name in names:
                del self._stores[name]
            return bool(names)

    def names(self) -> list[str]:
        """The names of the live registered stores."""
        return [name for name, _ in self._live()]

    def _live(self) -> list[tuple[str, "TieredStore"]]:
        with self._lock:
            live = [(name, ref()) for name, ref in self._stores.items()]
            for name, store in live:
                if store is None:
                    del self._stores[name]
        return [(name, store) for name, store in live if store is not None]

    def describe(self) -> list:
        return [_family(name) for name in METRICS]

    def collect(self) -> Iterator:
        out = _Families()
        for name, store in self._live():
            try:
                stats = store.stats()
            except Exception as exc:  # e.g. closed while this scrape ran: skip it this time
                logger.debug("kvtier metrics: store %r did not report: %s", name, exc)
                continue
            add_store(out, name, stats)
        return iter(out)


COLLECTOR = StoreCollector()
REGISTRY = CollectorRegistry(auto_describe=True)  # what kvtier's exporters serve
REGISTRY.register(COLLECTOR)


# -- the HTTP exporter ----------------------------------------------------------------------------
class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True  # restart on the same port right after close()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class MetricsServer:
    """An HTTP exporter of ``REGISTRY`` (every registered store) on a daemon thread.

    ``port`` is the bound port (useful with ``port=0``); ``close()`` stops it (idempotent).
    Made by ``start_http_server`` or by ``TieredStore(metrics_port=...)``.
    """

    def __init__(self, port: int, addr: str) -> None:
        _check_port(port)
        family = _address_family(addr, port)
        server_class = type("_Server", (_ThreadingServer,), {"address_family": family})
        try:
            self._httpd = make_server(addr, port, make_wsgi_app(REGISTRY), server_class,
                                      handler_class=_QuietHandler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise MetricsServerError(
                    exc.errno, f"cannot serve kvtier metrics on {addr}:{port}: the port is in use "
                    "(another process or server holds it); choose another metrics_port "
                    "(KVTIER_METRICS_PORT), or 0 for any free port") from None
            raise MetricsServerError(
                exc.errno, f"cannot serve kvtier metrics on {addr}:{port}: {exc.strerror or exc}") from None
        self.addr, self.port = addr, self._httpd.server_port
        self.explicit = False  # started by start_http_server (a store's close() leaves it)
        self.owners: set[int] = set()  # ids of the stores that asked for it (metrics_port)
        self._closed = False
        self._thread = threading.Thread(target=self._httpd.serve_forever, name=f"kvtier-metrics-{self.port}",
                                        daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        with _lock:
            _servers.pop((self.addr, self.port), None)
        self._shutdown()

    def _shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def __enter__(self) -> "MetricsServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MetricsServer({self.url})"


_lock = threading.Lock()
_servers: dict[tuple[str, int], MetricsServer] = {}  # (addr, bound port) -> running server
_store_servers: dict[int, MetricsServer] = {}  # id(store) -> the server it asked for


def register(store: "TieredStore", name: str) -> None:
    COLLECTOR.add(store, name)


def unregister(store: "TieredStore") -> bool:
    """Forget ``store``; stop a server that only stores asked for once the last one leaves."""
    removed = COLLECTOR.remove(store)
    with _lock:
        server = _store_servers.pop(id(store), None)
        if server is None:
            return removed
        server.owners.discard(id(store))
        idle = not server.owners and not server.explicit
        if idle:
            _servers.pop((server.addr, server.port), None)
    if idle:
        server._shutdown()
    return removed


def start_http_server(port: int, addr: str = "127.0.0.1") -> MetricsServer:
    with _lock:
        server = _start_locked(port, addr)
        server.explicit = True
    return server


def serve_store(store: "TieredStore", port: int, addr: str, name: str) -> MetricsServer:
    """Register ``store`` as ``name`` and serve it on ``addr:port`` (joining a server this
    process already runs there); the server stops when its last such store is closed, unless
    ``start_http_server`` started it."""
    COLLECTOR.add(store, name)
    try:
        with _lock:
            server = _start_locked(port, addr)
            server.owners.add(id(store))
            _store_servers[id(store)] = server
    except BaseException:
        COLLECTOR.remove(store)
        raise
    return server


def _start_locked(port: int, addr: str) -> MetricsServer:
    _check_port(port)
    server = _servers.get((addr, port)) if port else None
    if server is None:
        server = MetricsServer(port, addr)
        _servers[(addr, server.port)] = server
    return server


def _check_port(port: object) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise InvalidArgumentError(f"metrics port must be an int from 0 to 65535 (0: any free port), got {port!r}")


def _address_family(addr: str, port: int) -> int:
    try:
        return socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise MetricsServerError(errno.EADDRNOTAVAIL,
                                 f"cannot serve kvtier metrics on {addr}:{port}: {exc}") from None
