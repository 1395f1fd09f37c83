"""The device tier (a write-through HBM cache in front of the host tier) without a GPU.

Its bookkeeping (``DeviceCache``: slots, LRU, readers, invalidation, promotions) is tested
with plain objects; the store's device-tier paths run against a ``DeviceArena`` on torch's
CPU device (``_allow_cpu_for_tests``) and CPU tensors the store takes for CUDA ones, with
synchronous copies. What only a GPU can show (streams, events, the real copies) is in
``test_gpu.py``, marked ``gpu``.
"""

from __future__ import annotations

import shutil
import tempfile
import threading

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import kvtier.device_moves as device_moves
import kvtier.store as store_module
from conftest import FakeClock, page
from kvtier import ConfigError, DiskTierConfig, HostTierConfig, StoreConfig, TieredStore, gpu
from kvtier.config import DeviceTierConfig
from kvtier.device_cache import DeviceCache
from kvtier.errors import BufferSizeError, ValueTooLargeError

torch = pytest.importorskip("torch")

from kvtier.tiers.device import BouncePool, DeviceArena, DeviceOut  # noqa: E402  (needs torch)


# -- config ---------------------------------------------------------------------------------------

def test_device_config_defaults_follow_the_host_tier():
    cfg = StoreConfig(host=HostTierConfig(capacity_bytes="4MiB", slot_bytes="256KiB", prefault=False),
                      device=DeviceTierConfig(capacity_bytes="1MiB"))
    assert cfg.device.slot_bytes == 256 << 10 and cfg.device.device == "cuda"
    assert cfg.device.promote_on_read is True
    assert StoreConfig().device is None


@pytest.mark.parametrize("kwargs,match", [
    ({"capacity_bytes": 0}, "capacity_bytes"),
    ({"slot_bytes": -1}, "slot_bytes"),
    ({"capacity_bytes": 1000, "slot_bytes": 4096}, "at least one"),
    ({"device": "cpu"}, "cuda"),
    ({"device": "cuda:x"}, "cuda"),
    ({"capacity_bytes": "lots"}, "cannot parse"),
])
def test_device_config_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DeviceTierConfig(**kwargs)


def test_device_config_against_the_host_tier():
    host = HostTierConfig(capacity_bytes="4MiB", slot_bytes="64KiB", prefault=False)
    with pytest.raises(ConfigError, match="must be <= host.slot_bytes"):
        StoreConfig(host=host, device=DeviceTierConfig(capacity_bytes="1MiB", slot_bytes="128KiB"))
    with pytest.raises(ConfigError, match="at least one slot"):
        StoreConfig(host=host, device=DeviceTierConfig(capacity_bytes="32KiB"))
    with pytest.raises(ConfigError, match="DeviceTierConfig"):
        StoreConfig(device={"capacity_bytes": 1})
    smaller = StoreConfig(host=host, device=DeviceTierConfig(capacity_bytes="1MiB", slot_bytes="16KiB"))
    assert smaller.device.slot_bytes == 16 << 10


def test_device_config_from_env_and_dict():
    cfg = StoreConfig.from_env({"KVTIER_DEVICE_CAPACITY_BYTES": "2GiB", "KVTIER_DEVICE_DEVICE": "cuda:1",
                                "KVTIER_DEVICE_PROMOTE_ON_READ": "false"})
    assert cfg.device == DeviceTierConfig(capacity_bytes=2 << 30, slot_bytes=cfg.host.slot_bytes,
                                          device="cuda:1", promote_on_read=False)
    assert StoreConfig.from_env({}).device is None
    cfg = StoreConfig.from_dict({"device": {"capacity_bytes": "64MiB", "slot_bytes": "512KiB"}})
    assert cfg.device.capacity_bytes == 64 << 20 and cfg.device.slot_bytes == 512 << 10
    with pytest.raises(ConfigError, match="device.size"):
        StoreConfig.from_dict({"device": {"size": 1}})


@pytest.mark.skipif(gpu.available(), reason="this machine has a usable GPU")
def test_a_device_tier_without_cuda_fails_at_construction():
    host = HostTierConfig(capacity_bytes=1 << 16, slot_bytes=1 << 12, prefault=False)
    with pytest.raises(gpu.GpuUnavailableError, match="CUDA is not usable here"):
        TieredStore(StoreConfig(host=host, device=DeviceTierConfig(capacity_bytes=1 << 16)))


