"""kvtier as SGLang's HiCache L3 backend, against SGLang's real storage interface.

SGLang's ``HiCacheStorage`` ABC, ``HiCacheStorageConfig`` and ``StorageBackendFactory`` are the
installed wheel's own (``pip install --no-deps sglang==0.5.23``; see scripts/test.sh). The
backend is always built the way SGLang's cache controller builds it:
``StorageBackendFactory.create_backend("dynamic", config, pool)``, then
``register_mem_pool_host(pool)`` and ``on_host_pools_registered()``.

The host pools are stand-ins (``_sglang_import.host_pool_class``), because SGLang's own
``MHATokenToKVPoolHost``/``MLATokenToKVPoolHost`` cannot be built here: importing
``pool_host/mha.py`` pulls in transformers, torchvision, triton, IPython, apache-tvm-ffi and
CUDA kernels, and their constructors need device KV buffers and SGLang's parallel runtime.
What the stand-ins share with the real classes: their page methods (``get_data_page``,
``get_dummy_flat_data_page``, ``set_from_flat_data_page``, ``get_page_buffer_meta`` and MLA's
``_storage_page_index``) are SGLang's own code, compiled from the installed wheel's source, and
their ``kv_buffer`` has the dims of ``init_kv_buffer`` in pool_host/mha.py and mla.py, which
``test_stand_in_pools_match_sglangs_pointer_math`` checks against SGLang's zero-copy pointer
math. Everything else (allocation, pinning, device transfers) plays no part in L3 storage.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")
try:
    from kvtier.integrations import _sglang_import

    _iface = _sglang_import.hicache_interface()
    Factory = _sglang_import.storage_backend_factory()
except ImportError as exc:  # pragma: no cover - depends on the environment
    pytest.skip(f"SGLang's storage interface cannot be imported ({exc}); scripts/test.sh installs "
                "it with pip install --no-deps sglang==0.5.23", allow_module_level=True)

import lmdb  # noqa: E402

from kvtier.errors import ConfigError  # noqa: E402
from kvtier.integrations.sglang import KvtierHiCacheStorage, SGLangBackendConfig  # noqa: E402
from kvtier.tiers.disk import DATA_FILE, INDEX_DIR  # noqa: E402

HiCacheStorage, HiCacheStorageConfig = _iface.HiCacheStorage, _iface.HiCacheStorageConfig
DYNAMIC = {"backend_name": "kvtier", "module_path": "kvtier.integrations.sglang",
           "class_name": "KvtierHiCacheStorage", "interface_v1": 1}


# -- stand-in host pools with SGLang's own page methods ----------------------------------------
class HostPoolHelpers:
    def page(self, i: int) -> torch.Tensor:
        """Page ``i``'s bytes as SGLang's generic path stores them (a flat copy)."""
        return self.get_data_page(i * self.page_size, flat=True).clone()

    def indices(self, pages) -> torch.Tensor:
        """Host token indices of ``pages``, as the cache controller passes them."""
        return torch.tensor([p * self.page_size + i for p in pages for i in range(self.page_size)],
                            dtype=torch.int64)


class MHAPool(HostPoolHelpers, _sglang_import.host_pool_class("mha")):
    pass


class MLAPool(HostPoolHelpers, _sglang_import.host_pool_class("mla")):
    pass


LAYOUTS = [pytest.param(MHAPool if kind == "mha" else MLAPool, layout, id=f"{kind}-{layout}")
           for kind, layout in _sglang_import.POOL_LAYOUTS]


# -- helpers ----------------------------------------------------------------------------------
def storage_config(tmp_path: Path, *, mla: bool = False, layout: str = "page_first", tp=(0, 1),
                   metrics: bool = False, model: str | None = "test-org/tiny-model",
                   **extra) -> HiCacheStorageConfig:
    extra = {**DYNAMIC, "storage_dir": str(tmp_path / "l3"), "disk_capacity": "4MiB",
             "host_capacity": "256KiB", "fsync": "never", "codec": "none", **extra}
    return HiCacheStorageConfig(
        tp_rank=tp[0], tp_size=tp[1], pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=1,
        is_mla_model=mla, enable_storage_metrics=metrics, is_page_first_layout=layout == "page_first",
        model_name=model, extra_config={k: v for k, v in extra.items() if v is not None})


def hashes(n: int, tag: str = "") -> list[str]:
    """Page hashes as SGLang makes them (SHA-256 hex)."""
    return [hashlib.sha256(f"{tag}/{i}".encode()).hexdigest() for i in range(n)]


@pytest.fixture
def attach():
    """Build a backend as SGLang's cache controller does; close every one at the end."""
    built: list[KvtierHiCacheStorage] = []

    def build(config: HiCacheStorageConfig, pool: HostPoolHelpers | None) -> KvtierHiCacheStorage:
        backend = Factory.create_backend("dynamic", config, pool)
        assert type(backend) is KvtierHiCacheStorage and isinstance(backend, HiCacheStorage)
        if pool is not None:
            backend.register_mem_pool_host(pool)
            backend.on_host_pools_registered()
        built.append(backend)
        return backend

    yield build
    for backend in built:
        backend.close()


