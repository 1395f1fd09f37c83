"""The transfer engine: deadlines, cancellation, backpressure, batching, estimates, close."""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError, wait

import pytest

from kvtier import HostTierConfig, StoreConfig, TieredStore
from kvtier.config import DiskTierConfig
from kvtier.errors import StoreClosedError
from kvtier.transfer import DeadlineExceeded, TransferEngine


@pytest.fixture
def engine():
    eng = TransferEngine({"a->b": 2, "b->a": 1}, queue_depth=8)
    yield eng
    eng.close(timeout=10)


def blocker():
    """A job that runs until released, and the event that releases it."""
    gate = threading.Event()
    started = threading.Event()

    def job():
        started.set()
        assert gate.wait(10)
        return "done"
    return job, gate, started


def test_a_thousand_concurrent_futures_complete_with_their_own_results(engine):
    futures = {}

    def submitter(base):
        for i in range(base, base + 250):
            futures[i] = engine.submit("a->b", lambda x: x * x, i, nbytes=10)
    threads = [threading.Thread(target=submitter, args=(k * 250,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done, pending = wait(list(futures.values()), timeout=60)
    assert not pending
    assert all(f.result() == i * i for i, f in futures.items())
    stats = engine.stats()["a->b"]
    assert stats.ops == 1000 and stats.bytes == 10_000 and stats.queued == stats.running == 0


def test_a_job_not_started_by_its_deadline_never_runs_and_gives_back_its_slot():
    engine = TransferEngine({"r": 1})
    job, gate, started = blocker()
    engine.submit("r", job)
    assert started.wait(10)
    ran, given_back = [], []
    late = engine.submit("r", ran.append, 1, deadline_s=0.05, on_abandon=lambda: given_back.append(1))
    with pytest.raises(DeadlineExceeded):
        late.result(timeout=5)  # fails at its deadline, while the worker is still busy
    gate.set()
    engine.close(cancel_queued=False, timeout=10)
    assert ran == [] and given_back == [1]
    assert engine.stats()["r"].deadline_exceeded == 1


def test_a_running_job_past_its_deadline_fails_its_future_at_once():
    engine = TransferEngine({"r": 1})
    job, gate, started = blocker()
    future = engine.submit("r", job, deadline_s=0.05)
    assert started.wait(10)
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        future.result(timeout=5)
    assert time.monotonic() - t0 < 2  # the caller was not held until the job finished
    gate.set()
    engine.close(timeout=10)


def test_cancel_before_start_calls_on_abandon_and_never_runs(engine):
    job, gate, started = blocker()
    engine.submit("b->a", job)  # the only b->a worker is busy
    assert started.wait(10)
    ran, given_back = [], []
    future = engine.submit("b->a", ran.append, 1, on_abandon=lambda: given_back.append(1))
    assert future.cancel()
    gate.set()
    engine.submit("b->a", lambda: None).result(timeout=10)  # the queue has moved past it
    assert ran == [] and given_back == [1]
    with pytest.raises(CancelledError):
        future.result()


def test_backpressure_blocks_submit_until_room_or_deadline():
    engine = TransferEngine({"r": 1}, queue_depth=2)
    job, gate, started = blocker()
    engine.submit("r", job)
    assert started.wait(10)
    queued = [engine.submit("r", lambda: 1) for _ in range(2)]  # the queue is now full
    t0 = time.monotonic()
    refused = engine.submit("r", lambda: 1, deadline_s=0.1)
    assert time.monotonic() - t0 >= 0.09  # it waited for room, up to its deadline
    with pytest.raises(DeadlineExceeded):
        refused.result()
    later = threading.Thread(target=lambda: (time.sleep(0.1), gate.set()))
    later.start()
    assert engine.submit("r", lambda: 2).result(timeout=10) == 2  # blocked, then admitted
    later.join()
    assert [f.result() for f in queued] == [1, 1]
    engine.close(timeout=10)


def test_small_items_waiting_together_become_one_batch():
    engine = TransferEngine({"r": 1}, max_batch_items=5)
    job, gate, started = blocker()
    engine.submit("r", job)
    assert started.wait(10)
    calls = []

    def handler(items):
        calls.append(list(items))
        return [i * 10 for i in items]
    futures = [engine.submit_item("r", handler, i, nbytes=100) for i in range(12)]
    gate.set()
    assert [f.result(timeout=10) for f in futures] == [i * 10 for i in range(12)]
    assert [len(c) for c in calls] == [5, 5, 2]
    assert engine.stats()["r"].ops == 13
    engine.close(timeout=10)


def test_a_failing_batch_fails_each_of_its_futures(engine):
    def handler(items):
        raise OSError("disk gone")
    futures = [engine.submit_item("a->b", handler, i) for i in range(3)]
    for f in futures:
        with pytest.raises(OSError, match="disk gone"):
            f.result(timeout=10)
    assert engine.stats()["a->b"].errors >= 1


def test_estimates_follow_measurements(engine):
    assert engine.estimate("a->b") == (None, None)
    engine.record("a->b", 1_000_000, 0.001)
    bandwidth, latency = engine.estimate("a->b")
    assert bandwidth == pytest.approx(1e9) and latency == pytest.approx(0.001)
    for _ in range(50):
        engine.record("a->b", 1_000_000, 0.01)
    assert engine.estimate("a->b")[0] == pytest.approx(1e8, rel=0.01)
    assert engine.run("a->b", 5, lambda: "x") == "x"


def test_close_cancels_queued_work_and_waits_for_running_work():
    engine = TransferEngine({"r": 1})
    job, gate, started = blocker()
    running = engine.submit("r", job)
    assert started.wait(10)
    given_back = []
    queued = [engine.submit("r", lambda: 1, on_abandon=lambda: given_back.append(1)) for _ in range(5)]
    threading.Timer(0.1, gate.set).start()
    engine.close(timeout=10)
    assert running.result() == "done"  # finished, not lost
    assert all(f.cancelled() for f in queued) and given_back == [1] * 5
    with pytest.raises(StoreClosedError):
        engine.submit("r", lambda: 1)


def test_unknown_route_and_bad_deadline_are_clear_errors(engine):
    with pytest.raises(ValueError, match="no route 'x'"):
        engine.submit("x", lambda: 1)
    with pytest.raises(ValueError, match="deadline_s must be >= 0"):
        engine.submit("a->b", lambda: 1, deadline_s=-1)


# -- through the store -------------------------------------------------------------------------
SLOT = 64 << 10


def disk_store(path, **disk) -> TieredStore:
    config = StoreConfig(
        host=HostTierConfig(capacity_bytes=4 * SLOT, slot_bytes=SLOT, prefault=False),
        disk=DiskTierConfig(paths=[str(path)], capacity_bytes=256 * SLOT, min_free_bytes=0,
                            fsync="never", **disk))
    return TieredStore(config)


def fill(store: TieredStore, count: int) -> dict[bytes, bytes]:
    pages = {f"k{i}".encode(): bytes([i % 251]) * SLOT for i in range(count)}
    for key, value in pages.items():
        assert store.put(key, value)
    return pages


def test_a_prefetch_past_its_deadline_fails_and_leaks_no_host_slot(tmp_path):
    with disk_store(tmp_path) as store:
        pages = fill(store, 12)  # k0..k7 are on disk only
        used = store.stats().tier("host").slots_used
        with pytest.raises(DeadlineExceeded):
            store.prefetch(list(pages)[:4], deadline_s=0).result(timeout=10)
        assert store.stats().tier("host").slots_used == used
        assert store.stats().routes["disk->host"].deadline_exceeded == 1
        for key, value in pages.items():
            assert bytes(store.get(key)) == value


def test_disk_moves_are_measured_per_route(tmp_path):
    with disk_store(tmp_path, codec="none") as store:
        pages = fill(store, 12)
        for key in reversed(pages):  # the last four from host, then the rest from disk
            store.get(key)
        routes = store.stats().routes
    assert routes["host->disk"].bytes >= 8 * SLOT and routes["host->disk"].bandwidth_Bps > 0
    assert routes["disk->host"].bytes >= 8 * SLOT and routes["disk->host"].latency_s > 0
    assert routes["host->caller"].bytes >= SLOT


def test_closing_with_prefetches_in_flight_neither_hangs_nor_loses_a_page(tmp_path):
    with disk_store(tmp_path) as store:
        pages = fill(store, 64)
        futures = [store.prefetch([key]) for key in pages]
    for future in futures:  # each one either ran or was cancelled by close()
        assert future.cancelled() or future.result(timeout=10) in (0, 1)
    with disk_store(tmp_path) as store:  # every committed page is still there
        for key, value in pages.items():
            assert bytes(store.get(key)) == value
    with pytest.raises(StoreClosedError):
        store.prefetch([b"k0"])


def test_prefetches_queued_together_share_one_read(tmp_path):
    with disk_store(tmp_path) as store:
        pages = fill(store, 12)
        keys = list(pages)[:4]
        gate, started = threading.Event(), threading.Event()

        def hold(requests):
            started.set()
            gate.wait(10)
            return [0] * len(requests)
        store._engine.submit_item("disk->host", hold, None)  # occupy both workers
        store._engine.submit_item("disk->host", hold, None)
        assert started.wait(10)
        reads = []
        real_read = store._disk.read_many
        store._disk.read_many = lambda slots, *a: (reads.append(len(slots)), real_read(slots, *a))[1]
        futures = [store.prefetch([key]) for key in keys]
        gate.set()
        assert [f.result(timeout=10) for f in futures] == [1, 1, 1, 1]
        assert reads == [4]  # one batched read for the four prefetches