# -- DeviceCache: bookkeeping only ----------------------------------------------------------------

def cached(cache: DeviceCache, key, nbytes=100) -> int:
    reservation = cache.reserve(key, nbytes)
    assert reservation is not None
    cache.publish(key, reservation, nbytes)
    return reservation.location


def test_cache_evicts_least_recently_used_and_never_exceeds_its_slots():
    cache = DeviceCache(3, 128)
    for key in "abc":
        cached(cache, key)
    cache.begin_read(cache.lookup("a"))  # a is now the most recently used
    cache.end_read(cache.lookup("a"), True)
    cached(cache, "d")
    assert set(cache.index.entries) == {"a", "c", "d"}
    assert cache.index.allocator.used == 3 and cache.index.evictions == 1
    stats = cache.stats({})
    assert (stats.name, stats.hits, stats.slots_total, stats.slots_used, stats.evictions) == ("device", 1, 3, 3, 1)
    assert stats.capacity_bytes == 3 * 128 and stats.entries == 3


def test_cache_keeps_slots_being_read_and_frees_them_after():
    cache = DeviceCache(1, 128)
    slot = cached(cache, "a")
    entry = cache.lookup("a")
    cache.begin_read(entry)
    assert cache.reserve("b", 100) is None  # the only slot is being read: full is normal
    assert cache.invalidate("a") and cache.lookup("a") is None
    assert cache.reserve("b", 100) is None  # dropped, but its copy out is still queued
    cache.end_read(entry, True)
    assert cache.index.hits == 1
    assert cached(cache, "b") == slot


def test_cache_refuses_pages_larger_than_a_slot():
    cache = DeviceCache(2, 128)
    assert cache.reserve("a", 129) is None and cache.begin_fill("a", 129) is None
    assert not cache.fits(0) and cache.fits(128)


def test_a_new_copy_replaces_the_old_and_cancels_promotions():
    cache = DeviceCache(4, 128)
    old = cached(cache, "a")
    fill = cache.begin_fill("a", 100)
    new = cached(cache, "a")
    assert cache.lookup("a").location == new and len(cache) == 1
    reservation = cache.reserve_fill(fill, 100)
    assert reservation is None and not fill.valid
    assert not cache.end_fill(fill, None, 100) and cache.pending_fills() == 0
    assert old != new and cache.index.allocator.used == 1


def test_a_promotion_is_published_only_if_its_key_did_not_change():
    cache = DeviceCache(4, 128)
    fill = cache.begin_fill("a", 100)
    reservation = cache.reserve_fill(fill, 100)
    assert cache.end_fill(fill, reservation, 100) and cache.lookup("a") is not None
    stale = cache.begin_fill("b", 100)
    reservation = cache.reserve_fill(stale, 100)
    cache.invalidate("b")  # e.g. a put of b, or b left the store, while its copy was queued
    assert not cache.end_fill(stale, reservation, 100)
    assert cache.lookup("b") is None and cache.fills_dropped == 1
    assert cache.index.allocator.used == 1  # the slot went back
    first, second = cache.begin_fill("c", 100), cache.begin_fill("c", 100)
    assert cache.end_fill(first, cache.reserve_fill(first, 100), 100)
    assert cache.reserve_fill(second, 100) is None  # someone cached it first
    cache.end_fill(second, None, 100)
    assert cache.pending_fills() == 0


def test_promotions_off():
    cache = DeviceCache(4, 128, promote_on_read=False)
    assert cache.begin_fill("a", 100) is None


# -- the pinned bounce-buffer pool ----------------------------------------------------------------

class Pending:
    def __init__(self, finished=True):
        self.finished = finished

    def done(self):
        return self.finished


def test_bounce_pool_reuses_a_buffer_once_its_upload_is_done():
    pool = BouncePool(pin=False)
    tensor, view = pool.acquire(4096)
    upload = Pending(finished=False)
    pool.release(tensor, view, upload)
    busy, busy_view = pool.acquire(4096)  # the upload still reads the first: a new one
    assert busy.data_ptr() != tensor.data_ptr()
    pool.release(busy, busy_view, None)
    upload.finished = True
    again, again_view = pool.acquire(4096)
    assert again.data_ptr() == tensor.data_ptr() and again_view is view
    other, _ = pool.acquire(8192)  # one free list per size
    assert other.numel() == 8192
    assert pool.stats() == {"bounce_allocated": 3, "bounce_reused": 1, "bounce_free_bytes": 4096}


