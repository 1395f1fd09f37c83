"""Hypothesis state machine: the store against a plain-Python model of its documented semantics.

The model: LRU over unpinned live blocks, one slot per block, TTL deadlines (refresh on read
or on write), pins that block eviction and expiry and are capped, and the miss reason of every
read. Whatever was put and not evicted/expired comes back byte-exact.
"""

from __future__ import annotations

from collections import OrderedDict

from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from conftest import FakeClock
from kvtier import HostTierConfig, MissReason, StoreConfig, TieredStore

SLOT = 512
SLOTS = 4
KEYS = st.sampled_from([b"k%d" % i for i in range(7)])
TTLS = st.sampled_from([None, 5.0, 20.0])


class Model:
    def __init__(self, refresh_on_read: bool, max_pinned: int) -> None:
        self.refresh_on_read = refresh_on_read
        self.max_pinned = max_pinned
        self.blocks: dict[bytes, dict] = {}      # key -> {value, deadline, ttl, pinned}
        self.lru: OrderedDict[bytes, None] = OrderedDict()  # unpinned keys, LRU first
        self.ghosts: dict[bytes, MissReason] = {}

    def expire(self, now: float) -> None:
        for key, block in list(self.blocks.items()):
            if not block["pinned"] and block["deadline"] is not None and block["deadline"] <= now:
                self.drop(key, MissReason.EXPIRED)

    def drop(self, key: bytes, reason: MissReason | None) -> None:
        del self.blocks[key]
        self.lru.pop(key, None)
        if reason is not None:
            self.ghosts[key] = reason

    def pinned(self) -> int:
        return sum(b["pinned"] for b in self.blocks.values())

    def put(self, key, value, ttl, pin, now) -> bool:
        self.expire(now)
        old = self.blocks.get(key)
        pin = pin or (old is not None and old["pinned"])
        if pin and self.pinned() - (1 if old and old["pinned"] else 0) + 1 > self.max_pinned:
            return False
        if len(self.blocks) >= SLOTS:  # the store reserves a slot before dropping the old version
            if not self.lru:
                return False
            victim = next(iter(self.lru))
            self.drop(victim, MissReason.EVICTED)
        if key in self.blocks:
            self.drop(key, None)
        self.blocks[key] = {"value": value, "deadline": None if ttl is None else now + ttl,
                            "ttl": ttl, "pinned": pin}
        self.ghosts.pop(key, None)
        if not pin:
            self.lru[key] = None
        return True

    def get(self, key, now):
        self.expire(now)
        block = self.blocks.get(key)
        if block is None:
            return None, self.ghosts.get(key, MissReason.NEVER_STORED)
        if self.refresh_on_read and block["ttl"] is not None:
            block["deadline"] = now + block["ttl"]
        if not block["pinned"]:
            self.lru.move_to_end(key)
        return block["value"], None


class StoreMachine(RuleBasedStateMachine):
    @initialize(refresh=st.sampled_from(["write", "read"]), pinned_fraction=st.sampled_from([0.25, 0.5]))
    def open(self, refresh, pinned_fraction):
        self.clock = FakeClock()
        host = HostTierConfig(capacity_bytes=SLOTS * SLOT, slot_bytes=SLOT, prefault=False)
        self.store = TieredStore(StoreConfig(host=host, ttl_refresh=refresh,
                                             max_pinned_fraction=pinned_fraction), clock=self.clock)
        self.model = Model(refresh == "read", int(SLOTS * pinned_fraction))
        self.version = 0

    def teardown(self):
        if hasattr(self, "store"):
            self.store.close()

    @rule(key=KEYS, size=st.integers(1, SLOT), ttl=TTLS, pin=st.booleans())
    def put(self, key, size, ttl, pin):
        self.version += 1
        value = (self.version.to_bytes(4, "little") * (size // 4 + 1))[:size]
        expected = self.model.put(key, value, ttl, pin, self.clock.now)
        assert self.store.put(key, value, ttl_s=ttl, pin=pin) == expected

    @rule(key=KEYS)
    def get(self, key):
        expected, reason = self.model.get(key, self.clock.now)
        got = self.store.get(key)
        assert (None if got is None else bytes(got)) == expected
        if expected is None:
            assert self.store.miss_reason(key) == reason

    @rule(key=KEYS)
    def get_into(self, key):
        block = self.model.blocks.get(key)
        if block is None or (not block["pinned"] and block["deadline"] is not None
                             and block["deadline"] <= self.clock.now):
            return
        expected, _ = self.model.get(key, self.clock.now)
        out = bytearray(len(expected))
        assert self.store.get_into(key, out) and bytes(out) == expected

    @rule(key=KEYS)
    def evict(self, key):
        self.model.expire(self.clock.now)
        present = key in self.model.blocks
        if present:
            self.model.drop(key, MissReason.EVICTED)
        assert self.store.evict(key) == present

    @rule(key=KEYS)
    def pin(self, key):
        self.model.expire(self.clock.now)
        block = self.model.blocks.get(key)
        expected = block is not None and (block["pinned"] or self.model.pinned() < self.model.max_pinned)
        if expected and not block["pinned"]:
            block["pinned"] = True
            self.model.lru.pop(key)
        assert self.store.pin(key) == expected

    @rule(key=KEYS)
    def unpin(self, key):
        self.model.expire(self.clock.now)
        block = self.model.blocks.get(key)
        if block is not None and block["pinned"]:
            block["pinned"] = False
            self.model.lru[key] = None
        assert self.store.unpin(key) == (block is not None)

    @rule(seconds=st.sampled_from([1.0, 4.0, 6.0, 25.0]))
    def advance_clock(self, seconds):
        self.clock.advance(seconds)

    @rule(keys=st.lists(KEYS, max_size=5))
    def lookup_prefix(self, keys):
        self.model.expire(self.clock.now)
        expected = 0
        for key in keys:
            if key not in self.model.blocks:
                break
            expected += 1
        assert self.store.lookup_prefix(keys) == expected

    @invariant()
    def capacity_and_pins_hold(self):
        if not hasattr(self, "store"):
            return
        host = self.store.stats().tier("host")
        assert host.slots_used <= host.slots_total
        assert host.pinned_bytes <= SLOTS * SLOT * self.store.config.max_pinned_fraction
        self.model.expire(self.clock.now)
        assert host.entries == len(self.model.blocks)
        assert host.used_bytes == sum(len(b["value"]) for b in self.model.blocks.values())


TestStoreMachine = StoreMachine.TestCase
TestStoreMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