def pool_for(cls, layout: str, tmp_path: Path, attach, **extra):
    pool = cls(layout)
    return pool, attach(storage_config(tmp_path, mla=cls is MLAPool, layout=layout, **extra), pool)


# -- the stand-ins -----------------------------------------------------------------------------
@pytest.mark.parametrize("cls,layout", LAYOUTS)
def test_stand_in_pools_match_sglangs_pointer_math(cls, layout):
    pool = cls(layout)
    starts = pool.indices([2, 5])
    pointers, sizes = pool.get_page_buffer_meta(starts)
    views = []
    for page in (2, 5):
        view = pool.get_data_page(page * pool.page_size, flat=False)
        parts = list(view.unbind(0)) if cls is MHAPool else [view]  # MHA: K and V
        if layout == "layer_first":  # one pointer per layer (K then V for MHA)
            parts = [part[layer] for layer in range(pool.layer_num) for part in parts]
        views += parts
    assert pointers == [v.data_ptr() for v in views]
    assert sizes == [v.numel() * v.element_size() for v in views]


# -- construction -----------------------------------------------------------------------------
def test_the_dynamic_factory_builds_it_and_config_errors_are_clear(tmp_path, attach):
    backend = attach(storage_config(tmp_path), None)
    assert backend.batch_exists(hashes(3)) == 0  # the store opens on first use, pool or not
    with pytest.raises(ConfigError, match=r"unknown extra_config key\(s\) \['storage_path'\].*storage_dir"):
        Factory.create_backend("dynamic", storage_config(tmp_path, storage_path="/x"), None)
    with pytest.raises(ConfigError, match="somewhere to keep pages"):
        KvtierHiCacheStorage(storage_config(tmp_path, storage_dir=None), {})
    with pytest.raises(ConfigError, match="remote_url"):  # MLA pages must be shared across TP ranks
        KvtierHiCacheStorage(storage_config(tmp_path, mla=True, tp=(1, 2)), {})
    with pytest.raises(ConfigError, match="disk.fsync"):
        KvtierHiCacheStorage(storage_config(tmp_path, fsync="sometimes"), {})


def test_extra_config_overrides_kvtier_environment_variables(tmp_path):
    env = {"KVTIER_HOST_CAPACITY_BYTES": "8MiB", "KVTIER_DISK_CODEC": "zstd", "KVTIER_POLICY": "ttl"}
    cfg = SGLangBackendConfig.from_sglang(storage_config(tmp_path, codec=None, host_capacity="16MiB"), env)
    store = cfg.store_config(65536)
    assert store.host.capacity_bytes == 16 << 20 and store.host.slot_bytes == 65536
    assert store.disk.codec == "zstd" and store.policy == "ttl"
    assert store.disk.write_mode == "write_through" and store.disk.slot_bytes == 65536
    assert store.disk.paths == (str(tmp_path / "l3" / "test-org-tiny-model" / "tp0of1_pp0of1_cp0of1_dp0"),)
    with pytest.raises(ConfigError, match="KVTIER_HOST_CAPACITY"):
        SGLangBackendConfig.from_sglang(storage_config(tmp_path), {"KVTIER_HOST_CAPACITY": "1"})


