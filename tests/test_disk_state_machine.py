"""Hypothesis state machine: the store with its disk tier against a plain dict, across restarts.

The host tier is tiny (2-4 slots), so nearly every operation demotes or promotes pages; the
disk tier is far larger than the key space, so it never evicts. That keeps the model exact:
every key put (and not explicitly evicted) comes back byte-exact with its latest value, from
whichever tier holds it, also after any number of close/reopen cycles on the same directory.
Pins are not persisted: a restart drops them. Write-back stores always flush on close (so a
clean restart loses nothing); write-through stores sometimes do not (they need not).

TTLs travel with a page between tiers and across restarts (deadlines are stored as wall-clock
times, so the store's wall clock follows the fake monotonic clock here: a restart then keeps
deadlines exactly). Half the keys may carry a TTL and are never pinned, the other half may be
pinned and never carry a TTL, so "expired" is exactly "deadline <= now" (a pin would stop it)
for every key. With ``ttl_refresh="read"`` every hit moves the deadline, in whichever tier it
lands (and across restarts); a prefetch is not a read and moves none.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from conftest import FakeClock
from kvtier import HostTierConfig, MissReason, StoreConfig, TieredStore
from kvtier.config import DiskTierConfig

SLOT = 8192
DISK_SLOTS = 32  # > 2 x the key space: the disk tier never has to evict
PINNED_FRACTION = 0.5
TTL_KEYS = [b"k%d" % i for i in range(4)]  # may carry a TTL, never pinned
PIN_KEYS = [b"k%d" % i for i in range(4, 8)]  # may be pinned, never carry a TTL
KEYS = st.sampled_from(TTL_KEYS + PIN_KEYS)
SIZES = st.one_of(st.sampled_from([SLOT, 4096, 5000, 4097, SLOT - 1, 1]), st.integers(1, SLOT))
WRITE_MODES = st.sampled_from(["write_back", "write_through"])
TTLS = st.sampled_from([5.0, 20.0, None])
WALL_OFFSET = 1_700_000_000.0  # integral: deadline conversions stay exact in floating point


class WallFollowsClock:
    """Stands in for the ``time`` module inside kvtier's modules: ``time()`` is the fake clock
    plus a fixed offset, everything else is the real module."""

    def __init__(self, clock: FakeClock) -> None:
        self._clock = clock

    def time(self) -> float:
        return self._clock.now + WALL_OFFSET

    def __getattr__(self, name: str):
        return getattr(time, name)


def kvtier_modules_using_time() -> list:
    """The loaded kvtier modules that call ``time.time()`` & co. through the ``time`` module."""
    return [m for name, m in list(sys.modules.items())
            if (name == "kvtier" or name.startswith("kvtier.")) and getattr(m, "time", None) is time]


def follow_clock(clock: FakeClock) -> list:
    """Point every loaded kvtier module's ``time`` at ``clock``; returns them (to restore)."""
    modules = kvtier_modules_using_time()
    for module in modules:
        module.time = WallFollowsClock(clock)
    return modules


