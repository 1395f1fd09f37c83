"""The transfer engine: every move between tiers goes through it, and it learns their speed.

A *route* is one direction between two places, e.g. ``"host->disk"`` or ``"disk->host"``.
Per route the engine has:

* a worker pool with a **bounded queue**: ``submit`` blocks while the queue is full
  (backpressure), but never past the job's deadline;
* **futures with deadlines and cancellation**: a job not started by its deadline is never run,
  and one still running at its deadline fails its future with ``DeadlineExceeded`` at once
  (the work itself finishes in the background and releases what it holds: a disk read cannot
  be interrupted). ``future.cancel()`` works until a worker picks the job up. Either way the
  job's ``on_abandon`` callback runs exactly when the job never ran, so reserved slots are
  given back;
* **batching of small pages**: ``submit_item`` jobs with the same handler that wait in the
  queue together are handed to one handler call (up to ``max_batch_items`` items or
  ``max_batch_bytes`` bytes), so many one-page requests cost one batched I/O;
* an **online estimate** of bandwidth (bytes/s) and latency (s per call) as EWMAs, from every
  transfer it runs or is told about (``run`` executes inline on the caller's thread and is
  measured the same way; a queued job submitted with ``nbytes=0`` is counted, not measured,
  since the transfers inside it measure themselves). ``stats()`` exposes them; the planner
  reads them.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from concurrent.futures import CancelledError, Future, InvalidStateError
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .errors import KvtierError, StoreClosedError


class DeadlineExceeded(KvtierError, TimeoutError):
    """A transfer did not finish before its deadline (a future's ``exception()``/``result()``)."""


@dataclass(frozen=True, slots=True)
class RouteStats:
    """One route's counters and estimates at the time of ``stats()``."""

    name: str
    ops: int                # transfers completed (a batched call counts its items)
    bytes: int              # bytes moved by them
    errors: int             # jobs that raised
    deadline_exceeded: int  # futures failed by their deadline (started or not)
    cancelled: int          # jobs cancelled before they started
    queued: int             # jobs waiting now
    running: int            # jobs running now
    bandwidth_Bps: float | None  # EWMA of bytes/s per call (None: nothing measured yet)
    latency_s: float | None      # EWMA of seconds per call


class _Job:
    __slots__ = ("fn", "args", "handler", "item", "nbytes", "future", "deadline", "on_abandon", "route")

    def __init__(self, fn: Callable | None, args: tuple, handler: Callable | None, item: Any,
                 nbytes: int, deadline: float | None, on_abandon: Callable[[], None] | None) -> None:
        self.fn, self.args, self.handler, self.item = fn, args, handler, item
        self.nbytes, self.deadline, self.on_abandon = nbytes, deadline, on_abandon
        self.future: Future = Future()
        self.route: _Route | None = None


class _Route:
    def __init__(self, name: str, workers: int, queue_depth: int, alpha: float) -> None:
        self.name, self.workers, self.queue_depth, self.alpha = name, workers, queue_depth, alpha
        self.queue: deque[_Job] = deque()
        self.threads: list[threading.Thread] = []
        self.running = 0
        self.ops = self.bytes = self.errors = self.deadline_exceeded = self.cancelled = 0
        self.bandwidth: float | None = None
        self.latency: float | None = None

    def measure(self, nbytes: int, seconds: float, ops: int) -> None:
        """Fold one call (``ops`` transfers, ``nbytes`` bytes) into the estimates. Lock held."""
        self.ops += ops
        self.bytes += nbytes
        seconds = max(seconds, 1e-9)
        latency = seconds
        if self.latency is None:
            self.latency = latency
        else:
            self.latency += self.alpha * (latency - self.latency)
        if nbytes:
            rate = nbytes / seconds
            self.bandwidth = rate if self.bandwidth is None else self.bandwidth + self.alpha * (rate - self.bandwidth)


class TransferEngine:
    """Per-route worker pools, deadlines, batching and bandwidth estimates (see module doc).

    Args:
        routes: route name -> worker threads (started on first ``submit``).
        queue_depth: jobs a route queues before ``submit`` blocks.
        max_batch_items, max_batch_bytes: the most ``submit_item`` jobs one handler call takes.
        alpha: EWMA weight of the newest measurement.
    """

    def __init__(self, routes: dict[str, int], *, queue_depth: int = 256, max_batch_items: int = 64,
                 max_batch_bytes: int = 64 << 20, alpha: float = 0.2) -> None:
        if queue_depth < 1 or max_batch_items < 1 or not 0 < alpha <= 1:
            raise ValueError("queue_depth and max_batch_items must be >= 1, alpha in (0, 1]")
        self._routes = {name: _Route(name, max(1, n), queue_depth, alpha) for name, n in routes.items()}
        self.max_batch_items, self.max_batch_bytes = max_batch_items, max_batch_bytes
        self._lock = threading.Condition()
        self._closed = False
        self._deadlines: list[tuple[float, int, _Job]] = []  # heap, watched by one thread
        self._tick = itertools.count()
        self._watcher: threading.Thread | None = None

    # -- measured inline work ----------------------------------------------------------------
    def run(self, route: str, nbytes: int, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the caller's thread, measured as one transfer of ``nbytes``."""
        start = time.perf_counter()
        try:
            result = fn(*args)
        except BaseException:
            with self._lock:
                self._route(route).errors += 1
            raise
        self.record(route, nbytes, time.perf_counter() - start)
        return result

    def record(self, route: str, nbytes: int, seconds: float, ops: int = 1) -> None:
        """Tell the engine about a transfer measured elsewhere."""
        with self._lock:
            self._route(route).measure(nbytes, seconds, ops)

    def estimate(self, route: str) -> tuple[float | None, float | None]:
        """``(bandwidth bytes/s, latency s)`` of ``route`` so far (``None`` where unmeasured)."""
        with self._lock:
            r = self._route(route)
            return r.bandwidth, r.latency

    # -- queued work -------------------------------------------------------------------------
    def submit(self, route: str, fn: Callable[..., Any], *args: Any, nbytes: int = 0,
               deadline_s: float | None = None, on_abandon: Callable[[], None] | None = None) -> Future:
        """Run ``fn(*args)`` on ``route``'s workers; the future gives its result."""
        return self._enqueue(route, _Job(fn, args, None, None, nbytes, _deadline(deadline_s), on_abandon))

    def submit_item(self, route: str, handler: Callable[[list[Any]], Sequence[Any]], item: Any, *,
                    nbytes: int = 0, deadline_s: float | None = None,
                    on_abandon: Callable[[], None] | None = None) -> Future:
        """Queue ``item`` for ``handler``, which takes a list of items and returns one result
        per item; items queued together are batched into one call."""
        return self._enqueue(route, _Job(None, (), handler, item, nbytes, _deadline(deadline_s), on_abandon))

    def _enqueue(self, name: str, job: _Job) -> Future:
        with self._lock:
            route = self._route(name)
            while len(route.queue) >= route.queue_depth and not self._closed:
                remaining = None if job.deadline is None else job.deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    route.deadline_exceeded += 1
                    _abandon(job, DeadlineExceeded(f"{name}: queue full until the deadline"))
                    return job.future
                self._lock.wait(remaining)
            if self._closed:
                raise StoreClosedError("the transfer engine is closed")
            job.route = route
            route.queue.append(job)
            if len(route.threads) < route.workers and len(route.queue) > 0:
                self._start_worker(route)
            if job.deadline is not None:
                heapq.heappush(self._deadlines, (job.deadline, next(self._tick), job))
                self._start_watcher()
            self._lock.notify_all()
        return job.future

    def _start_worker(self, route: _Route) -> None:
        thread = threading.Thread(target=self._work, args=(route,), daemon=True,
                                  name=f"kvtier-{route.name}-{len(route.threads)}")
        route.threads.append(thread)
        thread.start()

    def _work(self, route: _Route) -> None:
        while True:
            with self._lock:
                while not route.queue and not self._closed:
                    self._lock.wait()
                if not route.queue:
                    return  # closed and drained
                jobs = self._take(route)
                route.running += len(jobs)
                self._lock.notify_all()  # room in the queue
            try:
                self._execute(route, jobs)
            finally:
                with self._lock:
                    route.running -= len(jobs)
                    self._lock.notify_all()

    def _take(self, route: _Route) -> list[_Job]:
        """The next job, plus (for an item job) every queued item job of the same handler
        that fits in one batch. Lock held."""
        first = route.queue.popleft()
        if first.handler is None:
            return [first]
        jobs, size, rest = [first], first.nbytes, deque()
        while route.queue and len(jobs) < self.max_batch_items:
            job = route.queue.popleft()
            if job.handler == first.handler and size + job.nbytes <= self.max_batch_bytes:
                jobs.append(job)
                size += job.nbytes
            else:
                rest.append(job)
        route.queue.extendleft(reversed(rest))
        return jobs

    def _execute(self, route: _Route, jobs: list[_Job]) -> None:
        live, dropped = [], []
        with self._lock:  # the deadline watcher settles futures under this lock too
            now = time.monotonic()
            for job in jobs:
                if job.future.done():  # cancelled, or failed by its deadline while queued
                    route.cancelled += job.future.cancelled()
                    dropped.append(job)
                elif job.deadline is not None and job.deadline <= now:
                    route.deadline_exceeded += 1
                    _settle(job.future, exception=DeadlineExceeded(
                        f"{route.name}: not started before its deadline"))
                    dropped.append(job)
                else:
                    job.future.set_running_or_notify_cancel()
                    live.append(job)
        for job in dropped:
            if job.on_abandon is not None:
                job.on_abandon()
        if not live:
            return
        start = time.perf_counter()
        try:
            if live[0].handler is None:
                results = [live[0].fn(*live[0].args)]
            else:
                results = list(live[0].handler([job.item for job in live]))
                if len(results) != len(live):
                    raise RuntimeError(f"batch handler returned {len(results)} results for {len(live)} items")
        except BaseException as exc:
            with self._lock:
                route.errors += len(live)
            for job in live:
                _settle(job.future, exception=exc)
            return
        seconds = time.perf_counter() - start
        nbytes = sum(job.nbytes for job in live)
        with self._lock:
            if nbytes:
                route.measure(nbytes, seconds, len(live))
            else:  # e.g. a prefetch: its inner transfers measure themselves (``run``)
                route.ops += len(live)
        for job, result in zip(live, results):
            _settle(job.future, result=result)

    # -- deadlines of running jobs -----------------------------------------------------------
    def _start_watcher(self) -> None:
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, daemon=True, name="kvtier-deadlines")
            self._watcher.start()

    def _watch(self) -> None:
        """Fail each future whose deadline passes, queued or running, at that moment."""
        with self._lock:
            while not (self._closed and not self._deadlines):
                if not self._deadlines:
                    self._lock.wait()
                    continue
                deadline, _, job = self._deadlines[0]
                wait = deadline - time.monotonic()
                if wait > 0 and not job.future.done():
                    self._lock.wait(wait)
                    continue
                heapq.heappop(self._deadlines)
                if _settle(job.future, exception=DeadlineExceeded(
                        f"{job.route.name}: deadline passed before the transfer finished")):
                    job.route.deadline_exceeded += 1

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self, *, cancel_queued: bool = True, timeout: float | None = None) -> None:
        """Stop taking work; cancel queued jobs (or let them drain) and wait for running ones."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if cancel_queued:
                for route in self._routes.values():
                    while route.queue:
                        job = route.queue.popleft()
                        route.cancelled += 1
                        _abandon(job, None)
            self._lock.notify_all()
        threads = [t for r in self._routes.values() for t in r.threads]
        end = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            thread.join(None if end is None else max(0.0, end - time.monotonic()))
        if self._watcher is not None:
            self._watcher.join(None if end is None else max(0.0, end - time.monotonic()))

    def stats(self) -> dict[str, RouteStats]:
        with self._lock:
            return {r.name: RouteStats(r.name, r.ops, r.bytes, r.errors, r.deadline_exceeded,
                                       r.cancelled, len(r.queue), r.running, r.bandwidth, r.latency)
                    for r in self._routes.values()}

    def _route(self, name: str) -> _Route:
        try:
            return self._routes[name]
        except KeyError:
            raise ValueError(f"no route {name!r}; routes: {sorted(self._routes)}") from None


def _deadline(deadline_s: float | None) -> float | None:
    if deadline_s is None:
        return None
    if not deadline_s >= 0:
        raise ValueError(f"deadline_s must be >= 0, got {deadline_s!r}")
    return time.monotonic() + deadline_s


def _abandon(job: _Job, exc: BaseException | None) -> None:
    """A job that will never run: fail (or cancel) its future and give back what it holds."""
    if exc is None:
        job.future.cancel()
    else:
        _settle(job.future, exception=exc)
    if job.on_abandon is not None:
        job.on_abandon()


def _settle(future: Future, *, result: Any = None, exception: BaseException | None = None) -> bool:
    """Complete ``future`` unless its deadline already failed it; whether this call did."""
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)
        return True
    except InvalidStateError:
        return False


__all__ = ["CancelledError", "DeadlineExceeded", "RouteStats", "TransferEngine"]