# -- round trips ------------------------------------------------------------------------------
@pytest.mark.parametrize("cls,layout", LAYOUTS)
def test_v1_round_trip_through_the_host_pool(cls, layout, tmp_path, attach):
    pool, backend = pool_for(cls, layout, tmp_path, attach)
    assert backend._pages.direct == (layout != "layer_first")  # layer_first goes through staging
    keys, originals = hashes(6, layout), [pool.page(p) for p in range(6)]
    assert backend.batch_set_v1(keys, pool.indices(range(6))) == [True] * 6
    pool.kv_buffer.zero_()
    assert backend.batch_get_v1(keys + hashes(1, "absent"), pool.indices([11, 1, 3, 5, 7, 9, 0])) == \
        [True] * 6 + [False]
    assert all(torch.equal(pool.page(p), o) for p, o in zip((11, 1, 3, 5, 7, 9), originals))
    assert not pool.page(0).any()  # the missing page's slot was not written
    with pytest.raises(ValueError, match="host indices"):
        backend.batch_get_v1(keys, pool.indices(range(5)))
    assert backend.batch_get_v1([], pool.indices([])) == []
    assert backend.batch_set_v1([], pool.indices([])) == []


@pytest.mark.parametrize("cls,layout", [LAYOUTS[1], LAYOUTS[4], LAYOUTS[0]])
def test_every_flat_page_method_round_trips_and_reads_what_v1_wrote(cls, layout, tmp_path, attach):
    pool, backend = pool_for(cls, layout, tmp_path, attach)
    keys, pages = hashes(6, "flat"), [pool.page(p) for p in range(6)]
    assert backend.set(keys[0], pages[0]) is True and backend.exists(keys[0])
    assert backend.batch_set(keys[1:4], pages[1:4]) is True
    assert backend.batch_set_v1(keys[4:], pool.indices([4, 5])) == [True, True]  # the other path
    assert backend.batch_exists(keys) == 6 and not backend.exists(hashes(1, "nope")[0])
    target = pool.get_dummy_flat_data_page()
    assert backend.get(keys[5], target) is target and torch.equal(target, pages[5])
    fresh = backend.get(keys[2])  # no target: a new flat page of the pool's dtype
    assert fresh.dtype == pool.dtype and torch.equal(fresh, pages[2])
    got = backend.batch_get(keys + hashes(1, "nope"), [pool.get_dummy_flat_data_page() for _ in range(7)])
    assert got[-1] is None and all(torch.equal(g, p) for g, p in zip(got, pages))
    pool.kv_buffer.zero_()  # flat pages written by set() load through the zero-copy path
    assert backend.batch_get_v1(keys[:3], pool.indices([9, 10, 11])) == [True] * 3
    assert all(torch.equal(pool.page(9 + i), pages[i]) for i in range(3))
    assert backend.batch_get([]) == [] and backend.batch_set([], []) is True
    with pytest.raises(ValueError, match="bytes but a page"):
        backend.set(keys[0], pages[0][:-1])


def test_batch_exists_counts_leading_hits_exactly(tmp_path, attach):
    pool, backend = pool_for(MHAPool, "page_first", tmp_path, attach)
    keys = hashes(8, "prefix")
    assert backend.batch_set_v1(keys[:5], pool.indices(range(5))) == [True] * 5
    assert backend.batch_set_v1(keys[6:7], pool.indices([6])) == [True]
    assert backend.batch_exists(keys) == 5
    assert backend.batch_exists(keys[6:7] + keys[:5]) == 6
    assert backend.batch_exists(keys[5:]) == 0 and backend.batch_exists([]) == 0
    # a page is there only with all its blocks: drop page 2's V block and the run stops at 2
    backend.store.evict(backend._block_keys([keys[2]])[1])
    assert backend.batch_exists(keys) == 2
    assert backend.batch_get_v1(keys[:3], pool.indices([8, 9, 10])) == [True, True, False]
    assert backend.batch_set_v1(keys[:3], pool.indices(range(3))) == [True] * 3  # 0, 1 skipped
    assert backend.batch_exists(keys) == 5