def test_bounce_pool_keeps_at_most_its_budget():
    pool = BouncePool(pin=False, max_free_bytes=8192)
    buffers = [pool.acquire(4096) for _ in range(3)]
    for tensor, view in buffers:
        pool.release(tensor, view, None)
    assert pool.stats()["bounce_free_bytes"] == 8192


class Done:
    """A copy that happened at once."""

    def done(self):
        return True

    def wait(self):
        pass


class SyncCopier:
    """Stands in for DeviceCopier on the CPU: copies happen at once, and are counted."""

    def __init__(self):
        self.bounces = BouncePool(pin=False)
        self.to_host_calls = self.to_device_calls = 0

    def to_host(self, dst, src):
        self.to_host_calls += 1
        torch.frombuffer(dst, dtype=torch.uint8).copy_(src.reshape(-1).view(torch.uint8))
        return Done()

    def to_device(self, dst, src):
        self.to_device_calls += 1
        host = src if isinstance(src, torch.Tensor) else torch.frombuffer(src, dtype=torch.uint8)
        dst.reshape(-1).view(torch.uint8).copy_(host.reshape(-1).view(torch.uint8))
        return Done()

    def synchronize(self):
        pass


class FakeCuda:
    """A CPU tensor that the store takes for a CUDA tensor (it has no buffer protocol, so the
    host paths refuse it, like a real CUDA tensor)."""

    device = torch.device("cpu")

    def __init__(self, tensor):
        self.t = tensor

    def is_contiguous(self):
        return self.t.is_contiguous()

    def numel(self):
        return self.t.numel()

    def element_size(self):
        return self.t.element_size()

    def reshape(self, *shape):
        return self.t.reshape(*shape)

    def bytes(self) -> bytes:
        return bytes(self.t.reshape(-1).view(torch.uint8).numpy())


def cuda_page(data: bytes) -> FakeCuda:
    return FakeCuda(torch.frombuffer(bytearray(data), dtype=torch.uint8))


def cuda_out(nbytes: int) -> FakeCuda:
    return FakeCuda(torch.zeros(nbytes, dtype=torch.uint8))


def test_device_out_takes_its_bounce_buffer_from_the_pool():
    copier = SyncCopier()
    first = DeviceOut(cuda_out(4096), copier)
    bounce, view = first.bounce.data_ptr(), first.view
    first.view[:] = b"x" * 4096  # a disk hit landed in it
    first.finish()
    assert first.tensor.bytes() == b"x" * 4096
    first.release()
    second = DeviceOut(cuda_out(4096), copier)  # the next call: the same buffer, not a new one
    assert second.bounce.data_ptr() == bounce and second.view is view
    assert copier.bounces.reused == 1 and copier.bounces.allocated == 1
    second.release()
    second.release()  # once only
    assert copier.bounces.stats()["bounce_free_bytes"] == 4096


# -- the store's device tier on the CPU -----------------------------------------------------------

@pytest.fixture
def cpu_device(monkeypatch):
    """The store's CUDA paths on the CPU: FakeCuda values and outs, a CPU DeviceArena, one
    SyncCopier (returned, to count host <-> device copies)."""
    copier = SyncCopier()
    monkeypatch.setattr(TieredStore, "_make_device_arena", lambda self, config: DeviceArena(
        config.capacity_bytes, config.slot_bytes, "cpu", _allow_cpu_for_tests=True))
    fake = lambda o: isinstance(o, FakeCuda)  # noqa: E731
    monkeypatch.setattr(store_module, "is_cuda_tensor", fake)
    monkeypatch.setattr(device_moves, "is_cuda_tensor", fake)
    monkeypatch.setattr(TieredStore, "_copier", lambda self, device: copier)
    return copier


SLOT = 512


@pytest.fixture
def device_store(cpu_device, clock):
    built = []

    def build(host_slots=8, device_slots=2, *, device_slot=SLOT, promote=True, disk=None, **kwargs):
        host = HostTierConfig(capacity_bytes=host_slots * SLOT, slot_bytes=SLOT, prefault=False)
        device = DeviceTierConfig(capacity_bytes=device_slots * device_slot, slot_bytes=device_slot,
                                  promote_on_read=promote)
        disk_config = None if disk is None else DiskTierConfig(
            paths=[str(disk)], capacity_bytes=64 * SLOT, fsync="never", min_free_bytes=0)
        store = TieredStore(StoreConfig(host=host, device=device, disk=disk_config, **kwargs), clock=clock)
        built.append(store)
        return store

    yield build
    for store in built:
        store.close()


