"""Hypothesis state machines: a store with a tiny host tier and the shared Redis tier (a real
redis-server, tests/redisd.py) against a plain dict, across restarts, read by a second store,
and with the server killed and restarted under it.

``RemoteStoreMachine`` (server up, no TTL): Redis holds every page put, so the model is exact.
Every key put (and not explicitly evicted) comes back byte-exact with its latest value, from
the host tier, the disk tier (two variants) or Redis, also after any number of close/reopen
cycles and from a second store that never wrote it; ``contains``, ``lookup_prefix``, the miss
reasons and the hit/miss/put counters agree with the model, and Redis holds exactly the model's
keys. In ``write_mode="async"`` reads and ``lookup_prefix`` need no ``flush()`` (they wait for
a queued write of a key they ask Redis about); ``contains`` and a second store do.

``RemoteOutageMachine``: the same operations while a private redis-server is SIGKILLed and
restarted (empty: no persistence). Nothing raises, a read returns the latest value stored (a put
that neither the host nor Redis took returns False and changes nothing) or nothing, never other
bytes, an evicted key stays gone, and once the server is back the store reconnects by itself:
its new puts reach a second store.

Bugs these machines ran into are pinned down by hand in the tests at the end.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import threading
import time

import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition, rule,
                                 run_state_machine_as_test)

from kvtier import DiskTierConfig, HostTierConfig, MissReason, Namespace, StoreConfig, TieredStore
from kvtier.config import RemoteTierConfig

pytestmark = pytest.mark.redis

SLOT = 4096
HOST_SLOTS = 4
PINNED_FRACTION = 0.5
PIN_LIMIT = int(HOST_SLOTS * PINNED_FRACTION)  # host slots that may be pinned
DISK_SLOTS = 32  # > the key space: the disk tier never evicts
NS = Namespace(model="test/remote-state-machine")
CHAIN = NS.prefix_keys(list(range(6 * 16)), 16)  # six chained keys: lookup_prefix walks them
LOOSE = [NS.key_for_bytes(b"loose")]  # not in the chain
KEYS = CHAIN + LOOSE
KEY_INDEX = {key: i for i, key in enumerate(KEYS)}
KEY = st.sampled_from(KEYS)
SIZES = st.one_of(st.sampled_from([SLOT, 1, 8, SLOT - 1, 1000]), st.integers(1, SLOT))
FAR = 1e12  # prefill tokens/s for plan(): only its tier names are used
LOCAL = ("host", "disk")
_prefixes = itertools.count()


def page_of(key, version: int, size: int) -> bytes:
    """Distinct bytes per (key, version): every 8-byte word is version | key index, so even a
    1-byte page tells versions apart (fewer than 256 versions per example)."""
    word = version.to_bytes(4, "little") + KEY_INDEX[key].to_bytes(4, "little")
    return (word * (size // 8 + 1))[:size]


def leading_run(keys, present) -> int:
    n = 0
    while n < len(keys) and keys[n] in present:
        n += 1
    return n


def host_config() -> HostTierConfig:
    return HostTierConfig(capacity_bytes=HOST_SLOTS * SLOT, slot_bytes=SLOT, prefault=False)


def reader_config(url: str, prefix: str, **remote) -> StoreConfig:
    """A store that only reads: nothing is promoted, so every read asks Redis."""
    return StoreConfig(host=host_config(), remote=RemoteTierConfig(
        url=url, key_prefix=prefix, write_mode="sync", promote_on_read=False, **remote))


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


class RemoteStoreMachine(RuleBasedStateMachine):
    """The model: ``values`` (key -> latest bytes), ``evicted`` (keys explicitly evicted since
    this store opened: their misses say ``evicted``), ``maybe_pinned`` (a superset of the keys a
    pin holds), ``pending`` (async: keys put since the last flush) and the counters ``stats()``
    must show."""

    def __init__(self, server, mode: str, disk: bool) -> None:
        super().__init__()
        self.server, self.mode, self.with_disk = server, mode, disk
        self.store = self.reader = None
        self.root = tempfile.mkdtemp(prefix="kvtier-rsm-") if disk else None
        self.prefix = f"rsm{next(_prefixes)}:"
        self.client = server.client()
        self.client.flushall()
        self.values: dict = {}
        self.evicted: set = set()
        self.maybe_pinned: set = set()
        self.pending: set = set()
        self.version = 0
        self.reader_hits = self.reader_misses = 0

    @initialize(promote=st.booleans(), codec=st.sampled_from(["none", "zstd"]),
                policy=st.sampled_from(["lru", "ttl"]), fill=st.lists(KEY, unique=True),
                size=SIZES)
    def open(self, promote, codec, policy, fill, size):
        self.promote, self.codec, self.policy = promote, codec, policy
        self._open()
        self.reader = TieredStore(reader_config(self.server.url, self.prefix))
        if fill:  # start with more pages than the host holds: the rest are in Redis (or on disk)
            self.batch_put(fill, [size] * len(fill))

    def _open(self) -> None:
        disk = None
        if self.with_disk:
            disk = DiskTierConfig(paths=[self.root], capacity_bytes=DISK_SLOTS * SLOT, min_free_bytes=0,
                                  fsync="never", codec="none")
        remote = RemoteTierConfig(url=self.server.url, key_prefix=self.prefix, write_mode=self.mode,
                                  promote_on_read=self.promote, codec=self.codec)
        self.store = TieredStore(StoreConfig(host=host_config(), disk=disk, remote=remote,
                                             policy=self.policy, max_pinned_fraction=PINNED_FRACTION))
        self.puts = self.hits = 0
        self.misses: dict[str, int] = {}

    def teardown(self):
        try:
            for store in (self.store, self.reader):
                if store is not None:
                    store.close()
        finally:
            self.client.close()
            if self.root is not None:
                shutil.rmtree(self.root, ignore_errors=True)

    # -- helpers -------------------------------------------------------------------------------
    def _value(self, key, size: int) -> bytes:
        self.version += 1
        return page_of(key, self.version, size)

    def _where(self, key) -> str | None:
        """The tier that would serve ``key`` ("host", "disk", "remote" or None); reads nothing."""
        return self.store.plan([key], FAR).ranges[0].tier

    def _host_pins(self) -> int:
        return self.store.stats().tier("host").pinned_bytes // SLOT

    def _flush(self) -> None:
        self.store.flush()
        self.pending.clear()

    def _settle(self, keys) -> None:
        """Async: ``contains`` does not see a queued write
        (test_queries_count_a_queued_async_write_as_stored), so before it asks Redis about a
        key whose write may still be queued, flush. A key a local tier holds is answered
        locally (no flush: that path is tested too)."""
        if any(k in self.pending and self._where(k) not in LOCAL for k in keys):
            self._flush()

    def _local_keys(self) -> set:
        """The model's keys a local tier holds now (a put the host refused is only in Redis)."""
        return {k for k in self.values if self._where(k) in LOCAL}

    def _count_read(self, key, hit: bool) -> None:
        if hit:
            self.hits += 1
        else:
            reason = (MissReason.EVICTED if key in self.evicted else MissReason.NEVER_STORED).value
            self.misses[reason] = self.misses.get(reason, 0) + 1

    def _stored(self, key, value) -> None:
        self.values[key] = value
        self.evicted.discard(key)
        if self.mode == "async":
            self.pending.add(key)

    # -- writes --------------------------------------------------------------------------------
    @rule(key=KEY, size=SIZES, pin=st.booleans())
    def put(self, key, size, pin):
        value = self._value(key, size)
        # Redis takes it, also when the host refuses it (its pin budget spent): then no older
        # local copy may stay behind
        assert self.store.put(key, value, pin=pin)
        self.puts += 1
        self._stored(key, value)
        if pin and self._where(key) == "host":
            self.maybe_pinned.add(key)

    @rule(keys=st.lists(KEY, min_size=1, max_size=6), sizes=st.lists(SIZES, min_size=6, max_size=6))
    def batch_put(self, keys, sizes):
        values = [self._value(k, s) for k, s in zip(keys, sizes)]
        # the host admits at most what it can free (never evicting the batch's own pages, so a
        # key twice takes two slots); Redis takes every page, in order: the last one wins
        assert self.store.batch_put(keys, values) == [True] * len(keys)
        self.puts += len(keys)
        for key, value in zip(keys, values):
            self._stored(key, value)

    @rule(n=st.integers(1, len(CHAIN)), size=SIZES)
    def put_prefix(self, n, size):
        """What an engine does after a prefill: store the pages of a prompt's leading blocks."""
        self.batch_put(CHAIN[:n], [size] * n)

    @rule(key=KEY)
    def evict(self, key):
        present = key in self.values
        assert self.store.evict(key) == present
        self.pending.clear()  # evict waits for every queued write
        self.maybe_pinned.discard(key)
        if present:
            del self.values[key]
            self.evicted.add(key)
        assert self.store.get(key) is None  # neither a local tier nor Redis brings it back
        self._count_read(key, False)

    @rule()
    def flush(self):
        self._flush()

    @rule()
    def restart(self):
        """Close and reopen on the same Redis (and disk directory): local tiers start empty
        (the disk tier keeps its pages), Redis still holds every page."""
        local = self._local_keys() if self.with_disk else set()
        self.store.close()
        self.store = None
        self._open()
        self.evicted.clear()  # miss reasons live in memory only
        self.maybe_pinned.clear()  # pins too
        self.pending.clear()  # close() waited for the queued writes
        stats = self.store.stats()
        assert stats.tier("host").entries == 0
        if self.with_disk:
            # every local page reached disk (write-back demotions, then the flush at close)
            assert stats.tier("disk").entries == len(local)
            assert self._local_keys() == local

    # -- pins ----------------------------------------------------------------------------------
    @rule(key=KEY)
    def pin(self, key):
        where, pins = self._where(key), self._host_pins()
        ok = self.store.pin(key)
        if where not in LOCAL:  # only a local copy can be pinned
            assert not ok
        elif where == "disk" or pins < PIN_LIMIT:
            assert ok
        else:  # the host's pin budget is spent: only an already pinned page says yes
            assert not ok or key in self.maybe_pinned
        if ok:
            self.maybe_pinned.add(key)

    @rule(key=KEY)
    def unpin(self, key):
        where = self._where(key)
        assert self.store.unpin(key) == (where in LOCAL)
        self.maybe_pinned.discard(key)

    # -- reads ---------------------------------------------------------------------------------
    @rule(key=KEY)
    def get(self, key):
        got = self.store.get(key)
        expected = self.values.get(key)
        assert (None if got is None else bytes(got)) == expected
        self._count_read(key, expected is not None)
        if got is None:
            assert self.store.miss_reason(key) == (
                MissReason.EVICTED if key in self.evicted else MissReason.NEVER_STORED)

    @rule(key=KEY, size=SIZES)
    def get_into(self, key, size):
        expected = self.values.get(key)
        out = bytearray(size if expected is None else len(expected))
        assert self.store.get_into(key, out) == (expected is not None)
        if expected is not None:
            assert bytes(out) == expected
        self._count_read(key, expected is not None)

    @rule(keys=st.lists(KEY, max_size=6))
    def batch_get(self, keys):
        got = self.store.batch_get(keys)
        assert [None if g is None else bytes(g) for g in got] == [self.values.get(k) for k in keys]
        for key in keys:
            self._count_read(key, key in self.values)

    @rule(keys=st.lists(KEY, max_size=6), size=SIZES)
    def batch_get_into(self, keys, size):
        outs = [bytearray(len(self.values[k]) if k in self.values else size) for k in keys]
        assert self.store.batch_get_into(keys, outs) == [k in self.values for k in keys]
        for key, out in zip(keys, outs):
            if key in self.values:
                assert bytes(out) == self.values[key]
            self._count_read(key, key in self.values)

    @rule(key=KEY)
    def contains(self, key):
        self._settle([key])
        assert self.store.contains(key) == (key in self.values)

    @rule(n=st.integers(0, len(CHAIN)))
    def lookup_prefix(self, n):
        assert self.store.lookup_prefix(CHAIN[:n]) == leading_run(CHAIN[:n], self.values)

    @rule(keys=st.lists(KEY, max_size=6))
    def lookup_prefix_of_any_keys(self, keys):
        assert self.store.lookup_prefix(keys) == leading_run(keys, self.values)

    @rule(keys=st.lists(KEY, min_size=1, max_size=6))
    def second_store_reads(self, keys):
        """Another store on the same Redis sees every page the first one wrote (async: once
        flushed), and nothing it evicted."""
        if self.pending:
            self._flush()
        got = self.reader.batch_get(keys)
        assert [None if g is None else bytes(g) for g in got] == [self.values.get(k) for k in keys]
        assert self.reader.lookup_prefix(CHAIN) == leading_run(CHAIN, self.values)
        self.reader_hits += sum(k in self.values for k in keys)
        self.reader_misses += sum(k not in self.values for k in keys)

    # -- invariants ----------------------------------------------------------------------------
    @invariant()
    def counters_and_tiers_agree_with_the_model(self):
        if self.store is None:
            return
        stats = self.store.stats()
        assert stats.gets == stats.hits + stats.miss_count
        assert (stats.puts, stats.puts_rejected) == (self.puts, 0)
        assert stats.hits == self.hits and stats.misses == self.misses
        host, remote = stats.tier("host"), stats.tier("remote")
        assert host.slots_used == host.entries <= HOST_SLOTS
        assert host.pinned_bytes <= PIN_LIMIT * SLOT
        if self.with_disk:
            disk = stats.tier("disk")
            assert disk.evictions == 0 and disk.extra["io_errors"] == 0
            # a local page is in the host tier, on disk or both; nothing else is
            local = len(self._local_keys())
            assert max(host.entries, disk.entries) <= local <= host.entries + disk.entries
        extra = remote.extra
        assert extra["breaker"] == "closed"
        assert (extra["errors"], extra["writes_failed"], extra["writes_dropped"], extra["corrupt"]) == (0, 0, 0, 0)
        reader = self.reader.stats()
        assert (reader.hits, reader.gets) == (self.reader_hits, self.reader_hits + self.reader_misses)
        assert reader.tier("host").entries == 0

    @invariant()
    def redis_holds_exactly_the_model(self):
        if self.store is None or self.pending:
            return
        names = set(self.client.keys(self.prefix + "*"))
        assert names == {(self.prefix + k.hex()).encode() for k in self.values}