class DiskStoreMachine(RuleBasedStateMachine):
    """The model: ``values`` (key -> latest bytes), ``deadlines`` (key -> fake-clock deadline
    or None), ``ghosts`` (key -> miss reason other than ``never_stored``, until the next
    restart) and ``maybe_pinned`` (keys a pin may hold now: a superset)."""

    @initialize(host_slots=st.integers(2, 4), paths=st.integers(1, 2), write_mode=WRITE_MODES,
                flush_on_close=st.booleans(), promote=st.booleans(), direct_io=st.booleans(),
                disk_slot_bytes=st.sampled_from([SLOT, 10_000]), policy=st.sampled_from(["lru", "ttl"]),
                verify=st.booleans(), refresh=st.sampled_from(["write", "read"]))
    def open(self, host_slots, paths, write_mode, flush_on_close, promote, direct_io,
             disk_slot_bytes, policy, verify, refresh):
        self.clock = FakeClock()
        self.patched = follow_clock(self.clock)
        self.root = tempfile.mkdtemp(prefix="kvtier-sm-")
        self.paths = [f"{self.root}/d{i}" for i in range(paths)]
        self.host_slots = host_slots
        self.disk_slot_bytes, self.policy, self.verify = disk_slot_bytes, policy, verify
        self.refresh = refresh
        self.pin_limit = int(host_slots * SLOT * PINNED_FRACTION) // SLOT
        self.values: dict[bytes, bytes] = {}
        self.deadlines: dict[bytes, float | None] = {}
        self.ttls: dict[bytes, float | None] = {}
        self.ghosts: dict[bytes, MissReason] = {}
        self.maybe_pinned: set[bytes] = set()
        self.version = 0
        self.store = None
        self._open(write_mode, flush_on_close, promote, direct_io)

    def _open(self, write_mode, flush_on_close, promote, direct_io):
        self.write_mode = write_mode
        disk = DiskTierConfig(
            paths=self.paths, capacity_bytes=DISK_SLOTS * self.disk_slot_bytes,
            slot_bytes=self.disk_slot_bytes, min_free_bytes=0, fsync="never",
            direct_io=direct_io, write_mode=write_mode, promote_on_read=promote,
            flush_on_close=flush_on_close or write_mode == "write_back")
        host = HostTierConfig(capacity_bytes=self.host_slots * SLOT, slot_bytes=SLOT, prefault=False,
                              verify_checksums=self.verify)
        self.store = TieredStore(StoreConfig(host=host, disk=disk, policy=self.policy,
                                             ttl_refresh=self.refresh,
                                             max_pinned_fraction=PINNED_FRACTION), clock=self.clock)

    def teardown(self):
        try:
            if getattr(self, "store", None) is not None:
                self.store.close()
        finally:
            for module in getattr(self, "patched", ()):
                module.time = time
            if hasattr(self, "root"):
                shutil.rmtree(self.root, ignore_errors=True)

    # -- helpers -------------------------------------------------------------------------------
    def _value(self, size: int) -> bytes:
        self.version += 1
        return (self.version.to_bytes(4, "little") * (size // 4 + 1))[:size]

    def _host_pinned(self) -> int:
        return self.store.stats().tier("host").pinned_bytes // SLOT

    def _expire(self) -> None:
        now = self.clock.now
        for key, deadline in list(self.deadlines.items()):
            if deadline is not None and deadline <= now:
                self._drop(key, MissReason.EXPIRED)

    def _drop(self, key: bytes, reason: MissReason) -> None:
        del self.values[key], self.deadlines[key], self.ttls[key]
        self.ghosts[key] = reason

    def _stored(self, key: bytes, value: bytes, ttl: float | None) -> None:
        self.values[key] = value
        self.deadlines[key] = None if ttl is None else self.clock.now + ttl
        self.ttls[key] = ttl
        self.ghosts.pop(key, None)

    def _read(self, key: bytes) -> bytes | None:
        """The model's answer to a read of ``key`` (a hit extends its window with "read")."""
        if key in self.values and self.refresh == "read" and self.ttls[key] is not None:
            self.deadlines[key] = self.clock.now + self.ttls[key]
        return self.values.get(key)

    def _assert_miss(self, key: bytes) -> None:
        assert self.store.miss_reason(key) == self.ghosts.get(key, MissReason.NEVER_STORED)

    # -- writes --------------------------------------------------------------------------------
    @rule(key=KEYS, size=SIZES, pin=st.booleans(), ttl=TTLS)
    def put(self, key, size, pin, ttl):
        self._expire()
        if key in TTL_KEYS:
            pin = False
        else:
            ttl = None
        value = self._value(size)
        pinned_before = self._host_pinned()
        ok = self.store.put(key, value, pin=pin, ttl_s=ttl)
        if not pin or pinned_before < self.pin_limit:
            assert ok  # the host tier always makes room by demoting; only a spent pin budget refuses
        if ok:
            self._stored(key, value, ttl)
            if pin:
                self.maybe_pinned.add(key)
        else:
            assert pinned_before >= self.pin_limit

    @rule(items=st.lists(st.tuples(st.integers(0, 3), SIZES), min_size=1, max_size=6),
          group=st.sampled_from([TTL_KEYS, PIN_KEYS]), pin=st.booleans(), ttl=TTLS)
    def batch_put(self, items, group, pin, ttl):
        self._expire()
        values = [self._value(size) for _, size in items]
        keys = [group[i] for i, _ in items]
        if group is TTL_KEYS:
            pin = False
        else:
            ttl = None
        free = self.host_slots - self._host_pinned()
        admitted = self.store.batch_put(keys, values, pin=pin, ttl_s=ttl)
        if not pin and not self.maybe_pinned.intersection(keys):
            # every unpinned host page is demoted to make room; the tail that does not fit is refused
            fits = min(len(keys), free)
            assert admitted == [True] * fits + [False] * (len(keys) - fits)
        for key, value, ok in zip(keys, values, admitted):
            if ok:
                self._stored(key, value, ttl)
                if pin:
                    self.maybe_pinned.add(key)

    @rule(key=KEYS)
    def evict(self, key):
        self._expire()
        present = key in self.values
        assert self.store.evict(key) == present
        if present:
            self._drop(key, MissReason.EVICTED)
        self.maybe_pinned.discard(key)

    @rule()
    def flush(self):
        self._expire()
        before = self.store.stats().tier("disk").entries
        assert self.store.flush() == len(self.values) - before
        assert self.store.stats().tier("disk").entries == len(self.values)

    @rule(write_mode=WRITE_MODES, flush_on_close=st.booleans(), promote=st.booleans(),
          direct_io=st.booleans())
    def restart(self, write_mode, flush_on_close, promote, direct_io):
        self._expire()
        self.store.close()
        self.store = None
        self._open(write_mode, flush_on_close, promote, direct_io)
        self.ghosts.clear()  # miss reasons are not persisted
        self.maybe_pinned.clear()  # nor are pins
        stats = self.store.stats()
        assert stats.tier("host").entries == 0
        assert stats.tier("disk").entries == len(self.values)
        assert stats.tier("disk").pinned_bytes == 0
        assert stats.tier("disk").extra["dropped_at_open"] == 0
        assert stats.tier("disk").expirations == 0  # expired pages were not written back

    @rule(seconds=st.sampled_from([1.0, 4.0, 5.0, 6.0, 25.0]))
    def advance_clock(self, seconds):
        self.clock.advance(seconds)

    @rule(key=KEYS, to_the_edge=st.booleans())
    def advance_to_deadline(self, key, to_the_edge):
        """Move the clock to just before (or exactly to) ``key``'s deadline: where an off-by-one
        or a deadline that did not travel with the page shows."""
        deadline = self.deadlines.get(key)
        if deadline is not None and deadline - 1.0 > self.clock.now:
            self.clock.now = deadline if to_the_edge else deadline - 1.0

    # -- pins ----------------------------------------------------------------------------------
    @rule(key=st.sampled_from(PIN_KEYS))
    def pin(self, key):
        self._expire()
        pinned_before = self._host_pinned()
        ok = self.store.pin(key)
        if key not in self.values:
            assert not ok
        elif ok:
            self.maybe_pinned.add(key)
        else:  # only the host tier's budget can be spent (the disk tier's is far larger)
            assert pinned_before >= self.pin_limit

    @rule(key=KEYS)
    def unpin(self, key):
        self._expire()
        assert self.store.unpin(key) == (key in self.values)
        self.maybe_pinned.discard(key)

    # -- reads ---------------------------------------------------------------------------------
    @rule(key=KEYS)
    def get(self, key):
        self._expire()
        got = self.store.get(key)
        assert (None if got is None else bytes(got)) == self._read(key)
        if got is None:
            self._assert_miss(key)

    @rule(key=KEYS, size=SIZES)
    def get_into(self, key, size):
        self._expire()
        expected = self._read(key)
        out = bytearray(size if expected is None else len(expected))
        assert self.store.get_into(key, out) == (expected is not None)
        if expected is not None:
            assert bytes(out) == expected

    @rule(keys=st.lists(KEYS, max_size=6))
    def batch_get(self, keys):
        self._expire()
        got = self.store.batch_get(keys)
        assert [None if g is None else bytes(g) for g in got] == [self._read(k) for k in keys]

    @rule(keys=st.lists(KEYS, max_size=6))
    def batch_get_into(self, keys):
        self._expire()
        present = [k for k in keys if k in self.values]
        outs = [bytearray(len(self.values[k])) for k in present]
        assert self.store.batch_get_into(present, outs) == [True] * len(present)
        assert [bytes(o) for o in outs] == [self._read(k) for k in present]

    @rule(key=KEYS)
    def contains(self, key):
        self._expire()
        assert self.store.contains(key) == (key in self.values)

    @rule(keys=st.lists(KEYS, max_size=6))
    def lookup_prefix(self, keys):
        self._expire()
        expected = 0
        while expected < len(keys) and keys[expected] in self.values:
            expected += 1
        assert self.store.lookup_prefix(keys) == expected

    @rule(keys=st.lists(KEYS, max_size=4))  # a prefetch is not a read: it opens no window
    def prefetch(self, keys):
        self._expire()
        brought = self.store.prefetch(keys).result(timeout=30)
        assert 0 <= brought <= len(set(keys) & set(self.values))

    # -- invariants ----------------------------------------------------------------------------
    @invariant()
    def tiers_hold_exactly_the_model(self):
        if getattr(self, "store", None) is None:
            return
        self._expire()
        stats = self.store.stats()
        host, disk = stats.tier("host"), stats.tier("disk")
        assert host.slots_used == host.entries <= host.slots_total == self.host_slots
        assert host.pinned_bytes <= self.host_slots * SLOT * PINNED_FRACTION
        assert disk.slots_used == disk.entries <= DISK_SLOTS
        assert disk.evictions == 0
        # every key lives in host, on disk or both; nothing else does
        assert max(host.entries, disk.entries) <= len(self.values) <= host.entries + disk.entries
        if self.write_mode == "write_through":
            # every put reached disk before it returned, and a read-refreshed page stays there
            assert disk.entries == len(self.values)
            assert disk.used_bytes == sum(len(v) for v in self.values.values())
        assert stats.misses.get(MissReason.CORRUPT.value, 0) == 0
        assert disk.extra["io_errors"] == 0


TestDiskStoreMachine = DiskStoreMachine.TestCase
TestDiskStoreMachine.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)


# -- bugs the machine ran into, pinned down by hand ------------------------------------------
def _small_store(tmp_path, clock, **kwargs) -> TieredStore:
    disk = DiskTierConfig(paths=[str(tmp_path)], capacity_bytes=DISK_SLOTS * SLOT, min_free_bytes=0,
                          fsync="never", write_mode=kwargs.pop("write_mode", "write_back"))
    host = HostTierConfig(capacity_bytes=2 * SLOT, slot_bytes=SLOT, prefault=False)
    return TieredStore(StoreConfig(host=host, disk=disk, **kwargs), clock=clock)


def test_prefetch_counts_and_makes_room_for_each_page_once(tmp_path, clock):
    with _small_store(tmp_path, clock) as store:
        for key in (b"a", b"b", b"c"):
            assert store.put(key, key * 100)  # two host slots: `a` goes to disk
        assert store.prefetch([b"a", b"a"]).result(timeout=30) == 1
        assert store.stats().tier("host").entries == 2  # one page came up, one went down


@pytest.mark.parametrize("write_mode", ["write_back", "write_through"])
def test_a_read_refreshed_deadline_survives_demotion(tmp_path, clock, write_mode):
    with _small_store(tmp_path, clock, write_mode=write_mode, ttl_s=10, ttl_refresh="read") as store:
        start = clock.now
        assert store.put(b"k", b"v" * 100)              # deadline start+10
        assert store.put(b"x", b"x") and store.put(b"y", b"y")  # `k` demoted to disk
        clock.now = start + 2
        assert store.get(b"k") is not None              # disk hit: deadline start+12, promoted
        clock.now = start + 8
        assert store.get(b"k") is not None              # host hit: deadline start+18
        assert store.put(b"a", b"a") and store.put(b"b", b"b")  # `k` leaves the host tier again
        clock.now = start + 14                          # a read at start+8 promised 10 more seconds
        assert store.get(b"k") is not None, store.miss_reason(b"k")


@pytest.fixture
def wall_follows(clock, monkeypatch):
    """kvtier's wall clock follows the fake monotonic clock (deadlines survive a restart exactly)."""
    for module in kvtier_modules_using_time():
        monkeypatch.setattr(module, "time", WallFollowsClock(clock))
    return clock


@pytest.mark.parametrize("write_mode", ["write_back", "write_through"])
def test_a_read_refreshed_deadline_survives_a_restart(tmp_path, wall_follows, write_mode):
    clock = wall_follows
    start = clock.now
    with _small_store(tmp_path, clock, write_mode=write_mode, ttl_s=10, ttl_refresh="read") as store:
        assert store.put(b"k", b"v" * 100)              # deadline start+10
        assert store.flush() in (0, 1)                  # on disk too now (write-through: already)
        clock.now = start + 8
        assert store.get(b"k") is not None              # host hit: deadline start+18
    clock.now = start + 14
    with _small_store(tmp_path, clock, write_mode=write_mode, ttl_s=10, ttl_refresh="read") as store:
        assert store.get(b"k") is not None, store.miss_reason(b"k")


def test_a_write_through_page_stays_on_disk_while_reads_keep_it_alive(tmp_path, clock):
    cfg = dict(write_mode="write_through", ttl_s=10, ttl_refresh="read")
    with _small_store(tmp_path, clock, **cfg) as store:
        start = clock.now
        assert store.put(b"k", b"v" * 100)              # host and disk, deadline start+10
        clock.now = start + 8
        assert store.get(b"k") is not None              # host hit: deadline start+18
        clock.now = start + 12
        assert store.get(b"k") is not None              # still in its window...
        assert store.stats().tier("disk").entries == 1  # ...so write-through keeps it on disk