def device_keys(store) -> set:
    return set(store._device_cache.index.entries)


def slot_bytes(store, key) -> bytes:
    entry = store._device_cache.lookup(store._key(key))
    return bytes(store._device_arena.slot_tensor(entry.location, entry.nbytes).numpy())


def test_a_cuda_put_is_kept_in_hbm_and_a_hit_moves_no_host_bytes(device_store, cpu_device):
    store = device_store()
    assert store.put(b"k", cuda_page(page(1, SLOT)))
    assert slot_bytes(store, b"k") == page(1, SLOT)
    assert bytes(store.get(b"k")) == page(1, SLOT)  # the host tier has it too (write-through)
    out = cuda_out(SLOT)
    uploads = cpu_device.to_device_calls
    assert store.get_into(b"k", out) and out.bytes() == page(1, SLOT)
    assert cpu_device.to_device_calls == uploads  # device to device: no host -> device copy
    stats = store.stats()
    assert [t.name for t in stats.tiers] == ["device", "host"]
    device = stats.tier("device")
    assert (device.hits, device.entries, device.slots_used, device.bytes_out) == (1, 1, 1, SLOT)
    assert stats.tier("host").hits == 1  # the get() above; the HBM hit is not a host hit
    assert (stats.gets, stats.hits) == (2, 2)


def test_hbm_eviction_falls_back_to_the_host_tier_and_promotes(device_store, cpu_device):
    store = device_store(device_slots=2)
    for i in range(3):
        store.put(b"%d" % i, cuda_page(page(i, SLOT)))
    assert device_keys(store) == {store._key(b"1"), store._key(b"2")}  # LRU: 0 dropped
    assert store.stats().tier("device").evictions == 1
    out = cuda_out(SLOT)
    uploads = cpu_device.to_device_calls
    assert store.get_into(b"0", out) and out.bytes() == page(0, SLOT)
    assert cpu_device.to_device_calls == uploads + 1  # from the host slot
    assert store._key(b"0") in device_keys(store)  # promoted
    assert slot_bytes(store, b"0") == page(0, SLOT)
    assert store.get_into(b"0", cuda_out(SLOT)) and cpu_device.to_device_calls == uploads + 1


def test_promote_on_read_off(device_store):
    store = device_store(promote=False)
    store.put(b"k", page(7, SLOT))  # a host value: not in HBM
    assert not device_keys(store)
    out = cuda_out(SLOT)
    assert store.get_into(b"k", out) and out.bytes() == page(7, SLOT)
    assert not device_keys(store)


def test_a_put_replaces_or_drops_the_older_hbm_copy(device_store):
    store = device_store()
    store.put(b"k", cuda_page(page(1, SLOT)))
    store.put(b"k", cuda_page(page(2, SLOT)))
    assert slot_bytes(store, b"k") == page(2, SLOT) and len(device_keys(store)) == 1
    out = cuda_out(SLOT)
    assert store.get_into(b"k", out) and out.bytes() == page(2, SLOT)
    store.put(b"k", page(3, SLOT))  # a CPU value: the HBM copy is now old
    assert not device_keys(store)
    assert store.get_into(b"k", out) and out.bytes() == page(3, SLOT)
    assert slot_bytes(store, b"k") == page(3, SLOT)  # promoted again
    store.batch_put([b"k", b"j"], [page(4, SLOT), cuda_page(page(5, SLOT))])
    assert device_keys(store) == {store._key(b"j")}
    outs = [cuda_out(SLOT), cuda_out(SLOT)]
    assert store.batch_get_into([b"k", b"j"], outs) == [True, True]
    assert [o.bytes() for o in outs] == [page(4, SLOT), page(5, SLOT)]