# A killed server refuses connections at once, so the deadlines need not be short (short ones
# would only turn a slow machine's late answers into failures); the breaker's backoff is.
FAST_TIMEOUTS = dict(timeout_s=1.0, connect_timeout_s=1.0, breaker_failures=2,
                     breaker_backoff_s=0.1, breaker_max_backoff_s=0.2)


class RemoteOutageMachine(RuleBasedStateMachine):
    """Puts and reads while the server is killed and restarted. What Redis holds is not modelled
    (a kill empties it); the model is ``values`` (key -> latest bytes a put stored: returned
    True), so a read gives that or nothing, and an evicted key gives nothing."""

    def __init__(self, server, mode: str) -> None:
        super().__init__()
        self.server, self.mode = server, mode
        if not server.running:
            server.restart()
        self.prefix = f"rso{next(_prefixes)}:"
        self.store = None
        self.values: dict = {}
        self.pending: set = set()
        self.version = 0
        self.rejected = 0
        self.probes = itertools.count()

    @initialize()
    def open(self):
        self.store = TieredStore(StoreConfig(host=host_config(), remote=RemoteTierConfig(
            url=self.server.url, key_prefix=self.prefix, write_mode=self.mode, **FAST_TIMEOUTS)))

    def teardown(self):
        if self.store is not None:
            self.store.close()

    def _value(self, key, size: int) -> bytes:
        self.version += 1
        return page_of(key, self.version, size)

    def _flush(self) -> None:
        self.store.flush()
        self.pending.clear()

    def _check(self, keys, got) -> None:
        for key, view in zip(keys, got):
            if view is not None:
                assert bytes(view) == self.values.get(key), "a read returned bytes other than the latest"

    def _stored(self, key, value, ok: bool) -> None:
        if ok:
            self.values[key] = value
            if self.mode == "async":
                self.pending.add(key)
        else:
            self.rejected += 1

    @rule(key=KEY, size=SIZES, pin=st.booleans())
    def put(self, key, size, pin):
        self._put(key, size, pin)

    def _put(self, key, size: int, pin: bool = False) -> None:
        value = self._value(key, size)
        ok = self.store.put(key, value, pin=pin)
        assert ok or pin  # without a pin the host tier always takes it
        self._stored(key, value, ok)

    @rule(keys=st.lists(KEY, min_size=1, max_size=6), size=SIZES)
    def batch_put(self, keys, size):
        """More pages than the host can free (or a key twice): the tail is Redis's to take,
        or refused while Redis is unreachable."""
        values = [self._value(k, size) for k in keys]
        for key, value, ok in zip(keys, values, self.store.batch_put(keys, values)):
            self._stored(key, value, ok)

    @rule(key=KEY)
    def unpin(self, key):
        self.store.unpin(key)

    @rule(key=KEY)
    def get(self, key):
        self._check([key], [self.store.get(key)])

    @rule(key=KEY)
    def get_into(self, key):
        expected = self.values.get(key)
        out = bytearray(len(expected) if expected is not None else SLOT)
        if self.store.get_into(key, out):
            assert bytes(out) == expected

    @rule(keys=st.lists(KEY, max_size=6))
    def batch_get(self, keys):
        self._check(keys, self.store.batch_get(keys))

    @rule(key=KEY)
    def contains_and_lookup(self, key):
        if key not in self.values:
            assert not self.store.contains(key)
        assert self.store.lookup_prefix(CHAIN) <= leading_run(CHAIN, self.values)

    @rule(key=KEY)
    def evict(self, key):
        self.store.evict(key)
        self.pending.clear()
        self.values.pop(key, None)
        assert self.store.get(key) is None

    @precondition(lambda self: self.server.running)
    @rule()
    def kill(self):
        self.server.kill()

    @precondition(lambda self: not self.server.running)
    @rule()
    def restart_server(self):
        self.server.restart()  # empty: pages written before the kill are gone

    @precondition(lambda self: self.server.running)
    @rule(key=KEY)
    def recovers(self, key):
        """With the server up, the breaker lets writes through again after its backoff: a page
        put now is read by a second store (opened now), byte-exact."""
        probe = NS.key_for_bytes(b"probe-%d" % next(self.probes))
        cfg = reader_config(self.server.url, self.prefix, **FAST_TIMEOUTS)
        with TieredStore(cfg) as other:
            def probe_reaches_redis() -> bool:
                self.store.put(probe, b"probe")
                self.store.flush()
                got = other.get(probe)
                return got is not None and bytes(got) == b"probe"
            assert wait_until(probe_reaches_redis, timeout=5.0)
            self.pending.clear()
            self._put(key, SLOT)
            self._flush()
            assert bytes(other.get(key)) == self.values[key]
        assert self.store.stats().tier("remote").extra["breaker"] == "closed"

    @invariant()
    def counters_add_up(self):
        if self.store is not None:
            stats = self.store.stats()
            assert stats.gets == stats.hits + stats.miss_count
            assert stats.puts_rejected == self.rejected