# -- failing closed ---------------------------------------------------------------------------
def slot_payload_offsets(directory: Path, slot_bytes: int) -> dict[bytes, int]:
    """block key -> offset of its payload in slots.dat (from the tier's LMDB index)."""
    from kvtier.tiers.disk_index import DiskRecord

    env = lmdb.open(str(directory / INDEX_DIR), max_dbs=2, readonly=True, lock=False)
    with env.begin(db=env.open_db(b"entries", create=False)) as txn:
        records = {bytes(k): DiskRecord.unpack(bytes(v)) for k, v in txn.cursor()}
    env.close()
    stride = 4096 + -(-slot_bytes // 4096) * 4096
    return {key: record.slot * stride + 4096 for key, record in records.items()}


@pytest.mark.parametrize("cls,layout", [LAYOUTS[1], LAYOUTS[0], LAYOUTS[4]])
def test_a_corrupt_page_is_false_and_a_counted_miss_never_wrong_bytes(cls, layout, tmp_path, attach):
    pool, backend = pool_for(cls, layout, tmp_path, attach)
    keys, pages = hashes(5, "corrupt"), [pool.page(p) for p in range(5)]
    assert all(backend.batch_set_v1(keys, pool.indices(range(5))))
    directory, victim = Path(backend.config.storage_dirs[0]), backend._block_keys([keys[1]])[-1]
    slot_bytes = backend.store.config.host.slot_bytes
    backend.close()
    offset = slot_payload_offsets(directory, slot_bytes)[bytes(victim)]
    with open(directory / DATA_FILE, "r+b") as fh:
        fh.seek(offset + 7)
        byte = fh.read(1)
        fh.seek(offset + 7)
        fh.write(bytes([byte[0] ^ 0x40]))

    pool2, backend = pool_for(cls, layout, tmp_path, attach)
    pool2.kv_buffer.zero_()
    assert backend.batch_exists(keys) == 5  # the index holds it; only reading it can tell
    got = backend.batch_get_v1(keys, pool2.indices(range(5)))
    assert got == [True, False, True, True, True]
    assert all(torch.equal(pool2.page(p), pages[p]) for p in (0, 2, 3, 4))
    assert backend.store.stats().misses.get("corrupt", 0) == 1
    assert backend.batch_exists(keys) == 1  # the damaged page was dropped
    flat = backend.batch_get(keys, [pool2.get_dummy_flat_data_page() for _ in keys])
    assert flat[1] is None and all(torch.equal(flat[p], pages[p]) for p in (0, 2, 3, 4))
    assert backend.batch_set_v1(keys[1:2], pool.indices([1])) == [True]  # and can be stored again
    assert backend.batch_exists(keys) == 5


# -- restart, stats, clear, sharing -----------------------------------------------------------
WRITER = """
import os, sys, torch
sys.path[:0] = {paths!r}
import test_sglang as t
from pathlib import Path
pool = t.MHAPool("page_first", seed=7)
backend = t.Factory.create_backend("dynamic", t.storage_config(Path({tmp!r})), pool)
backend.register_mem_pool_host(pool)
assert backend.batch_set_v1(t.hashes(6, "restart"), pool.indices(range(6))) == [True] * 6
os._exit(0)  # no close(): write_through pages are on disk when batch_set_v1 returns
"""


def test_pages_survive_a_process_restart(tmp_path, attach):
    script = WRITER.format(paths=[str(Path(__file__).parent)] + sys.path, tmp=str(tmp_path))
    subprocess.run([sys.executable, "-c", textwrap.dedent(script)], check=True, timeout=120)
    written = MHAPool("page_first", seed=7)
    pool, backend = pool_for(MHAPool, "page_first", tmp_path, attach)
    pool.kv_buffer.zero_()
    keys = hashes(6, "restart")
    assert backend.batch_exists(keys) == 6
    assert backend.batch_get_v1(keys, pool.indices(range(6, 12))) == [True] * 6
    assert all(torch.equal(pool.page(6 + p), written.page(p)) for p in range(6))
    assert backend.store.stats().tier("disk").hits >= 12  # 6 pages x K and V, all from disk


def test_get_stats_has_sglangs_shape_and_clear_empties_the_rank(tmp_path, attach):
    pool, backend = pool_for(MHAPool, "page_first", tmp_path, attach, metrics=True)
    keys = hashes(4, "stats")
    backend.batch_set_v1(keys, pool.indices(range(4)))
    backend.batch_get_v1(keys, pool.indices(range(4, 8)))
    stats = backend.get_stats()
    assert stats.backup_pgs == [4] and stats.prefetch_pgs == [4]
    assert len(stats.backup_bandwidth) == 1 and stats.prefetch_bandwidth[0] > 0
    assert stats.kvtier.tier("disk").entries == 8 and stats.kvtier.puts == 8
    assert backend.get_stats().prefetch_pgs == []  # per interval, like SGLang's other backends
    backend.clear()
    assert backend.batch_exists(keys) == 0 and backend.store.stats().tier("disk").entries == 0
    assert backend.batch_set_v1(keys, pool.indices(range(4))) == [True] * 4  # still usable
    assert backend.batch_exists(keys) == 4


def test_prefetch_and_backup_threads_run_beside_clear(tmp_path, attach):
    """SGLang's backup and prefetch threads call the backend at once; clear() waits for them."""
    import threading

    pool, backend = pool_for(MHAPool, "page_first", tmp_path, attach)
    originals, rounds, errors, done = [pool.page(p) for p in range(6)], 40, [], threading.Event()

    def backup():
        try:
            for r in range(rounds):
                assert backend.batch_set_v1(hashes(6, f"t{r}"), pool.indices(range(6))) == [True] * 6
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            done.set()

    def prefetch():
        try:
            while not done.is_set():
                for r in range(rounds):
                    got = backend.batch_get_v1(hashes(6, f"t{r}"), pool.indices(range(6, 12)))
                    assert len(got) == 6 and all(type(g) is bool for g in got)
                    for i, ok in enumerate(got):
                        assert not ok or torch.equal(pool.page(6 + i), originals[i])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=backup), threading.Thread(target=prefetch)]
    for thread in threads:
        thread.start()
    for _ in range(3):
        backend.clear()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    assert backend.batch_set_v1(hashes(6, "after"), pool.indices(range(6))) == [True] * 6


