"""The GPU path: what runs everywhere (status, refusals, the host arena's bookkeeping of copies
in flight, driven by fake device copies) and, marked ``gpu``, what needs a CUDA device
(kernels = CPU reference byte for byte, GPU -> host -> disk -> host -> GPU round trips,
copies beside a running matmul, the device tier's HBM hits, promotions, overwrites and
expiry). The ``gpu`` tests skip cleanly without one. The device tier's bookkeeping is tested
without a GPU in ``test_device_tier.py``."""

from __future__ import annotations

import threading

import pytest
from typer.testing import CliRunner

import kvtier.device_moves as device_moves
import kvtier.store as store_module
from conftest import FakeClock
from kvtier import DiskTierConfig, HostTierConfig, StoreConfig, TieredStore, UnsupportedValueError, gpu
from kvtier.cli import app
from kvtier.config import DeviceTierConfig

STATUS = gpu.status()
gpu_only = pytest.mark.skipif(not STATUS.available, reason=f"no usable CUDA: {STATUS.reason}")


# -- everywhere ---------------------------------------------------------------------------------

@pytest.mark.skipif(STATUS.available, reason="this machine has a usable GPU")
def test_without_cuda_everything_says_why():
    assert not gpu.available() and STATUS.reason
    with pytest.raises(gpu.GpuUnavailableError, match="CUDA is not usable here"):
        gpu.require()
    from kvtier.tiers.device import DeviceArena, DeviceCopier

    with pytest.raises(gpu.GpuUnavailableError):
        DeviceCopier("cuda")
    with pytest.raises(gpu.GpuUnavailableError):
        DeviceArena(1 << 20, 1 << 16)
    run = CliRunner().invoke(app, ["bench", "--gpu"])
    assert run.exit_code == 2
    assert "kvtier bench --gpu needs a usable CUDA device" in run.output


def test_host_arena_reports_whether_it_is_pinned(make_store):
    extra = make_store().stats().tiers[0].extra
    assert extra["cuda_pinned"] is STATUS.available
    assert (extra["cuda_pin_error"] is None) is STATUS.available
    host = HostTierConfig(capacity_bytes=1 << 16, slot_bytes=1 << 12, prefault=False, cuda_pin=False)
    with TieredStore(StoreConfig(host=host)) as store:
        assert store.stats().tiers[0].extra["cuda_pin_error"] == "cuda_pin is off"


def test_cpu_values_are_unchanged(make_store):
    torch = pytest.importorskip("torch")
    store = make_store()
    store.put(b"k", torch.arange(1024, dtype=torch.int32))
    out = torch.empty(1024, dtype=torch.int32)
    assert store.get_into(b"k", out) and torch.equal(out, torch.arange(1024, dtype=torch.int32))
    with pytest.raises(UnsupportedValueError):
        store.put(b"x", object())
    with pytest.raises(UnsupportedValueError):
        store.get_into(b"k", object())
    store.synchronize()  # no device copies: nothing to wait for


class FakePending:
    """A copy 'in flight' that happens only when someone waits for it (like a slow DMA)."""

    def __init__(self, dst, src):
        self.dst, self.src, self.finished = dst, bytes(src), False

    def done(self):
        return self.finished

    def wait(self):
        if not self.finished:
            self.dst[:] = self.src
            self.finished = True


class FakeValue:
    """Stands in for DeviceValue: put() queues a deferred copy into the slot."""

    def __init__(self, data):
        self.data, self.nbytes, self.queued = data, len(data), []

    def copy_to(self, dst):
        pending = FakePending(dst, self.data)
        self.queued.append(pending)
        return pending


class FakeOut:
    """Stands in for DeviceOut: host hits 'DMA' from the slot, lower tiers fill the bounce."""

    def __init__(self, nbytes):
        self.bounce = bytearray(nbytes)
        self.view = memoryview(self.bounce)
        self.target = bytearray(nbytes)
        self.delivered = False
        self.pending = None

    def deliver(self, src):
        self.delivered = True
        self.pending = FakePending(memoryview(self.target), src)
        return self.pending

    def finish(self):
        if not self.delivered:
            self.delivered = True
            self.target[:] = self.bounce

    def release(self):
        pass


