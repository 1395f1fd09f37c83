"""TierIndex with plain objects: no I/O, no clock, which is what lets the simulator reuse it."""

from __future__ import annotations

from kvtier.index import GhostList, SlotAllocator, TierIndex
from kvtier.metrics import MissReason
from kvtier.policy import LRUPolicy


def make(slots=2, *, pinned=1, on_drop=None):
    ghosts = GhostList(100)
    index = TierIndex("host", SlotAllocator(slots, 10), LRUPolicy(), ghosts, max_pinned_bytes=pinned * 10,
                      refresh_on_read=False, on_drop=on_drop)
    return index, ghosts


def put(index, key, now=0.0, *, ttl=None, pin=False):
    reservation = index.reserve(key, 10, now, pin)
    assert reservation is not None
    index.publish(key, reservation, 10, None if ttl is None else now + ttl, ttl, None)
    return reservation.location


def test_slot_allocator_is_lazy_and_reuses_freed_slots():
    alloc = SlotAllocator(10**12, 4096)  # a multi-PB tier costs nothing up front
    assert [alloc.allocate(1) for _ in range(3)] == [0, 1, 2] and alloc.used == 3
    alloc.free(1)
    assert alloc.allocate(1) == 1 and alloc.used == 3
    small = SlotAllocator(1, 4096)
    assert small.allocate(1) == 0 and small.allocate(1) is None


def test_a_slot_being_read_is_not_reused_until_the_reader_finishes():
    index, ghosts = make(slots=1, pinned=0)
    slot = put(index, "a")
    entry = index.find("a", 0)
    index.begin_read(entry, 0)
    assert index.reserve("b", 10, 0, False) is None  # the only block is busy: full, not evicted
    assert index.remove("a", MissReason.EVICTED)
    assert index.allocator.allocate(10) is None       # removed, but still being copied out
    index.end_read(entry, True)
    assert index.allocator.allocate(10) == slot


def test_aborted_read_keeps_the_block_and_failed_verification_drops_it():
    index, ghosts = make()
    put(index, "a")
    entry = index.find("a", 0)
    index.begin_read(entry, 0)
    index.end_read(entry, None)
    assert index.find("a", 0) is entry and index.hits == 0
    index.begin_read(entry, 0)
    index.end_read(entry, False)
    assert index.find("a", 0) is None and ghosts.detail("a") == (MissReason.CORRUPT, "host")
    assert index.allocator.used == 0


def test_on_drop_sees_evictions_and_expiries_only():
    dropped = []
    index, _ = make(slots=2, on_drop=lambda entry, reason: dropped.append((entry.key, reason)))
    put(index, "a", ttl=5)
    put(index, "b")
    put(index, "b")                      # replaced: not a drop
    put(index, "c")                      # evicts a (LRU)
    index.remove("c", MissReason.EVICTED)  # removed on request: not a drop
    put(index, "d", now=1, ttl=1)
    assert index.find("d", 3) is None    # expired
    assert dropped == [("a", MissReason.EVICTED), ("d", MissReason.EXPIRED)]


def test_pin_budget_counts_reservations_in_flight():
    index, _ = make(slots=4, pinned=1)
    reservation = index.reserve("a", 10, 0, True)
    assert reservation is not None and index.pinned_bytes == 10
    assert index.reserve("b", 10, 0, True) is None   # budget held by the write in flight
    index.abort(reservation)
    assert index.pinned_bytes == 0 and index.allocator.used == 0
    assert index.reserve("b", 10, 0, True) is not None