def test_namespaces_keep_ranks_layouts_and_models_apart(tmp_path, attach):
    pool, rank0 = pool_for(MHAPool, "page_first", tmp_path, attach)
    keys = hashes(3, "ns")
    rank0.batch_set_v1(keys, pool.indices(range(3)))
    # another TP rank, another layout, another model: other keys, other directories
    others = [storage_config(tmp_path, tp=(1, 2)),
              storage_config(tmp_path / "b", layout="page_first_direct"),  # one process per rank dir
              storage_config(tmp_path, model=None)]
    key_sets = {tuple(rank0._block_keys(keys))}
    pools = [MHAPool("page_first"), MHAPool("page_first_direct"), MHAPool("page_first")]
    for cfg, other_pool in zip(others, pools):
        other = attach(cfg, other_pool)
        assert other.batch_exists(keys) == 0
        key_sets.add(tuple(other._block_keys(keys)))
    assert len(key_sets) == 4


@pytest.mark.redis
def test_mla_pages_are_stored_once_and_read_by_every_tp_rank(tmp_path, attach, redis_url):
    shared = {"remote_url": redis_url, "kvtier": {"remote": {"write_mode": "sync"}}}
    writer_pool, reader_pool = MLAPool("page_first", seed=3), MLAPool("page_first")
    writer = attach(storage_config(tmp_path, mla=True, tp=(0, 2), **shared), writer_pool)
    reader = attach(storage_config(tmp_path, mla=True, tp=(1, 2), **shared), reader_pool)
    keys = hashes(4, "mla")
    assert writer._block_keys(keys) == reader._block_keys(keys)  # one namespace for all ranks
    assert writer.batch_set_v1(keys, writer_pool.indices(range(4))) == [True] * 4
    assert reader.batch_exists(keys) == 4
    assert reader.batch_get_v1(keys, reader_pool.indices(range(4))) == [True] * 4
    assert all(torch.equal(reader_pool.page(p), writer_pool.page(p)) for p in range(4))


def test_hybrid_models_with_sidecar_pools_are_refused_at_attach(tmp_path):
    pool = MHAPool("page_first")
    backend = Factory.create_backend("dynamic", storage_config(tmp_path), pool)
    backend.register_mem_pool_host(pool)
    backend.register_mem_host_pool_v2(pool, "kv")
    backend.register_mem_host_pool_v2(MHAPool("page_first"), "mamba")
    with pytest.raises(NotImplementedError, match="mamba"):
        backend.on_host_pools_registered()
    backend.close()


def test_sglangs_hicache_file_runs_standalone_beside_it(tmp_path):
    """SGLang's own file backend loads without its serving stack too (what a side-by-side
    benchmark needs), storing the same flat pages."""
    pool = MHAPool("page_first")
    hicache_file = _sglang_import.hicache_file_class()(
        storage_config(tmp_path, file_storage_path=str(tmp_path / "hf"), storage_dir=None))
    keys, pages = hashes(3, "file"), [pool.page(p) for p in range(3)]
    assert hicache_file.batch_set(keys, pages) is True and hicache_file.batch_exists(keys) == 3
    got = hicache_file.batch_get(keys, [pool.get_dummy_flat_data_page() for _ in keys])
    assert all(torch.equal(g, p) for g, p in zip(got, pages))
    assert sorted(p.suffix for p in (tmp_path / "hf").iterdir()) == [".bin"] * 3