@pytest.fixture
def fake_device(monkeypatch):
    """Route FakeValue / FakeOut through the store's CUDA paths."""
    monkeypatch.setattr(TieredStore, "_device_value",
                        lambda self, v, what="value": v if isinstance(v, FakeValue) else None)
    monkeypatch.setattr(store_module, "is_cuda_tensor", lambda o: isinstance(o, FakeOut))
    monkeypatch.setattr(device_moves, "is_cuda_tensor", lambda o: isinstance(o, FakeOut))
    monkeypatch.setattr(device_moves, "DeviceOut", lambda out, copier: out)
    monkeypatch.setattr(TieredStore, "_copier", lambda self, device: None)
    monkeypatch.setattr(FakeOut, "is_contiguous", lambda self: True, raising=False)
    monkeypatch.setattr(FakeOut, "device", None, raising=False)


def test_reads_wait_for_a_put_still_in_flight(make_store, fake_device):
    store = make_store(slots=4)
    value = FakeValue(b"a" * 4096)
    assert store.put(b"k", value)
    assert not value.queued[0].finished  # put returned before the copy was done
    assert bytes(store.get(b"k")) == b"a" * 4096  # the CPU read waited for it
    assert value.queued[0].finished


def test_a_slot_is_not_reused_before_its_copy_is_done(make_store, fake_device):
    store = make_store(slots=1)
    first = FakeValue(b"1" * 4096)
    store.put(b"a", first)
    store.put(b"b", b"2" * 4096)  # evicts a and reuses its slot: the deferred copy lands first
    assert first.queued[0].finished
    assert bytes(store.get(b"b")) == b"2" * 4096


def test_get_into_a_device_tensor_from_host_and_disk(stores, tmp_path, fake_device):
    host = HostTierConfig(capacity_bytes=2 * 4096, slot_bytes=4096, prefault=False)
    store = stores(StoreConfig(host=host, disk=DiskTierConfig(paths=[str(tmp_path)], capacity_bytes=1 << 20)))
    store.put(b"hot", FakeValue(b"h" * 4096))
    out = FakeOut(4096)
    assert store.get_into(b"hot", out)
    assert out.delivered and out.pending is not None  # straight from the slot, queued
    out.pending.wait()
    assert out.target == b"h" * 4096 and out.bounce == bytearray(4096)
    for i in range(4):  # push "hot" down to disk (the write-back waits for its copy)
        store.put(b"%d" % i, FakeValue(bytes([i]) * 4096))
    outs = [FakeOut(4096), FakeOut(4096), bytearray(4096)]
    assert store.batch_get_into([b"hot", b"3", b"0"], outs) == [True, True, True]
    for o in outs[:2]:
        if o.pending is not None:
            o.pending.wait()
    assert outs[0].target == b"h" * 4096 and outs[1].target == b"\x03" * 4096
    assert outs[2] == b"\x00" * 4096
    assert store.get_into(b"missing", FakeOut(4096)) is False


# -- with a GPU ---------------------------------------------------------------------------------

@pytest.fixture
def torch_cuda():
    torch = pytest.importorskip("torch")
    return torch


