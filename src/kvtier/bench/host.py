"""Host-tier micro benchmark: put / get_into / get of pages beside the memcpy ceiling."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field
from typing import Callable

from .. import native
from ..config import HostTierConfig, MiB, StoreConfig
from ..keys import BlockKey, Namespace
from ..store import TieredStore
from .ceiling import memcpy_bandwidth, prefaulted, timed_ops
from .metadata import MetadataResult, run_metadata_bench

DEFAULT_PAGE_SIZES = (64 << 10, 256 << 10, 1 << 20, 4 << 20)
BATCH = 16  # pages per batch_put / batch_get_into call
BENCH_NAMESPACE = Namespace(model="kvtier-bench")


@dataclass(frozen=True, slots=True)
class HostBenchSettings:
    """What to measure.

    Args:
        page_sizes: page sizes in bytes, each measured separately.
        capacity_bytes: host arena size; the workload cycles through twice as many keys as
            fit, so puts run at a full tier with eviction (the realistic steady state).
        seconds: time per measurement.
        trials: repetitions of every measurement, the store's and the ceiling's interleaved;
            the best of each is kept (equal sample counts, so neither side is favoured).
        metadata_ops: calls per figure of the metadata benchmark (fixed cost per operation).
    """

    page_sizes: tuple[int, ...] = DEFAULT_PAGE_SIZES
    capacity_bytes: int = 256 * MiB
    seconds: float = 0.2
    trials: int = 5
    metadata_ops: int = 100_000


@dataclass(frozen=True, slots=True)
class PageResult:
    """Throughputs (bytes/s) for one page size; ratios are store / ceiling."""

    page_bytes: int
    put: float
    put_ceiling: float
    get_into: float
    get: float
    get_ceiling: float
    batch_put: float       # batch_put of BATCH pages per call
    batch_get_into: float  # batch_get_into of BATCH pages per call

    @property
    def put_ratio(self) -> float:
        return self.put / self.put_ceiling

    @property
    def get_into_ratio(self) -> float:
        return self.get_into / self.get_ceiling

    @property
    def get_ratio(self) -> float:
        return self.get / self.get_ceiling

    @property
    def batch_put_ratio(self) -> float:
        return self.batch_put / self.put_ceiling

    @property
    def batch_get_into_ratio(self) -> float:
        return self.batch_get_into / self.get_ceiling


@dataclass(frozen=True, slots=True)
class HostBenchResult:
    settings: HostBenchSettings
    pages: list[PageResult] = field(default_factory=list)
    metadata: MetadataResult | None = None
    native_backend: str = native.backend
    copy_threads: int = 0
    cpu: str = ""

    def to_json(self) -> dict:
        doc = asdict(self)
        for page, result in zip(doc["pages"], self.pages):
            page.update(put_ratio=result.put_ratio, get_into_ratio=result.get_into_ratio,
                        get_ratio=result.get_ratio, batch_put_ratio=result.batch_put_ratio,
                        batch_get_into_ratio=result.batch_get_into_ratio, batch=BATCH)
        return doc


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} cpus)"
    except OSError:
        pass
    return f"{os.cpu_count()} cpus"


def run_host_bench(settings: HostBenchSettings,
                   progress: Callable[[str], None] = lambda step: None) -> HostBenchResult:
    """Measure every page size; ``progress`` is called once per finished step."""
    result = HostBenchResult(settings, copy_threads=native.copy_threads(), cpu=_cpu_name())
    for size in settings.page_sizes:
        result.pages.append(_bench_page_size(size, settings, progress))
    metadata = run_metadata_bench(settings.metadata_ops)
    progress("metadata")
    return dataclasses.replace(result, metadata=metadata)


def _bench_page_size(size: int, s: HostBenchSettings, progress: Callable[[str], None]) -> PageResult:
    slots = max(1, s.capacity_bytes // size)
    min_ops = max(4, min(64, slots // 4))
    # One hot page on the caller's side, as for an engine staging buffer (and as for get(), whose
    # fresh allocation is the same recycled chunk every time); slots rotate through the arena.
    pages = [prefaulted(size)]
    pages[0][:] = os.urandom(size)
    region = prefaulted(slots * size)
    host = HostTierConfig(capacity_bytes=slots * size, slot_bytes=size, prefault=True)
    keys = BENCH_NAMESPACE.prefix_keys(range(2 * slots), 1)  # BlockKeys, as engines pass them
    best = dict.fromkeys(("put", "put_ceiling", "get_into", "get", "get_ceiling", "batch_put",
                          "batch_get_into"), 0.0)
    batch = min(BATCH, max(1, slots // 2))
    batch_pages = [pages[0]] * batch

    def keep(name: str, ops: int, elapsed: float, pages_per_op: int = 1) -> None:
        best[name] = max(best[name], ops * pages_per_op * size / elapsed)

    def key_batch(source: list[BlockKey], i: int) -> list[BlockKey]:
        start = (i * batch) % (len(source) - batch + 1)
        return source[start:start + batch]

    with TieredStore(StoreConfig(host=host)) as store:
        for i in range(2 * slots):  # reach the steady state: full tier, evicting on every put
            store.put(keys[i], pages[0])
        for _ in range(s.trials):
            best["put_ceiling"] = max(best["put_ceiling"], memcpy_bandwidth(
                region, pages[0], to_region=True, seconds=s.seconds, min_ops=min_ops))
            keep("put", *timed_ops(lambda i: store.put(keys[i % len(keys)], pages[0]),
                                   s.seconds, min_ops))
            best["get_ceiling"] = max(best["get_ceiling"], memcpy_bandwidth(
                region, pages[0], to_region=False, seconds=s.seconds, min_ops=min_ops))
            resident = _resident_keys(store, keys)
            keep("get_into", *timed_ops(
                lambda i: store.get_into(resident[i % len(resident)], pages[0]), s.seconds, min_ops))
            keep("get", *timed_ops(lambda i: store.get(resident[i % len(resident)]), s.seconds, min_ops))
            keep("batch_put", *timed_ops(lambda i: store.batch_put(key_batch(keys, i), batch_pages),
                                         s.seconds, max(1, min_ops // batch)), batch)
            resident = _resident_keys(store, keys)
            keep("batch_get_into", *timed_ops(  # into the one hot page, as the ceiling copies
                lambda i: store.batch_get_into(key_batch(resident, i), batch_pages), s.seconds,
                max(1, min_ops // batch)), batch)
        progress(f"{size >> 10} KiB pages")
    region.release()
    return PageResult(size, **best)


def _resident_keys(store: TieredStore, keys: list[BlockKey]) -> list[BlockKey]:
    """Keys present now, in put order (so reads walk the arena like writes do)."""
    return [k for k in keys if store.contains(k)]