def test_evict_expire_and_host_eviction_drop_the_hbm_copy(device_store, clock):
    store = device_store(host_slots=2, device_slots=4)
    store.put(b"gone", cuda_page(page(1, SLOT)))
    assert store.evict(b"gone") and not device_keys(store)
    assert not store.get_into(b"gone", cuda_out(SLOT))
    assert store.stats().misses == {"evicted": 1}
    store.put(b"brief", cuda_page(page(2, SLOT)), ttl_s=5)
    clock.advance(6)
    assert store._key(b"brief") in device_keys(store)  # expiry is lazy ...
    assert not store.get_into(b"brief", cuda_out(SLOT))  # ... but a device hit checks the window
    assert not device_keys(store) and store.stats().misses["expired"] == 1
    store.put(b"a", cuda_page(page(3, SLOT)), ttl_s=5)
    clock.advance(6)
    store.sweep_expired()
    assert not device_keys(store)
    for i in range(3):  # no disk: host eviction takes the page out of the store
        store.put(b"%d" % i, cuda_page(page(10 + i, SLOT)))
    assert store._key(b"0") not in device_keys(store)
    assert not store.get_into(b"0", cuda_out(SLOT))


def test_a_device_hit_refreshes_the_window_when_reads_do(device_store, clock):
    store = device_store(ttl_refresh="read")
    store.put(b"k", cuda_page(page(1, SLOT)), ttl_s=10)
    for _ in range(3):
        clock.advance(8)
        assert store.get_into(b"k", cuda_out(SLOT))  # each HBM hit opens the window again
    clock.advance(11)
    assert not store.get_into(b"k", cuda_out(SLOT))


def test_a_device_hit_keeps_the_host_copy_recently_used(device_store):
    store = device_store(host_slots=2, device_slots=2)
    store.put(b"a", cuda_page(page(1, SLOT)))
    store.put(b"b", page(2, SLOT))
    assert store.get_into(b"a", cuda_out(SLOT))  # an HBM hit: a is now used after b
    store.put(b"c", page(3, SLOT))  # the host tier evicts its least recently used: b
    assert store.contains(b"a") and not store.contains(b"b")


def test_pages_too_large_for_a_device_slot_skip_it(device_store):
    store = device_store(device_slot=256)
    store.put(b"big", cuda_page(page(1, SLOT)))
    store.put(b"small", cuda_page(page(2, 256)))
    assert device_keys(store) == {store._key(b"small")}
    out = cuda_out(SLOT)
    assert store.get_into(b"big", out) and out.bytes() == page(1, SLOT)
    assert device_keys(store) == {store._key(b"small")}
    with pytest.raises(ValueTooLargeError):
        store.put(b"huge", cuda_page(page(3, 2 * SLOT)))