@pytest.mark.gpu
@gpu_only
@pytest.mark.parametrize("kind", ["vllm", "vllm_cross_layer", "sglang_layer_first", "sglang_page_first", "mla"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float8_e4m3fn"])
@pytest.mark.parametrize("head_dim", [128, 7])  # 16-byte vectors, and the narrow fallback
def test_kernels_equal_the_cpu_reference(torch_cuda, kind, dtype, head_dim):
    torch = torch_cuda
    from test_layout import build, make_layout

    from kvtier.layout import gather, scatter

    layout = make_layout(kind, 3, 40, 16, 2, head_dim, dtype)
    gen = torch.Generator().manual_seed(head_dim)
    caches, _ = build(layout, gen, padded=True)
    ids = torch.randperm(40, generator=gen)[:24].reshape(6, 4)
    cpu = [bytearray(layout.page_bytes(4)) for _ in range(6)]
    gather(layout, caches, ids, cpu)
    on_gpu = _to(caches, "cuda")
    pages = [torch.empty(layout.page_bytes(4), dtype=torch.uint8, device="cuda") for _ in range(6)]
    gather(layout, on_gpu, ids, pages)
    assert [bytes(p.cpu().numpy()) for p in pages] == [bytes(p) for p in cpu]
    for t in _flat(on_gpu):
        t.view(torch.uint8).zero_()
    scatter(layout, pages, on_gpu, ids)
    for t in _flat(caches):
        t.view(torch.uint8).zero_()
    scatter(layout, cpu, caches, ids)
    assert all(torch.equal(a.cpu().view(torch.uint8), b.view(torch.uint8))
               for a, b in zip(_flat(on_gpu), _flat(caches)))


def _to(caches, device):
    if hasattr(caches, "to"):
        return caches.to(device)
    return type(caches)(_to(c, device) for c in caches)


def _flat(caches):
    return [caches] if hasattr(caches, "to") else [t for c in caches for t in _flat(c)]


@pytest.mark.gpu
@gpu_only
def test_round_trip_gpu_host_disk_host_gpu(torch_cuda, stores, tmp_path):
    torch = torch_cuda
    size = 256 << 10
    host = HostTierConfig(capacity_bytes=4 * size, slot_bytes=size)
    store = stores(StoreConfig(host=host, disk=DiskTierConfig(paths=[str(tmp_path)], capacity_bytes=64 * size)))
    assert store.stats().tiers[0].extra["cuda_pinned"]
    pages = [torch.randint(0, 255, (size,), dtype=torch.uint8, device="cuda") for _ in range(16)]
    for i, page in enumerate(pages):
        assert store.put(b"%d" % i, page)
    store.synchronize()
    store.flush()
    outs = [torch.empty_like(p) for p in pages]
    assert store.batch_get_into([b"%d" % i for i in range(16)], outs) == [True] * 16
    torch.cuda.current_stream().synchronize()
    assert all(torch.equal(a, b) for a, b in zip(pages, outs))
    store.synchronize()  # every copy done: each was timed with its events, on its route
    routes = store.stats().routes
    assert routes["device->host"].ops == 16 and routes["host->device"].ops == 16
    assert routes["device->host"].bandwidth_Bps > 0


@pytest.mark.gpu
@gpu_only
@pytest.mark.parametrize("hbm", [False, True], ids=["host", "device-tier"])
def test_copies_beside_a_running_matmul_do_not_corrupt_pages(torch_cuda, make_store, hbm):
    torch = torch_cuda
    from kvtier.layout import KVLayout

    device = DeviceTierConfig(capacity_bytes=16 << 20) if hbm else None  # 16 of the 64 pages
    store = make_store(slots=64, slot_bytes=1 << 20, device=device)
    layout = KVLayout.vllm(4, 64, 16, 4, 64, "float16")
    caches = [torch.randn(2, 64, 16, 4, 64, device="cuda", dtype=torch.float16) for _ in range(4)]
    bound = layout.bind(caches)
    a = torch.randn(4096, 4096, device="cuda")
    stop = threading.Event()

    def busy():
        s = torch.cuda.Stream()
        with torch.cuda.stream(s):
            while not stop.is_set():
                a @ a
        s.synchronize()

    worker = threading.Thread(target=busy)
    worker.start()
    try:
        for round_ in range(8):
            ids = torch.randperm(64)[:32].reshape(8, 4)
            pages = [torch.empty(layout.page_bytes(4), dtype=torch.uint8, device="cuda") for _ in range(8)]
            bound.gather(ids, pages)
            keys = [b"%d-%d" % (round_, i) for i in range(8)]
            assert store.batch_put(keys, pages) == [True] * 8
            back = [torch.empty_like(p) for p in pages]
            assert store.batch_get_into(keys, back) == [True] * 8
            torch.cuda.current_stream().synchronize()
            assert all(torch.equal(x, y) for x, y in zip(pages, back))
    finally:
        stop.set()
        worker.join()


@pytest.mark.gpu
@gpu_only
def test_device_arena_round_trip(torch_cuda):
    torch = torch_cuda
    from kvtier.tiers.device import DeviceArena

    arena = DeviceArena(4 << 20, 1 << 20)
    src = memoryview(bytearray(range(256)) * 4096)
    arena.write(2, src)
    out = memoryview(bytearray(len(src)))
    assert arena.read_into(2, out, None) and out == src
    assert torch.equal(arena.slot_tensor(2, 256).cpu(), torch.arange(256, dtype=torch.uint8))
    arena.close()


# -- the device tier (HBM), with a GPU ------------------------------------------------------------

def _pages(torch, count, size, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randint(0, 256, (size,), dtype=torch.uint8, device="cuda", generator=gen)
            for _ in range(count)]


def _h2d_ops(store):
    store.synchronize()  # a copy is measured (and counted on its route) once it is done
    return store.stats().routes["host->device"].ops


def _in_hbm(store, key):
    return store._device_cache.lookup(store._key(key)) is not None


@pytest.mark.gpu
@gpu_only
def test_device_tier_hits_move_no_host_bytes(torch_cuda, stores):
    torch = torch_cuda
    size = 256 << 10
    store = stores(StoreConfig(host=HostTierConfig(capacity_bytes=8 * size, slot_bytes=size),
                               device=DeviceTierConfig(capacity_bytes=4 * size)))
    keys = [b"%d" % i for i in range(4)]
    pages = _pages(torch, 4, size)
    assert store.batch_put(keys, pages) == [True] * 4
    assert all(_in_hbm(store, k) for k in keys)
    before = _h2d_ops(store)
    outs = [torch.empty_like(p) for p in pages]
    assert store.batch_get_into(keys, outs) == [True] * 4  # no synchronize: streams order it
    torch.cuda.current_stream().synchronize()
    assert all(torch.equal(a, b) for a, b in zip(pages, outs))
    assert _h2d_ops(store) == before
    stats = store.stats()
    assert [t.name for t in stats.tiers] == ["device", "host"]
    assert stats.tier("device").hits == 4 and stats.tier("device").entries == 4
    assert stats.tier("host").hits == 0
    assert bytes(store.get(b"2")) == bytes(pages[2].cpu().numpy())  # write-through: host has it


@pytest.mark.gpu
@gpu_only
@pytest.mark.parametrize("promote", [True, False])
def test_device_tier_eviction_falls_back_to_host_and_promotes(torch_cuda, stores, promote):
    torch = torch_cuda
    size = 256 << 10
    store = stores(StoreConfig(host=HostTierConfig(capacity_bytes=8 * size, slot_bytes=size),
                               device=DeviceTierConfig(capacity_bytes=2 * size, promote_on_read=promote)))
    pages = _pages(torch, 3, size, seed=1)
    for i, page in enumerate(pages):
        assert store.put(b"%d" % i, page)
    assert not _in_hbm(store, b"0") and store.stats().tier("device").evictions == 1
    before = _h2d_ops(store)
    out = torch.empty_like(pages[0])
    assert store.get_into(b"0", out)
    torch.cuda.current_stream().synchronize()
    assert torch.equal(out, pages[0])
    assert _h2d_ops(store) == before + 1  # from the host slot
    assert _in_hbm(store, b"0") is promote
    again = torch.empty_like(pages[0])
    assert store.get_into(b"0", again)
    torch.cuda.current_stream().synchronize()
    assert torch.equal(again, pages[0])
    assert _h2d_ops(store) == before + (1 if promote else 2)


@pytest.mark.gpu
@gpu_only
def test_round_trip_gpu_host_disk_host_gpu_with_the_device_tier(torch_cuda, stores, tmp_path):
    torch = torch_cuda
    size = 256 << 10
    store = stores(StoreConfig(host=HostTierConfig(capacity_bytes=4 * size, slot_bytes=size),
                               disk=DiskTierConfig(paths=[str(tmp_path)], capacity_bytes=64 * size),
                               device=DeviceTierConfig(capacity_bytes=2 * size)))
    keys = [b"%d" % i for i in range(16)]
    pages = _pages(torch, 16, size, seed=2)
    for key, page in zip(keys, pages):
        assert store.put(key, page)
    store.synchronize()
    store.flush()
    for attempt in range(2):  # the second pass reuses the pinned bounce buffers of the first
        outs = [torch.empty_like(p) for p in pages]
        assert store.batch_get_into(keys, outs) == [True] * 16
        torch.cuda.current_stream().synchronize()
        assert all(torch.equal(a, b) for a, b in zip(pages, outs))
        store.synchronize()
    stats = store.stats()
    assert stats.tier("disk").hits > 0 and stats.tier("device").hits > 0
    assert stats.tier("device").extra["bounce_reused"] > 0
    assert stats.tier("device").slots_used <= 2


@pytest.mark.gpu
@gpu_only
def test_device_tier_never_serves_an_old_version(torch_cuda, stores):
    torch = torch_cuda
    size = 64 << 10
    store = stores(StoreConfig(host=HostTierConfig(capacity_bytes=16 * size, slot_bytes=size),
                               device=DeviceTierConfig(capacity_bytes=4 * size)))
    out = torch.empty(size, dtype=torch.uint8, device="cuda")
    for version in range(32):  # CUDA puts, CPU puts and reads interleaved, no synchronize
        value = torch.full((size,), version, dtype=torch.uint8, device="cuda")
        assert store.put(b"k", value.cpu() if version % 3 == 2 else value)
        assert store.get_into(b"k", out)
        assert bool((out == version).all())  # .all() on the current stream: ordered after the copy
    store.synchronize()
    assert bytes(store.get(b"k")) == bytes([31]) * size
    assert store.stats().tier("device").entries == 1


@pytest.mark.gpu
@gpu_only
def test_device_tier_copies_expire_with_the_page(torch_cuda):
    torch = torch_cuda
    size = 64 << 10
    clock = FakeClock()
    config = StoreConfig(host=HostTierConfig(capacity_bytes=4 * size, slot_bytes=size),
                         device=DeviceTierConfig(capacity_bytes=4 * size))
    with TieredStore(config, clock=clock) as store:
        page = torch.full((size,), 7, dtype=torch.uint8, device="cuda")
        assert store.put(b"k", page, ttl_s=5)
        out = torch.zeros_like(page)
        clock.advance(4)
        assert store.get_into(b"k", out) and bool((out == 7).all())
        clock.advance(2)
        assert not store.get_into(b"k", torch.zeros_like(page))
        assert not _in_hbm(store, b"k")
        assert store.stats().misses == {"expired": 1}
        assert store.put(b"e", page) and store.evict(b"e") and not _in_hbm(store, b"e")


@pytest.mark.gpu
@gpu_only
def test_device_arena_orders_copies_of_one_slot_across_streams(torch_cuda):
    torch = torch_cuda
    from kvtier.tiers.device import DeviceArena

    arena = DeviceArena(4 << 20, 1 << 20)
    outs = []
    for value in range(1, 9):  # write (D2H stream) and read (H2D stream) one slot, no waiting
        arena.store_from(0, torch.full((1 << 20,), value, dtype=torch.uint8, device="cuda"))
        outs.append(torch.empty(1 << 20, dtype=torch.uint8, device="cuda"))
        arena.load_into(0, outs[-1])
    torch.cuda.current_stream().synchronize()
    assert [int(o.min()) for o in outs] == list(range(1, 9))
    assert [int(o.max()) for o in outs] == list(range(1, 9))
    arena.close()
