"""Behaviour of TieredStore over the host tier: round trips, TTL, pins, miss reasons, errors."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from conftest import page
from kvtier import (BufferSizeError, InvalidArgumentError, InvalidKeyError, MissReason, Namespace,
                    NonContiguousError, ReadOnlyBufferError, StoreClosedError, TieredStore,
                    UnsupportedValueError, ValueTooLargeError)

torch = pytest.importorskip("torch")
NS = Namespace(model="test-model", dtype="bfloat16")


def _values():
    raw = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)
    return {
        "bytes": raw.tobytes(),
        "bytearray": bytearray(raw.tobytes()),
        "memoryview": memoryview(raw.tobytes()),
        "numpy-u8": raw.copy(),
        "numpy-fp16-2d": raw.view(np.float16).reshape(32, 64).copy(),
        "numpy-0d": np.array(3.25, dtype=np.float64),
        "torch-bf16": torch.from_numpy(raw.copy()).view(torch.bfloat16).reshape(2, 16, 64),
        "torch-fp32": torch.from_numpy(raw.copy()).view(torch.float32),
        "torch-fp8": torch.from_numpy(raw.copy()).view(torch.float8_e4m3fn),
    }


def _raw_bytes(value) -> bytes:
    if isinstance(value, torch.Tensor):
        return value.reshape(-1).view(torch.uint8).numpy().tobytes()
    return bytes(memoryview(value).cast("B")) if not isinstance(value, np.ndarray) else value.tobytes()


@pytest.mark.parametrize("kind", list(_values()))
def test_round_trip_is_byte_exact_for_every_value_type(make_store, kind):
    value = _values()[kind]
    store = make_store()
    key = NS.key(bytes(16))
    assert store.put(key, value)
    got = store.get(key)
    assert isinstance(got, memoryview) and got.format == "B"
    assert bytes(got) == _raw_bytes(value)


def test_get_returns_a_private_copy(make_store):
    store = make_store()
    store.put(b"k", page(1))
    got = store.get(b"k")
    got[:8] = b"\xff" * 8  # the caller owns it; the stored page is unaffected
    assert bytes(store.get(b"k")) == page(1)


@pytest.mark.parametrize("make_out", [
    lambda n: bytearray(n),
    lambda n: np.zeros(n // 2, dtype=np.float16),
    lambda n: torch.zeros(n // 2, dtype=torch.bfloat16),
    lambda n: memoryview(bytearray(n)),
])
def test_get_into_fills_the_callers_buffer_in_place(make_store, make_out):
    store = make_store()
    store.put(b"k", page(7))
    out = make_out(4096)
    address_before = _address(out)
    assert store.get_into(b"k", out)
    assert _address(out) == address_before
    assert _raw_bytes(out) == page(7)
    assert not store.get_into(b"missing", make_out(4096))


def _address(buf) -> int:
    if isinstance(buf, torch.Tensor):
        return buf.data_ptr()
    return np.frombuffer(buf, dtype=np.uint8).ctypes.data


def test_get_into_rejects_wrong_size_and_read_only_buffers(make_store):
    store = make_store()
    store.put(b"k", page(1))
    with pytest.raises(BufferSizeError, match="4095 bytes but the stored page has 4096"):
        store.get_into(b"k", bytearray(4095))
    with pytest.raises(ReadOnlyBufferError):
        store.get_into(b"k", bytes(4096))
    with pytest.raises(NonContiguousError):
        store.get_into(b"k", np.zeros((64, 128), dtype=np.uint8)[:, ::2])
    assert bytes(store.get(b"k")) == page(1)  # bad calls lost nothing


def test_contains_evict_and_overwrite(make_store):
    store = make_store()
    assert not store.contains(b"a")
    store.put(b"a", page(1))
    assert store.contains(b"a")
    store.put(b"a", page(2, 100))  # overwrite with a different size
    assert bytes(store.get(b"a")) == page(2, 100)
    assert store.stats().tier("host").entries == 1
    assert store.evict(b"a") and not store.evict(b"a")
    assert not store.contains(b"a")
    assert store.miss_reason(b"a") is MissReason.EVICTED


def test_bytes_keys_and_block_keys_are_distinct_namespaces(make_store):
    store = make_store()
    key = NS.key(b"\x07" * 16)
    store.put(key, page(1))
    assert not store.contains(bytes(key) + b"x")
    store.put(b"plain", page(2))
    assert bytes(store.get(b"plain")) == page(2)


def test_lru_evicts_least_recently_used(make_store):
    store = make_store(slots=3)
    for i in range(3):
        store.put(f"k{i}".encode(), page(i))
    store.get(b"k0")  # k1 is now least recently used
    assert store.put(b"k3", page(3))
    assert not store.contains(b"k1")
    assert [store.contains(f"k{i}".encode()) for i in (0, 2, 3)] == [True, True, True]
    assert store.miss_reason(b"k1") is MissReason.EVICTED
    assert store.get(b"k1") is None
    stats = store.stats()
    assert stats.misses == {"evicted": 1} and stats.tier("host").evictions == 1


def test_ttl_policy_evicts_earliest_deadline_first(make_store, clock):
    store = make_store(slots=3, policy="ttl")
    store.put(b"long", page(1), ttl_s=300)
    store.put(b"short", page(2), ttl_s=10)
    store.put(b"forever", page(3))
    store.get(b"short")
    assert store.put(b"new", page(4), ttl_s=60)
    assert not store.contains(b"short")
    assert store.put(b"new2", page(5), ttl_s=30)  # evicts "new" (deadline +60 < +300 < never)
    assert not store.contains(b"new")
    assert store.contains(b"long") and store.contains(b"forever") and store.contains(b"new2")


def test_ttl_window_expires_with_reason(make_store, clock):
    store = make_store(ttl_s=300)
    store.put(b"a", page(1))
    store.put(b"b", page(2), ttl_s=10)  # per-entry ttl overrides the default
    clock.advance(11)
    assert store.get(b"b") is None and store.miss_reason(b"b") is MissReason.EXPIRED
    assert bytes(store.get(b"a")) == page(1)
    clock.advance(290)
    assert not store.contains(b"a")
    assert store.stats().misses == {"expired": 1}
    assert store.stats().tier("host").expirations == 2


@pytest.mark.parametrize("refresh,alive", [("write", False), ("read", True)])
def test_refresh_on_read_or_write(make_store, clock, refresh, alive):
    store = make_store(ttl_s=100, ttl_refresh=refresh)
    store.put(b"a", page(1))
    clock.advance(90)
    assert store.get(b"a") is not None
    clock.advance(20)  # 110 s after the write, 20 s after the read
    assert store.contains(b"a") is alive


def test_rewrite_extends_the_window(make_store, clock):
    store = make_store(ttl_s=100)
    store.put(b"a", page(1))
    clock.advance(90)
    store.put(b"a", page(1))
    clock.advance(20)
    assert store.contains(b"a")


def test_sweep_reclaims_expired_slots(make_store, clock):
    store = make_store(slots=4, ttl_s=5)
    for i in range(4):
        store.put(bytes([i]), page(i))
    clock.advance(6)
    assert store.sweep_expired() == 4
    assert store.stats().tier("host").slots_used == 0
    assert store.miss_reason(b"\x00") is MissReason.EXPIRED


def test_evicting_an_expired_block_reports_nothing_evicted(make_store, clock):
    store = make_store(ttl_s=5)
    store.put(b"a", page(1))
    clock.advance(6)
    assert store.evict(b"a") is False
    assert store.miss_reason(b"a") is MissReason.EXPIRED


def test_expired_blocks_make_room_before_live_ones_are_evicted(make_store, clock):
    store = make_store(slots=2)
    store.put(b"live", page(1))
    store.put(b"brief", page(2), ttl_s=1)
    store.get(b"brief")  # brief is most recently used, but expired by the next put
    clock.advance(2)
    assert store.put(b"new", page(3))
    assert store.contains(b"live")
    assert store.stats().tier("host").evictions == 0


def test_pins_survive_pressure_and_expiry(make_store, clock):
    store = make_store(slots=4, max_pinned_fraction=0.5, ttl_s=10)
    assert store.put(b"p0", page(0), pin=True)
    store.put(b"p1", page(1))
    assert store.pin(b"p1")
    assert not store.put(b"p2", page(2), pin=True)  # 2 of 4 slots already pinned
    assert not store.pin(b"nope")
    clock.advance(20)
    for i in range(10):
        store.put(f"x{i}".encode(), page(i), ttl_s=1000)
    assert bytes(store.get(b"p0")) == page(0) and bytes(store.get(b"p1")) == page(1)
    assert store.stats().tier("host").pinned_bytes == 2 * 4096
    assert store.unpin(b"p0") and not store.unpin(b"nope")
    assert not store.contains(b"p0")  # its window closed while it was pinned
    assert store.miss_reason(b"p0") is MissReason.EXPIRED


def test_full_of_pinned_blocks_rejects_put(make_store):
    store = make_store(slots=2, max_pinned_fraction=1.0)
    assert store.put(b"a", page(1), pin=True) and store.put(b"b", page(2), pin=True)
    assert store.put(b"c", page(3)) is False
    stats = store.stats()
    assert stats.puts == 3 and stats.puts_rejected == 1
    assert store.evict(b"a") and store.put(b"c", page(3))


def test_lookup_prefix_and_batches(make_store):
    store = make_store(slots=16)
    keys = NS.prefix_keys(list(range(10 * 16)), 16)
    assert store.batch_put(keys[:6], [page(i) for i in range(6)]) == [True] * 6
    assert store.lookup_prefix(keys) == 6
    store.evict(keys[2])
    assert store.lookup_prefix(keys) == 2
    assert store.lookup_prefix([]) == 0
    got = store.batch_get(keys[:4])
    assert [bytes(g) if g is not None else None for g in got] == [page(0), page(1), None, page(3)]
    before = store.stats()
    store.lookup_prefix(keys)
    assert store.stats().gets == before.gets  # lookups are not reads


def test_batch_put_checks_everything_before_storing(make_store):
    store = make_store()
    with pytest.raises(UnsupportedValueError):
        store.batch_put([b"a", b"b"], [page(1), "not a buffer"])
    assert not store.contains(b"a")
    with pytest.raises(InvalidKeyError, match="2 keys but 1 values"):
        store.batch_put([b"a", b"b"], [page(1)])


@pytest.mark.parametrize("value,error,match", [
    ("text", UnsupportedValueError, "must be bytes, bytearray"),
    (12345, UnsupportedValueError, "builtins.int"),
    ([1, 2, 3], UnsupportedValueError, "list"),
    (b"", UnsupportedValueError, "empty"),
    (np.zeros((64, 128), dtype=np.uint8)[:, ::2], NonContiguousError, "C-contiguous"),
    (torch.zeros(64, 64).t(), NonContiguousError, "contiguous"),
    (bytes(4097), ValueTooLargeError, "slot_bytes"),
])
def test_bad_values_raise_specific_errors_and_lose_nothing(make_store, value, error, match):
    store = make_store()
    store.put(b"keep", page(9))
    store.put(b"k", page(8))
    with pytest.raises(error, match=match):
        store.put(b"k", value)
    assert bytes(store.get(b"keep")) == page(9) and bytes(store.get(b"k")) == page(8)


@pytest.mark.parametrize("key", ["text", 5, None, 1.0])
def test_bad_keys_raise(make_store, key):
    with pytest.raises(InvalidKeyError, match="BlockKey or bytes"):
        make_store().put(key, page(1))


@pytest.mark.parametrize("ttl", [0, -1, "5m", True])
def test_bad_ttl_raises(make_store, ttl):
    with pytest.raises(InvalidArgumentError, match="ttl_s"):
        make_store().put(b"k", page(1), ttl_s=ttl)


def test_closed_store_raises_and_close_is_idempotent(make_store):
    store = make_store()
    store.put(b"k", page(1))
    store.close()
    store.close()
    assert store.closed
    for call in (lambda: store.put(b"k", page(1)), lambda: store.get(b"k"),
                 lambda: store.contains(b"k"), lambda: store.lookup_prefix([b"k"]),
                 lambda: store.put_async(b"k", page(1))):
        with pytest.raises(StoreClosedError, match="closed"):
            call()
    assert store.stats().puts == 1  # stats stay readable after close


def test_context_manager_closes():
    from kvtier import HostTierConfig, StoreConfig

    with TieredStore(StoreConfig(host=HostTierConfig(capacity_bytes=1 << 20, slot_bytes=1 << 16))) as store:
        assert store.put(b"k", bytes(100))
    assert store.closed


def test_async_api(make_store):
    store = make_store()
    futures = [store.put_async(bytes([i]), page(i)) for i in range(5)]
    assert [f.result(timeout=10) for f in futures] == [True] * 5
    assert bytes(store.get_async(b"\x03").result(timeout=10)) == page(3)
    failing = store.put_async(b"x", "bad value")
    with pytest.raises(UnsupportedValueError):
        failing.result(timeout=10)

    async def main():
        assert await store.aput(b"aio", page(42))
        got = await store.aget(b"aio")
        return bytes(got), await store.aget(b"missing")

    assert asyncio.run(main()) == (page(42), None)


def test_close_drains_queued_async_puts(make_store):
    store = make_store(slots=64)
    futures = [store.put_async(i.to_bytes(4, "little"), page(i)) for i in range(64)]
    store.close()
    assert all(f.result(timeout=0) for f in futures)


def test_corrupt_page_fails_closed(make_store):
    store = make_store(verify=True)
    store.put(b"k", page(1))
    store.put(b"other", page(2))
    tier = store._first_tier
    slot = store._first_index.entries[store._key(b"k")].location
    tier.slot_view(slot, 4096)[100] ^= 0x01  # flip one bit in DRAM
    assert store.get(b"k") is None
    assert store.miss_reason(b"k") is MissReason.CORRUPT
    assert store.stats().misses == {"corrupt": 1}
    assert not store.contains(b"k") and store.stats().tier("host").slots_used == 1
    assert bytes(store.get(b"other")) == page(2)


def test_stats_account_bytes_and_capacity(make_store):
    store = make_store(slots=4)
    store.put(b"a", page(1, 1000))
    store.put(b"b", page(2, 3000))
    store.get(b"a")
    store.get(b"zzz")
    stats = store.stats()
    host = stats.tier("host")
    assert (host.used_bytes, host.capacity_bytes, host.slots_used, host.slots_total) == (4000, 4 * 4096, 2, 4)
    assert (host.bytes_in, host.bytes_out, host.hits) == (4000, 1000, 1)
    assert (stats.gets, stats.hits, stats.misses) == (2, 1, {"never_stored": 1})
    assert stats.hit_rate == 0.5 and stats.native_backend in ("native", "python")
    with pytest.raises(KeyError):
        stats.tier("disk")


def test_batch_get_into_fills_every_buffer_and_checks_sizes_first(make_store):
    store = make_store(slots=8)
    store.batch_put([b"a", b"b"], [page(1), page(2, 100)])
    outs = [bytearray(4096), bytearray(100), bytearray(4096)]
    assert store.batch_get_into([b"a", b"b", b"zzz"], outs) == [True, True, False]
    assert bytes(outs[0]) == page(1) and bytes(outs[1]) == page(2, 100)
    before = store.stats()
    with pytest.raises(BufferSizeError, match=r"outs\[1\] has 4096 bytes but the stored page has 100"):
        store.batch_get_into([b"a", b"b"], [bytearray(4096), bytearray(4096)])
    assert store.stats().gets == before.gets  # a refused batch reads and counts nothing
    with pytest.raises(InvalidKeyError, match="2 keys but 1 buffers"):
        store.batch_get_into([b"a", b"b"], [bytearray(4096)])


def test_a_batch_never_evicts_its_own_blocks(make_store):
    store = make_store(slots=4)
    store.put(b"old", page(0))
    result = store.batch_put([bytes([i]) for i in range(6)], [page(i) for i in range(6)])
    assert result == [True, True, True, True, False, False]  # "old" evicted, then the tail refused
    assert [store.contains(bytes([i])) for i in range(6)] == [True] * 4 + [False] * 2
    assert store.stats().puts_rejected == 2


def test_batch_with_a_repeated_key_keeps_the_last_value(make_store):
    store = make_store(slots=4)
    assert store.batch_put([b"k", b"k"], [page(1), page(2)]) == [True, True]
    assert bytes(store.get(b"k")) == page(2)
    assert store.stats().tier("host").slots_used == 1