def test_wrong_sizes_are_refused_before_anything_is_copied(device_store):
    store = device_store()
    store.put(b"k", cuda_page(page(1, SLOT)))
    store.put(b"h", page(2, SLOT))
    with pytest.raises(BufferSizeError, match="outs\\[0\\]"):
        store.get_into(b"k", cuda_out(SLOT // 2))
    good = cuda_out(SLOT)
    with pytest.raises(BufferSizeError, match="outs\\[1\\] has 256 bytes"):
        store.batch_get_into([b"k", b"h"], [good, cuda_out(SLOT // 2)])
    assert good.bytes() == bytes(SLOT)  # the HBM hit was not copied either
    assert store.stats().gets == 0
    entry = store._device_cache.lookup(store._key(b"k"))
    assert entry.readers == 0 and store._device_cache.pending_fills() == 0


def test_hbm_copies_survive_demotion_to_disk_and_come_back_from_it(device_store, tmp_path, cpu_device):
    store = device_store(host_slots=2, device_slots=2, disk=tmp_path)
    store.put(b"a", cuda_page(page(1, SLOT)))
    store.put(b"b", page(2, SLOT))
    store.put(b"c", page(3, SLOT))  # a goes to disk; its HBM copy is still good
    assert store._key(b"a") not in store._first_index.entries
    assert store._key(b"a") in device_keys(store)
    uploads = cpu_device.to_device_calls
    out = cuda_out(SLOT)
    assert store.get_into(b"a", out) and out.bytes() == page(1, SLOT)
    assert cpu_device.to_device_calls == uploads
    out = cuda_out(SLOT)
    assert store.get_into(b"b", out) and out.bytes() == page(2, SLOT)  # from disk, promoted
    assert device_keys(store) == {store._key(b"a"), store._key(b"b")}
    store.put(b"a", page(4, SLOT))  # new version: host publishes, the disk copy goes, HBM too
    assert store._key(b"a") not in device_keys(store)
    assert store.get_into(b"a", out) and out.bytes() == page(4, SLOT)


def test_close_and_reopen_with_a_device_tier(device_store, tmp_path):
    store = device_store(disk=tmp_path)
    store.put(b"k", cuda_page(page(1, SLOT)))
    store.close()
    store = device_store(disk=tmp_path)  # HBM starts empty; the page comes back from disk
    assert not device_keys(store)
    out = cuda_out(SLOT)
    assert store.get_into(b"k", out) and out.bytes() == page(1, SLOT)
    assert device_keys(store) == {store._key(b"k")}


def test_threads_never_see_a_torn_or_old_page(device_store):
    store = device_store(host_slots=16, device_slots=3)
    keys = [b"%d" % i for i in range(4)]
    written: dict[bytes, set] = {k: set() for k in keys}
    errors: list[str] = []

    def writer(tid):
        for n in range(150):
            key, seed = keys[(tid + n) % 4], tid * 1000 + n
            written[key].add(seed)
            store.put(key, cuda_page(page(seed, SLOT)) if (n + tid) % 2 else page(seed, SLOT))

    def reader():
        for n in range(300):
            key, out = keys[n % 4], cuda_out(SLOT)
            if store.get_into(key, out):
                data = out.bytes()
                seed = int.from_bytes(data[:8], "little")
                if data != page(seed, SLOT) or seed not in written[key]:
                    errors.append(f"{key!r}: torn page or another key's")

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(2)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for key in keys:  # quiet again: HBM agrees with the host tier
        host = bytes(store.get(key))
        out = cuda_out(SLOT)
        assert store.get_into(key, out) and out.bytes() == host
        if store._device_cache.lookup(store._key(key)) is not None:
            assert slot_bytes(store, key) == host
    cache = store._device_cache
    assert cache.pending_fills() == 0 and all(e.readers == 0 for e in cache.index.entries.values())


def test_prometheus_reports_the_device_tier(device_store):
    from kvtier import prometheus

    store = device_store()
    store.put(b"k", cuda_page(page(1, SLOT)))
    store.get_into(b"k", cuda_out(SLOT))
    out = prometheus._Families()
    prometheus.add_store(out, "s", store.stats())
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in out for s in f.samples}
    assert got[("kvtier_tier_hits_total", (("store", "s"), ("tier", "device")))] == 1
    assert got[("kvtier_tier_slots", (("store", "s"), ("tier", "device")))] == 2


# -- the store against a dict model, with HBM copies ---------------------------------------------

KEYS = st.sampled_from([b"k%d" % i for i in range(6)])
SIZES = st.sampled_from([SLOT, SLOT // 2])
TTLS = st.sampled_from([None, None, 5.0, 20.0])


class DeviceTierMachine(RuleBasedStateMachine):
    """Puts (CUDA or host values, single or batched), reads into CUDA and host buffers,
    evictions and expiry, with a 2-slot device tier in front of a host tier that either holds
    everything or spills to disk (so every live page must hit). Whatever a read returns is
    the newest version; an HBM copy always equals it; HBM hits move no host bytes."""

    DISK = False

    def __init__(self):
        super().__init__()
        self.copier = SyncCopier()
        self.patch = pytest.MonkeyPatch()
        self.patch.setattr(TieredStore, "_make_device_arena", lambda _, c: DeviceArena(
            c.capacity_bytes, c.slot_bytes, "cpu", _allow_cpu_for_tests=True))
        fake = lambda o: isinstance(o, FakeCuda)  # noqa: E731
        self.patch.setattr(store_module, "is_cuda_tensor", fake)
        self.patch.setattr(device_moves, "is_cuda_tensor", fake)
        self.patch.setattr(TieredStore, "_copier", lambda _, device: self.copier)
        self.dir = tempfile.mkdtemp(prefix="kvtier-device-") if self.DISK else None
        host_slots = 3 if self.DISK else 10  # no disk: room for every key and a batch re-put
        host = HostTierConfig(capacity_bytes=host_slots * SLOT, slot_bytes=SLOT, prefault=False)
        disk = None if self.dir is None else DiskTierConfig(
            paths=[self.dir], capacity_bytes=16 * SLOT, fsync="never", min_free_bytes=0)
        self.clock = FakeClock()
        self.store = TieredStore(StoreConfig(host=host, disk=disk, device=DeviceTierConfig(
            capacity_bytes=2 * SLOT)), clock=self.clock)
        self.model: dict[bytes, tuple[bytes, float | None]] = {}  # key -> (value, deadline)
        self.versions = 0

    def teardown(self):
        self.store.close()
        self.patch.undo()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    def value(self, size: int) -> bytes:
        self.versions += 1
        return page(self.versions, size)

    def live(self, key) -> bytes | None:
        found = self.model.get(key)
        if found is None or (found[1] is not None and found[1] <= self.clock.now):
            return None
        return found[0]

    def remember(self, key, data, ttl):
        self.model[key] = (data, None if ttl is None else self.clock.now + ttl)

    @rule(key=KEYS, size=SIZES, ttl=TTLS, on_gpu=st.booleans())
    def put(self, key, size, ttl, on_gpu):
        data = self.value(size)
        assert self.store.put(key, cuda_page(data) if on_gpu else data, ttl_s=ttl)
        self.remember(key, data, ttl)
        assert (self.store._key(key) in device_keys(self.store)) is on_gpu

    @rule(keys=st.lists(KEYS, min_size=1, max_size=3, unique=True), size=SIZES, ttl=TTLS,
          on_gpu=st.lists(st.booleans(), min_size=3, max_size=3))
    def batch_put(self, keys, size, ttl, on_gpu):
        datas = [self.value(size) for _ in keys]
        values = [cuda_page(d) if g else d for d, g in zip(datas, on_gpu)]
        assert self.store.batch_put(keys, values, ttl_s=ttl) == [True] * len(keys)
        for key, data in zip(keys, datas):
            self.remember(key, data, ttl)

    @rule(key=KEYS)
    def get_into_cuda(self, key):
        want = self.live(key)
        size = len(want) if want is not None else SLOT
        in_hbm = self.store._key(key) in device_keys(self.store)
        uploads = self.copier.to_device_calls
        out = cuda_out(size)
        got = self.store.get_into(key, out)
        assert got is (want is not None)
        if got:
            assert out.bytes() == want
            if in_hbm:
                assert self.copier.to_device_calls == uploads  # an HBM hit: no host traffic
            assert self.store._key(key) in device_keys(self.store)  # hit or promoted

    @rule(keys=st.lists(KEYS, min_size=1, max_size=4), on_gpu=st.lists(st.booleans(), min_size=4, max_size=4))
    def batch_get_into(self, keys, on_gpu):
        wants = [self.live(k) for k in keys]
        sizes = [SLOT if w is None else len(w) for w in wants]
        outs = [cuda_out(n) if g else bytearray(n) for n, g in zip(sizes, on_gpu)]
        got = self.store.batch_get_into(keys, outs)
        assert got == [w is not None for w in wants]
        for out, want in zip(outs, wants):
            if want is not None:
                assert (out.bytes() if isinstance(out, FakeCuda) else bytes(out)) == want

    @rule(key=KEYS)
    def get(self, key):
        got = self.store.get(key)
        want = self.live(key)
        assert (None if got is None else bytes(got)) == want

    @rule(key=KEYS)
    def evict(self, key):
        self.store.evict(key)
        self.model.pop(key, None)
        assert self.store._key(key) not in device_keys(self.store)

    @rule(seconds=st.sampled_from([1.0, 6.0, 30.0]))
    def advance(self, seconds):
        self.clock.advance(seconds)

    @precondition(lambda self: self.model)
    @rule()
    def sweep(self):
        self.store.sweep_expired()
        for key in list(self.model):
            if self.live(key) is None:
                assert self.store._key(key) not in device_keys(self.store)

    @invariant()
    def hbm_copies_equal_the_newest_version_held_below(self):
        cache = self.store._device_cache
        alloc = cache.index.allocator
        assert len(cache) <= alloc.slot_count and alloc.used <= alloc.slot_count
        assert cache.pending_fills() == 0
        by_key = {self.store._key(k): k for k in self.model}
        local = [index.entries for _, index in self.store._tiers]
        for key, entry in cache.index.entries.items():
            assert entry.readers == 0
            assert any(key in entries for entries in local)  # never the only copy
            data = self.model[by_key[key]][0]
            assert bytes(self.store._device_arena.slot_tensor(entry.location, entry.nbytes).numpy()) == data


TestDeviceTierMachine = DeviceTierMachine.TestCase
TestDeviceTierMachine.settings = settings(max_examples=80, stateful_step_count=30, deadline=None)


class DeviceOverDiskMachine(DeviceTierMachine):
    DISK = True


TestDeviceOverDiskMachine = DeviceOverDiskMachine.TestCase
TestDeviceOverDiskMachine.settings = settings(max_examples=30, stateful_step_count=30, deadline=None)