# one failure is shrunk and reported (the stale-copy bugs showed up as several "distinct" ones,
# and shrinking each took Hypothesis its five minutes)
SETTINGS = dict(deadline=None, report_multiple_bugs=False, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("mode,disk", [("sync", False), ("async", False), ("sync", True), ("async", True)],
                         ids=["sync", "async", "sync-disk", "async-disk"])
def test_store_with_redis_against_a_dict(redis_url, redis_server, mode, disk):
    run_state_machine_as_test(lambda: RemoteStoreMachine(redis_server, mode, disk),
                              settings=settings(max_examples=50, stateful_step_count=30, **SETTINGS))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_store_through_a_redis_outage(tmp_path, mode):
    from redisd import RedisServer

    with RedisServer(tmp_path / "redis") as server:
        run_state_machine_as_test(lambda: RemoteOutageMachine(server, mode),
                                  settings=settings(max_examples=25, stateful_step_count=30, **SETTINGS))


def test_a_killed_server_loses_its_pages_and_the_store_recovers(tmp_path):
    """The outage step by step: local pages keep serving, Redis-only pages are
    ``tier_unavailable`` misses (no exception, no wait once the breaker is open), a restarted
    server is empty, and new pages reach a second store once the breaker closed again."""
    from redisd import RedisServer

    with RedisServer(tmp_path / "redis") as server:
        cfg = StoreConfig(host=host_config(), remote=RemoteTierConfig(
            url=server.url, write_mode="sync", **FAST_TIMEOUTS))
        before = [page_of(k, 1, SLOT) for k in CHAIN]
        with TieredStore(cfg) as store:
            # a batch never evicts its own pages: the host keeps the first four, Redis all six
            assert store.batch_put(CHAIN, before) == [True] * 6
            server.kill()
            got = store.batch_get(CHAIN)
            assert [None if g is None else bytes(g) for g in got] == before[:4] + [None, None]
            assert store.lookup_prefix(CHAIN) == 4 and not store.contains(CHAIN[5])
            assert store.miss_reason(CHAIN[5]) == MissReason.TIER_UNAVAILABLE
            late = page_of(CHAIN[4], 2, 100)
            assert store.put(CHAIN[4], late)  # the host takes it; the Redis write fails quietly
            assert bytes(store.get(CHAIN[4])) == late
            stats = store.stats()
            assert stats.misses == {"tier_unavailable": 2} and stats.puts_rejected == 0
            assert stats.tier("remote").extra["breaker_opened"] >= 1

            server.restart()  # no persistence: an empty server on the same port
            probe = NS.key_for_bytes(b"probe")
            with TieredStore(reader_config(server.url, "kvtier:", **FAST_TIMEOUTS)) as other:
                def probe_reaches_redis() -> bool:
                    store.put(probe, b"probe")
                    got = other.get(probe)
                    return got is not None and bytes(got) == b"probe"
                assert wait_until(probe_reaches_redis, timeout=5.0)
                assert store.stats().tier("remote").extra["breaker"] == "closed"
                assert other.batch_get(CHAIN[4:]) == [None, None]  # lost: before or during the outage
                after = page_of(CHAIN[5], 3, SLOT)
                assert store.put(CHAIN[5], after)
                assert bytes(other.get(CHAIN[5])) == after
                assert bytes(store.get(CHAIN[4])) == late  # still served by the host tier


# -- bugs the machines ran into, pinned down by hand ------------------------------------------


def writer_config(url: str, *, write_mode: str = "sync", disk_dir=None) -> StoreConfig:
    disk = None if disk_dir is None else DiskTierConfig(
        paths=[str(disk_dir)], capacity_bytes=DISK_SLOTS * SLOT, min_free_bytes=0, fsync="never", codec="none")
    return StoreConfig(host=host_config(), disk=disk, max_pinned_fraction=PINNED_FRACTION,
                       remote=RemoteTierConfig(url=url, write_mode=write_mode))


@pytest.mark.parametrize("case", ["pin_budget_spent", "batch_tail_is_a_pinned_key",
                                  "batch_repeats_a_key", "older_copy_on_disk"])
def test_a_put_the_host_refuses_leaves_no_stale_local_copy(redis_url, stores, tmp_path, case):
    K, P, Q, A, B, C, D = CHAIN[:5] + LOOSE + [NS.key_for_bytes(b"d")]
    old, new = page_of(K, 1, 1000), page_of(K, 2, 2000)
    store = stores(writer_config(redis_url, disk_dir=tmp_path if case == "older_copy_on_disk" else None))
    if case == "pin_budget_spent":  # two pins spend the budget of a 4-slot host
        assert store.put(P, b"p", pin=True) and store.put(Q, b"q", pin=True)
        assert store.put(K, old)
        assert store.put(K, new, pin=True)  # the host refuses (budget), Redis takes it: True
    elif case == "batch_tail_is_a_pinned_key":
        assert store.put(K, old, pin=True) and store.put(P, b"p", pin=True)
        assert store.batch_put([A, B, K], [b"a", b"b", new]) == [True] * 3  # K: host full
    elif case == "batch_repeats_a_key":  # five reservations in four slots: the last is refused
        assert store.batch_put([K, A, B, C, K], [old, b"a", b"b", b"c", new]) == [True] * 5
    else:  # the host demotes the older K to disk to make room, then refuses the new one
        assert store.put(P, b"p", pin=True) and store.put(Q, b"q", pin=True)
        assert store.put(K, old)
        assert store.batch_put([A, B, K], [b"a", b"b", new]) == [True] * 3
    other = stores(reader_config(redis_url, "kvtier:"))
    assert bytes(other.get(K)) == new  # Redis has the new version...
    got = store.get(K)
    assert got is None or bytes(got) == new  # ...but the writer serves its older local copy


class GatedWrites:
    """Wraps a store's ``RemoteTier.write`` so the first batch that holds ``key`` waits for
    ``release`` (a slow network round trip), while later batches go through (``later_done``)."""

    def __init__(self, store: TieredStore, key) -> None:
        self.remote, self.key = store._remote, key
        self.inner = self.remote.write
        self.entered, self.release, self.later_done = threading.Event(), threading.Event(), threading.Event()
        self.armed = True
        self.lock = threading.Lock()
        self.remote.write = self

    def __call__(self, items):
        with self.lock:
            gate = self.armed and any(k == self.key for k, _, _ in items)
            if gate:
                self.armed = False
        if gate:
            self.entered.set()
            self.release.wait(10)
            return self.inner(items)
        result = self.inner(items)
        self.later_done.set()
        return result


def test_async_writes_of_one_key_reach_redis_in_put_order(redis_url, stores):
    K = CHAIN[0]
    old, new = page_of(K, 1, SLOT), page_of(K, 2, SLOT)
    store = stores(writer_config(redis_url, write_mode="async"))
    gate = GatedWrites(store, K)
    assert store.put(K, old)
    assert gate.entered.wait(10)  # a worker is sending the old version, slowly
    assert store.put(K, new)
    # with two workers the other one sent the new version meanwhile (in milliseconds); with
    # writes in put order it waits for the first, and this times out
    gate.later_done.wait(0.5)
    gate.release.set()
    store.flush()
    other = stores(reader_config(redis_url, "kvtier:"))
    assert bytes(other.get(K)) == new


def test_async_read_after_the_host_dropped_a_queued_page_is_not_stale(redis_url, stores):
    K, others = CHAIN[0], CHAIN[1:5]
    old, new = page_of(K, 1, SLOT), page_of(K, 2, SLOT)
    store = stores(writer_config(redis_url, write_mode="async"))
    assert store.put(K, old)
    store.flush()  # Redis has the old version
    gate = GatedWrites(store, K)
    try:
        assert store.put(K, new)
        assert gate.entered.wait(10)  # its write is on the way, slowly
        assert store.batch_put(others, [b"x"] * 4) == [True] * 4  # the host drops K for them
        threading.Timer(0.2, gate.release.set).start()  # the slow write lands in 0.2 s
        got = store.get(K)  # (a read that waits for the queued write takes those 0.2 s)
        assert got is None or bytes(got) == new  # the store's own last write, or nothing
    finally:
        gate.release.set()
    store.flush()
    assert bytes(store.get(K)) == new  # and no older version was promoted into the host


def test_queries_count_a_queued_async_write_as_stored(redis_url, stores):
    K, others = CHAIN[0], CHAIN[1:5]
    store = stores(writer_config(redis_url, write_mode="async"))
    gate = GatedWrites(store, K)
    try:
        assert store.put(K, page_of(K, 1, SLOT))
        assert gate.entered.wait(10)  # its write is on the way, slowly
        assert store.batch_put(others, [b"x"] * 4) == [True] * 4  # the host drops K for them
        assert store.lookup_prefix([K]) == 1  # counted: its write is queued
        answers = (store.contains(K), store.miss_reason(K), store.plan([K], FAR).hit_blocks)
        assert answers == (True, None, 1)  # now (False, MissReason.EVICTED, 0)
    finally:
        gate.release.set()
    assert bytes(store.get(K)) == page_of(K, 1, SLOT)  # a read would have found it
