"""The workload benchmark (``kvtier bench``'s default): a prefix-sharing serving workload run
through a host + disk store, and the time to restore a cached prefix from each tier beside the
time to recompute it.

**Workload.** Chat sessions share a few system prompts and grow their history turn by turn
(``sessions`` × ``turns``; sessions start and think for exponentially distributed virtual
times), or a trace is replayed by its timestamps (``trace``, e.g. the Mooncake conversation
trace). Time is virtual (the store's clock), so TTL windows close as they would in hours of
serving while the run takes about a minute. Per request the engine side is what a real
connector does: ``plan()`` the request's pages (load or recompute, from the tiers' measured
speeds and the GPU's prefill speed), ``batch_get_into`` the pages it loads (timed, per tier;
every ``verify_every``-th page compared byte for byte with what was stored), ``miss_reason``
of the first page it could not load, and ``batch_put`` of the pages it had to recompute.

**Restore vs recompute.** For prefixes of ``restore_tokens`` tokens: the wall time of
``batch_get_into`` of all their pages from the host tier and from the disk tier (O_DIRECT, so
cold; buffered files are dropped from the page cache first), beside the modelled prefill time of
the same tokens on ``gpu`` (``kvtier.specs``: 2 × active parameters FLOPs per token at 50 % of
peak, attention left out, so it flatters recomputing long prefixes).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import shutil
import statistics
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ..config import DiskTierConfig, GiB, HostTierConfig, StoreConfig
from ..keys import BlockKey, Namespace
from ..planner import LOAD, Plan
from ..sim.trace import load_trace
from ..specs import gpu_spec, model_spec
from ..store import TieredStore
from .peer_runner import drop_page_cache

_PATTERN_BYTES = 4096  # a page is its key's 4 KiB pattern repeated (cheap to make and to check)
_PUT_BATCH = 16


@dataclass(frozen=True, slots=True)
class WorkloadSettings:
    """What the workload benchmark runs.

    Args:
        model: a ``kvtier size`` preset; its KV bytes per token × ``block_tokens`` is the page.
        gpu: the GPU preset whose modelled prefill speed is the recompute alternative.
        prefill_tokens_per_s: overrides the GPU preset's prefill speed when given.
        block_tokens: tokens per page (a trace's own block size wins in trace mode).
        page_bytes: bytes per page, overriding the model's KV bytes per token × block tokens.
        sessions, turns: synthetic chat sessions and turns per session.
        system_prompts, system_tokens: distinct shared system prompts and their length.
        turn_tokens: mean tokens a turn appends (the user's message and the previous answer).
        arrival_s, think_s: mean virtual seconds between session starts and between turns.
        ttl_s: the cache window (virtual seconds; None: no expiry).
        host_bytes, disk_bytes: tier capacities.
        directory: where the disk tier lives (default: a temp dir, removed afterwards).
        trace: replay this trace file instead of synthetic sessions; ``requests`` keeps its
            first N requests.
        restore_tokens: prefix lengths for the restore-vs-recompute comparison.
        restore_trials: timed repetitions per prefix and tier (the median is kept).
        verify_every: compare every N-th restored page with what was stored (1: all).
        seed: for the synthetic sessions.
    """

    model: str = "llama-3-8b"
    gpu: str = "h100"
    prefill_tokens_per_s: float | None = None
    block_tokens: int = 256
    page_bytes: int | None = None
    sessions: int = 24
    turns: int = 4
    system_prompts: int = 3
    system_tokens: int = 2048
    turn_tokens: int = 384
    arrival_s: float = 20.0
    think_s: float = 150.0
    ttl_s: float | None = 300.0
    host_bytes: int = 1 * GiB
    disk_bytes: int = 4 * GiB
    directory: str | None = None
    trace: str | None = None
    requests: int | None = None
    restore_tokens: tuple[int, ...] = (1024, 4096, 16384)
    restore_trials: int = 3
    verify_every: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("block_tokens", "sessions", "turns", "system_prompts", "turn_tokens",
                     "restore_trials", "verify_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.system_tokens < 0 or self.arrival_s < 0 or self.think_s < 0:
            raise ValueError("system_tokens, arrival_s and think_s cannot be negative")
        if self.ttl_s is not None and self.ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive (or None for no expiry), got {self.ttl_s}")
        if self.page_bytes is not None and self.page_bytes < 1:
            raise ValueError(f"page_bytes must be positive, got {self.page_bytes}")
        if self.prefill_tokens_per_s is not None and self.prefill_tokens_per_s <= 0:
            raise ValueError("prefill_tokens_per_s must be positive")
        if not self.restore_tokens or min(self.restore_tokens) < 1:
            raise ValueError("restore_tokens needs at least one positive prefix length")
        model_spec(self.model)
        gpu_spec(self.gpu)


@dataclass(slots=True)
class WorkloadResult:
    """What the run measured. Page counts are per request page (a page a request references)."""

    model: str
    page_bytes: int
    block_tokens: int
    prefill_tokens_per_s: float
    source: str                      # "synthetic sessions" or the trace file
    requests: int = 0
    pages: int = 0                   # pages referenced by all requests
    logical_hits: int = 0            # pages some earlier request had already produced
    loaded: dict = field(default_factory=dict)      # tier -> pages loaded from it
    restore_s: dict = field(default_factory=dict)   # tier -> seconds spent loading
    recomputed: int = 0              # pages prefilled (not stored, or not worth loading)
    declined: int = 0                # stored pages the planner chose to recompute
    stopped_by: dict = field(default_factory=dict)  # miss reason of a prefix's first lost page
    tokens: int = 0                  # input tokens of all requests
    prefill_tokens: int = 0          # of them, prefilled (with kvtier)
    modelled_ttft_s: float = 0.0     # sum over requests: load time measured + prefill modelled
    baseline_ttft_s: float = 0.0     # sum over requests: prefill of every token
    verified_pages: int = 0
    tier_bytes: dict = field(default_factory=dict)  # tier -> {"in": bytes, "out": bytes}
    restore: list = field(default_factory=list)     # RestorePoint dicts
    wall_s: float = 0.0

    @property
    def hit_rate(self) -> float:
        """Pages served from kvtier / pages referenced (the physical hit rate)."""
        return sum(self.loaded.values()) / self.pages if self.pages else 0.0

    @property
    def logical_hit_rate(self) -> float:
        """Pages produced before / pages referenced: what an infinite, eternal cache would hit."""
        return self.logical_hits / self.pages if self.pages else 0.0

    def to_json(self) -> dict:
        doc = asdict(self)
        doc.update(mode="workload", hit_rate=self.hit_rate, logical_hit_rate=self.logical_hit_rate)
        return doc


@dataclass(frozen=True, slots=True)
class RestorePoint:
    """Median seconds to bring back a prefix of ``tokens`` from each tier, and to recompute it."""

    tokens: int
    pages: int
    host_s: float
    disk_s: float
    recompute_s: float


def workload_steps(settings: WorkloadSettings) -> int:
    """Progress steps ``run_workload`` reports (for a progress bar's total)."""
    requests = settings.requests if settings.trace else settings.sessions * settings.turns
    return (requests or 0) + len(settings.restore_tokens)


def run_workload(settings: WorkloadSettings,
                 progress: Callable[[str], None] = lambda step: None) -> WorkloadResult:
    """Run the workload, then the restore-vs-recompute comparison (see the module docstring)."""
    start = time.perf_counter()
    trace = load_trace(settings.trace, limit=settings.requests) if settings.trace else None
    block_tokens = trace.block_tokens if trace is not None else settings.block_tokens
    model = model_spec(settings.model)
    page_bytes = settings.page_bytes or model.kv_bytes_per_token() * block_tokens
    tps = settings.prefill_tokens_per_s or 1.0 / gpu_spec(settings.gpu).prefill_seconds_per_token(model)
    result = WorkloadResult(model=settings.model, page_bytes=page_bytes, block_tokens=block_tokens,
                            prefill_tokens_per_s=tps,
                            source=str(settings.trace) if trace is not None else "synthetic sessions")
    namespace = Namespace(model=f"kvtier-bench/{settings.model}", dtype=model.dtype,
                          layout=f"bench-{block_tokens}")
    if trace is not None:
        requests = [(r.timestamp_s, [namespace.key_for_bytes(repr(b).encode()) for b in r.blocks],
                     r.input_tokens) for r in trace.requests]
    else:
        requests = [(t, namespace.prefix_keys(tokens, block_tokens), len(tokens))
                    for t, tokens in _sessions(settings)]
    with _scratch(settings.directory) as directory:
        clock = _Clock()
        with TieredStore(_store_config(settings, page_bytes, directory / "workload"), clock=clock) as store:
            _replay(store, clock, requests, result, settings, progress)
            stats = store.stats()
        result.tier_bytes = {t.name: {"in": t.bytes_in, "out": t.bytes_out} for t in stats.tiers}
        result.restore = [asdict(point) for point in
                          _restore_points(settings, page_bytes, block_tokens, tps,
                                                         directory / "restore", progress)]
    result.wall_s = time.perf_counter() - start
    return result


class _Clock:
    """The store's clock: virtual seconds, set by the replay."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _sessions(s: WorkloadSettings) -> list[tuple[float, list[int]]]:
    """(virtual arrival time, prompt tokens) of every turn of every session, by time."""
    rng = random.Random(s.seed)
    systems = [[rng.randrange(1, 50_000) for _ in range(s.system_tokens)] for _ in range(s.system_prompts)]
    events, start = [], 0.0
    for _ in range(s.sessions):
        start += rng.expovariate(1 / s.arrival_s) if s.arrival_s else 0.0
        history, at = list(rng.choice(systems)), start
        for _ in range(s.turns):
            history += [rng.randrange(1, 50_000) for _ in range(rng.randint(s.turn_tokens // 2, s.turn_tokens * 3 // 2))]
            events.append((at, list(history)))
            at += rng.expovariate(1 / s.think_s) if s.think_s else 0.0
    return sorted(events, key=lambda event: event[0])


def _store_config(s: WorkloadSettings, page_bytes: int, directory: Path, *,
                  host_bytes: int | None = None, disk_bytes: int | None = None,
                  write_mode: str = "write_back") -> StoreConfig:
    host = max(host_bytes if host_bytes is not None else s.host_bytes, page_bytes)
    disk = max(disk_bytes if disk_bytes is not None else s.disk_bytes, page_bytes)
    return StoreConfig(host=HostTierConfig(capacity_bytes=host, slot_bytes=page_bytes, prefault=False),
                       disk=DiskTierConfig(paths=(str(directory),), capacity_bytes=disk, fsync="never",
                                           write_mode=write_mode, promote_on_read=False,
                                           flush_on_close=False),
                       ttl_s=s.ttl_s, ttl_refresh="read")


def _replay(store: TieredStore, clock: _Clock, requests: Sequence[tuple[float, list[BlockKey], int]],
            result: WorkloadResult, s: WorkloadSettings, progress: Callable[[str], None]) -> None:
    seen: set[BlockKey] = set()
    buffers = [np.empty(result.page_bytes, np.uint8) for _ in range(_PUT_BATCH)]
    for number, (at, keys, tokens) in enumerate(requests, 1):
        clock.now = at
        plan = store.plan(keys, result.prefill_tokens_per_s, block_tokens=result.block_tokens)
        loaded, load_s = _load(store, keys, plan, buffers, result, s.verify_every)
        stored = plan.hit_blocks
        result.declined += stored - loaded if loaded < stored else 0
        if loaded < len(keys):
            reason = store.miss_reason(keys[loaded])
            name = "recompute_chosen" if reason is None else reason.value
            result.stopped_by[name] = result.stopped_by.get(name, 0) + 1
        for i in range(loaded, len(keys), _PUT_BATCH):
            batch = keys[i:i + _PUT_BATCH]
            store.batch_put(batch, [_fill(buf, key) for buf, key in zip(buffers, batch)])
        result.requests += 1
        result.pages += len(keys)
        result.logical_hits += sum(key in seen for key in keys)
        seen.update(keys)
        result.recomputed += len(keys) - loaded
        prefill = tokens - loaded * result.block_tokens
        result.tokens += tokens
        result.prefill_tokens += prefill
        result.modelled_ttft_s += load_s + prefill / result.prefill_tokens_per_s
        result.baseline_ttft_s += tokens / result.prefill_tokens_per_s
        progress(f"request {number}/{len(requests)}")


def _load(store: TieredStore, keys: list[BlockKey], plan: Plan, buffers: list[np.ndarray],
          result: WorkloadResult, verify_every: int) -> tuple[int, float]:
    """Load the pages the plan loads, in batches per tier run; how many leading pages came
    back, and the seconds it took. Every ``verify_every``-th loaded page is checked."""
    loaded, elapsed = 0, 0.0
    for run in plan.ranges:
        if run.action != LOAD:
            break
        for i in range(run.start, run.stop, len(buffers)):
            batch = keys[i:min(run.stop, i + len(buffers))]
            began = time.perf_counter()
            ok = store.batch_get_into(batch, buffers[:len(batch)])
            took = time.perf_counter() - began
            elapsed += took
            result.restore_s[run.tier] = result.restore_s.get(run.tier, 0.0) + took
            got = ok.index(False) if False in ok else len(ok)
            result.loaded[run.tier] = result.loaded.get(run.tier, 0) + got
            for j in range(got):
                if (loaded + j) % verify_every == 0:
                    _verify(batch[j], buffers[j], result)
            loaded += got
            if got < len(ok):
                return loaded, elapsed
    return loaded, elapsed


def _pattern(key: BlockKey) -> np.ndarray:
    return np.frombuffer(hashlib.shake_128(bytes(key)).digest(_PATTERN_BYTES), np.uint8)


def _fill(buffer: np.ndarray, key: BlockKey) -> np.ndarray:
    """``buffer`` filled with ``key``'s page (its pattern repeated)."""
    pattern = _pattern(key)
    rows = buffer.size // _PATTERN_BYTES
    buffer[:rows * _PATTERN_BYTES].reshape(rows, _PATTERN_BYTES)[:] = pattern
    buffer[rows * _PATTERN_BYTES:] = pattern[:buffer.size - rows * _PATTERN_BYTES]
    return buffer


def _verify(key: BlockKey, page: np.ndarray, result: WorkloadResult) -> None:
    rows = page.size // _PATTERN_BYTES
    pattern = _pattern(key)
    if not (np.array_equal(page[:rows * _PATTERN_BYTES].reshape(rows, _PATTERN_BYTES), np.broadcast_to(pattern, (rows, _PATTERN_BYTES)))
            and np.array_equal(page[rows * _PATTERN_BYTES:], pattern[:page.size - rows * _PATTERN_BYTES])):
        raise AssertionError(f"page {key} came back with other bytes than were stored")
    result.verified_pages += 1


def _restore_points(s: WorkloadSettings, page_bytes: int, block_tokens: int, tps: float,
                    directory: Path, progress: Callable[[str], None]) -> list[RestorePoint]:
    """Median time to get every page of each prefix from host, then from disk (see module doc);
    a prefix of ``n`` tokens is ``ceil(n / block_tokens)`` pages."""
    namespace = Namespace(model="kvtier-bench/restore", layout=f"bench-{block_tokens}")
    pages_of = {n: -(-n // block_tokens) for n in s.restore_tokens}
    most = max(pages_of.values())
    keys = namespace.prefix_keys(range(most * block_tokens), block_tokens)
    outs = [np.empty(page_bytes, np.uint8) for _ in range(_PUT_BATCH)]
    config = _store_config(dataclasses.replace(s, ttl_s=None), page_bytes, directory,
                           host_bytes=most * page_bytes, disk_bytes=most * page_bytes,
                           write_mode="write_through")
    points = []
    with TieredStore(config) as store:
        for i in range(0, most, _PUT_BATCH):
            batch = keys[i:i + _PUT_BATCH]
            store.batch_put(batch, [_fill(out, key) for out, key in zip(outs, batch)])
        store.flush()
        host = {n: _timed_restore(store, keys[:pages_of[n]], outs, s.restore_trials)
                for n in s.restore_tokens}
    # A second store on the same directory with a one-page host tier: every read is a disk read.
    with TieredStore(_store_config(s, page_bytes, directory, host_bytes=page_bytes,
                                   disk_bytes=most * page_bytes)) as store:
        for n in sorted(s.restore_tokens):
            disk = _timed_restore(store, keys[:pages_of[n]], outs, s.restore_trials, drop=directory)
            points.append(RestorePoint(n, pages_of[n], host[n], disk, n / tps))
            progress(f"restore {n:,} tokens")
    return points


def _timed_restore(store: TieredStore, keys: list[BlockKey], outs: list[np.ndarray], trials: int,
                   drop: Path | None = None) -> float:
    times = []
    for _ in range(trials):
        if drop is not None:
            drop_page_cache(drop)
        began = time.perf_counter()
        for i in range(0, len(keys), len(outs)):
            batch = keys[i:i + len(outs)]
            if not all(store.batch_get_into(batch, outs[:len(batch)])):
                raise AssertionError("a restore page went missing from the benchmark's own store")
        times.append(time.perf_counter() - began)
    return statistics.median(times)



@contextmanager
def _scratch(directory: str | None) -> Iterator[Path]:
    """A new directory under ``directory`` (or a temp dir), removed afterwards."""
    if directory is not None:
        path = Path(directory) / f"kvtier-bench-{os.getpid()}"
        path.mkdir(parents=True, exist_ok=False)
    else:
        path = Path(tempfile.mkdtemp(prefix="kvtier-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
