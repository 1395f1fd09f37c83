"""One side of ``kvtier bench --peers``, in a process of its own (``bench/peers.py`` starts it).

Run as a script, not as a module: ``python peer_runner.py < spec.json``. The LMCache sides
need only the standard library, torch and ``lmcache`` (they run in the peers virtualenv,
``benchmarks/peers/setup.sh``, where kvtier is not installed); the kvtier sides and the
HiCacheFile side import kvtier (the caller puts it on ``PYTHONPATH``).

The spec (JSON on stdin)::

    {"side": "kvtier_host" | "kvtier_disk" | "lmcache_cpu" | "lmcache_disk" | "hicache_file",
     "directory": "/where/to/write", "page_sizes": [262144, ...], "bytes_per_run": 67108864,
     "trials": 5, "batch": 128, "layers": 32, "kv_heads": 8, "head_dim": 128,
     "torch_threads": 1}

The answer: one line ``KVTIER-PEER-RESULT {json}`` on stdout (libraries may print other
lines), with per page size the bytes/s of every trial (``warmup``: trial 0, discarded by the
caller; ``trials``: the rest) for ``write``, ``cold_read`` and ``warm_read`` (``null`` where a
side has no such thing: DRAM has no cold read), and ``verified_pages`` (pages read back and
compared byte for byte). The HiCacheFile side is ``bench/sglang.py``'s whole benchmark; its
result carries both of that run's sides (``kvtier``: kvtier's SGLang backend, ``peer``:
HiCacheFile).

Per trial, pages are new keys; each store is sized to one trial's pages, so a trial's puts
evict the previous trial's (every side's steady state, timed). Each side:

* **write**: the pages go from a source pool (one torch uint8 tensor, the same random bytes
  for every side: ``torch.Generator`` seeded with the page size) into the store, ``batch``
  pages per call; for disk sides, until they are on the drive (``os.sync()`` included);
* **cold read** (disk sides): ``posix_fadvise(DONTNEED)`` on every file of the side's
  directory, then the pages come back into a zeroed destination pool, ``batch`` per call;
* **warm read**: the same again, nothing dropped.

What each store call is:

* ``kvtier_host``: ``TieredStore`` with a host tier only; ``batch_put`` of the source rows and
  ``batch_get_into`` the destination rows (one copy each way, inside kvtier);
* ``kvtier_disk``: ``TieredStore`` with a host tier and a disk tier (``write_through``,
  ``fsync="batch"``, ``codec="none"``, O_DIRECT, ``promote_on_read``: kvtier's defaults for a
  durable store), ``batch_put`` then ``os.sync()``; cold read from a store reopened on the
  directory (a restart; the open is not timed), ``batch_get_into``; the warm read is served
  by the host tier the cold read promoted into;
* ``lmcache_cpu``: LMCache's ``StorageManager`` with ``LocalCPUBackend`` only (``local_cpu``):
  ``allocate`` per page + a copy of each source row into its ``MemoryObj`` + ``batched_put``
  (what LMCache's engine does around its GPU copy), and ``batched_get`` + a copy out +
  ``ref_count_down``;
* ``lmcache_disk``: the same with ``LocalDiskBackend`` and the CPU backend off
  (``local_cpu=False``: it is only the staging allocator), writes waited for (every key
  ``contains``) then ``os.sync()``; reads ``batched_get(location="LocalDiskBackend")``.
  LMCache keeps that backend's index in process memory and does not rebuild it from the files
  on start, so a restart would lose every page: its cold read is the same instance after
  ``DONTNEED`` (no restart cost, which favours it).

LMCache's object size is set to the page size: ``chunk_size`` = tokens per page (page bytes /
one token's K and V of every layer), ``kv_shape`` = (layers, 2, tokens, kv_heads, head_dim),
bfloat16, so one ``MemoryObj`` (format ``KV_2LTD``) is one page.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

RESULT_MARK = "KVTIER-PEER-RESULT "
SIDES = ("kvtier_host", "kvtier_disk", "lmcache_cpu", "lmcache_disk", "hicache_file")
_GIB = 1 << 30


def drop_page_cache(*paths: Path) -> int:
    """``posix_fadvise(DONTNEED)`` on each file of ``paths`` and every file under those that
    are directories (after ``os.sync`` their pages are clean, so the kernel drops them);
    returns how many files. The benchmarks' one copy: it lives here because this module runs
    where kvtier is not installed (stdlib only), and bench/sglang.py and bench/workload.py
    import it."""
    files = [str(p) for p in paths if os.path.isfile(p)]
    for directory in paths:
        for dirpath, _, names in os.walk(directory):
            files += [os.path.join(dirpath, name) for name in names]
    count = 0
    for path in files:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:  # e.g. a file removed meanwhile
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            count += 1
        finally:
            os.close(fd)
    return count


class _Pools:
    """The source pool (what is written) and the destination pool (where reads land)."""

    def __init__(self, torch: Any, page_bytes: int, count: int) -> None:
        generator = torch.Generator().manual_seed(page_bytes)
        self.torch = torch
        self.source = torch.randint(0, 256, (count, page_bytes), dtype=torch.uint8, generator=generator)
        self.target = torch.zeros_like(self.source)

    def verify(self, side: str) -> int:
        if not self.torch.equal(self.source, self.target):
            raise RuntimeError(f"peers bench: {side} read back other bytes than were written")
        return self.source.shape[0]


def _batches(count: int, batch: int) -> list[range]:
    return [range(at, min(at + batch, count)) for at in range(0, count, batch)]


def _timed(run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


# -- kvtier ---------------------------------------------------------------------------------
def _kvtier_side(spec: dict, page_bytes: int, count: int, pools: _Pools, disk: bool) -> dict:
    from kvtier.config import DiskTierConfig, HostTierConfig, StoreConfig
    from kvtier.keys import Namespace
    from kvtier.store import TieredStore

    namespace = Namespace(model="kvtier-peers-bench")
    directory = Path(spec["directory"]) / "kvtier"
    nbytes = count * page_bytes
    config = StoreConfig(
        host=HostTierConfig(capacity_bytes=nbytes, slot_bytes=page_bytes),
        disk=DiskTierConfig(paths=(str(directory),), capacity_bytes=nbytes, min_free_bytes=0,
                            write_mode="write_through", fsync="batch", codec="none")
        if disk else None)
    rows = [pools.source[i] for i in range(count)]
    outs = [pools.target[i] for i in range(count)]
    parts = _batches(count, spec["batch"])
    side = "kvtier_disk" if disk else "kvtier_host"
    runs: dict[str, list[float | None]] = {"write": [], "cold_read": [], "warm_read": []}
    verified, direct_io = 0, True

    def read(store: Any, keys: list) -> None:
        for part in parts:
            if not all(store.batch_get_into([keys[i] for i in part], [outs[i] for i in part])):
                raise RuntimeError(f"peers bench: {side} missed pages it had just stored")

    shutil.rmtree(directory, ignore_errors=True)
    store = TieredStore(config)
    try:
        for trial in range(spec["trials"] + 1):
            keys = [namespace.key_for_bytes(f"{page_bytes}/{trial}/{i}".encode()) for i in range(count)]

            def write() -> None:
                for part in parts:
                    if not all(store.batch_put([keys[i] for i in part], [rows[i] for i in part])):
                        raise RuntimeError(f"peers bench: {side} refused pages (is the disk full?)")
                if disk:
                    os.sync()

            runs["write"].append(nbytes / _timed(write))
            if disk:
                direct_io = direct_io and bool(store.stats().tier("disk").extra["direct_io"])
                store.close()  # a restart: nothing of these pages in process memory
                drop_page_cache(directory)
                store = TieredStore(config)
                pools.target.zero_()
                runs["cold_read"].append(nbytes / _timed(lambda: read(store, keys)))
                verified += pools.verify(side)
            else:
                runs["cold_read"].append(None)
            pools.target.zero_()
            runs["warm_read"].append(nbytes / _timed(lambda: read(store, keys)))
            verified += pools.verify(side)
    finally:
        store.close()
        shutil.rmtree(directory, ignore_errors=True)
    notes = {"direct_io": direct_io} if disk else {}
    return {"runs": runs, "verified_pages": verified, "notes": notes}


# -- LMCache --------------------------------------------------------------------------------
def _lmcache_side(spec: dict, page_bytes: int, count: int, pools: _Pools, disk: bool) -> dict:
    import torch
    from lmcache.utils import CacheEngineKey
    from lmcache.v1.config import LMCacheEngineConfig
    from lmcache.v1.event_manager import EventManager
    from lmcache.v1.memory_management import MemoryFormat
    from lmcache.v1.metadata import LMCacheMetadata
    from lmcache.v1.storage_backend.storage_manager import StorageManager

    layers, heads, head_dim = spec["layers"], spec["kv_heads"], spec["head_dim"]
    tokens = page_bytes // (2 * layers * heads * head_dim * 2)
    directory = Path(spec["directory"]) / "lmcache-disk"
    nbytes = count * page_bytes
    # One trial's pages, plus room for the allocator's alignment (and, on disk, one staging
    # page per call in flight); half a page more so float GB rounding never drops one.
    one_trial_gb = (nbytes + page_bytes // 2) / _GIB
    staging_gb = (nbytes + 4 * page_bytes) / _GIB
    options: dict[str, Any] = dict(chunk_size=tokens, local_cpu=not disk,
                                   max_local_cpu_size=staging_gb)
    if disk:
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        options.update(local_disk=f"file://{directory}/", max_local_disk_size=one_trial_gb)
    config = LMCacheEngineConfig.from_defaults(**options)
    metadata = LMCacheMetadata(model_name="kvtier-peers-bench", world_size=1, local_world_size=1,
                               worker_id=0, local_worker_id=0, kv_dtype=torch.bfloat16,
                               kv_shape=(layers, 2, tokens, heads, head_dim), chunk_size=tokens)
    manager = StorageManager(config, metadata, EventManager())
    location = "LocalDiskBackend" if disk else "LocalCPUBackend"
    backend = manager.storage_backends[location]
    shape = torch.Size([2, layers, tokens, heads * head_dim])
    parts = _batches(count, spec["batch"])
    side = "lmcache_disk" if disk else "lmcache_cpu"
    runs: dict[str, list[float | None]] = {"write": [], "cold_read": [], "warm_read": []}
    verified = 0

    def read(keys: list) -> None:
        for part in parts:
            objs = manager.batched_get([keys[i] for i in part], location=location)
            for i, obj in zip(part, objs):
                if obj is None:
                    raise RuntimeError(f"peers bench: {side} missed pages it had just stored")
                pools.target[i].copy_(obj.tensor.view(-1).view(torch.uint8))
                obj.ref_count_down()

    try:
        for trial in range(spec["trials"] + 1):
            keys = [CacheEngineKey("kvtier-peers-bench", 1, 0, trial * count + i, torch.bfloat16)
                    for i in range(count)]

            def write() -> None:
                for part in parts:
                    # one allocate per page, as LMCache's engine stores chunks (its
                    # batched_allocate is per layer: it evicts one key's layers per call)
                    objs = [manager.allocate(shape, torch.bfloat16, MemoryFormat.KV_2LTD)
                            for _ in part]
                    if any(obj is None for obj in objs):
                        raise RuntimeError(f"peers bench: {side} could not allocate pages")
                    for i, obj in zip(part, objs):
                        obj.tensor.view(-1).view(torch.uint8).copy_(pools.source[i])
                    manager.batched_put([keys[i] for i in part], objs)
                if disk:  # batched_put only queues disk writes: wait until each is done
                    deadline = time.monotonic() + 600
                    while not all(backend.contains(key) for key in keys):
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"peers bench: {side} did not finish its writes")
                        time.sleep(0.0005)
                    os.sync()

            runs["write"].append(nbytes / _timed(write))
            if disk:
                drop_page_cache(directory)
                pools.target.zero_()
                runs["cold_read"].append(nbytes / _timed(lambda: read(keys)))
                verified += pools.verify(side)
            else:
                runs["cold_read"].append(None)
            pools.target.zero_()
            runs["warm_read"].append(nbytes / _timed(lambda: read(keys)))
            verified += pools.verify(side)
    finally:
        manager.close()
        shutil.rmtree(directory, ignore_errors=True)
    return {"runs": runs, "verified_pages": verified,
            "notes": {"chunk_size": tokens, "use_odirect": bool(getattr(backend, "use_odirect", False))}}


# -- SGLang HiCacheFile: bench/sglang.py's benchmark, both of its sides --------------------------
def _hicache_file(spec: dict) -> dict:
    from kvtier.bench.sglang import SGLangBenchSettings, run_sglang_bench

    settings = SGLangBenchSettings(
        directory=str(Path(spec["directory"]) / "sglang"), page_sizes=tuple(spec["page_sizes"]),
        bytes_per_run=spec["bytes_per_run"], trials=spec["trials"], batch=spec["batch"],
        layers=spec["layers"], kv_heads=spec["kv_heads"], head_dim=spec["head_dim"],
        host_capacity=spec.get("sglang_host_capacity", 1 << 30))
    try:
        result = run_sglang_bench(settings)
    finally:
        shutil.rmtree(settings.directory, ignore_errors=True)
    rows = []
    for row in result.results:
        sides = {}
        for side, prefix, name in (("kvtier", "kvtier", "kvtier"), ("peer", "file", "hicache_file")):
            # run_sglang_bench keeps the measured trials only (its warm-up is discarded inside)
            sides[side] = {"runs": {m: row.trials[f"{prefix}_{m}"] for m in ("write", "cold_read", "warm_read")},
                           "verified_pages": row.verified_pages[name]}
        rows.append({"page_bytes": row.page_bytes, "pages": row.pages, "batch": row.batch,
                     "warmup_included": False, **sides})
    return {"version": result.sglang, "results": rows,
            "notes": {"direct_io": result.direct_io, "torch_threads": result.torch_threads,
                      "kvtier_path": result.paths["kvtier"], "peer_path": result.paths["hicache_file"]}}


def _version(side: str) -> str:
    from importlib import metadata

    name = "lmcache" if side.startswith("lmcache") else "kvtier"
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "source tree"


def run(spec: dict) -> dict:
    """Measure ``spec["side"]`` at every page size; see the module docstring."""
    side = spec["side"]
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    if side == "hicache_file":
        return {"side": side, **_hicache_file(spec)}
    import torch

    if spec.get("torch_threads", 1):
        # 1, as in an engine's worker process (vLLM and SGLang set it); more intra-op threads
        # make each page copy_ of LMCache's path milliseconds slower on a busy 2-core machine
        torch.set_num_threads(spec.get("torch_threads", 1))
    measure = _lmcache_side if side.startswith("lmcache") else _kvtier_side
    rows = []
    for page_bytes in spec["page_sizes"]:
        count = max(1, spec["bytes_per_run"] // page_bytes)
        pools = _Pools(torch, page_bytes, count)
        got = measure(spec, page_bytes, count, pools, side.endswith("disk"))
        rows.append({"page_bytes": page_bytes, "pages": count, "batch": min(spec["batch"], count),
                     "warmup_included": True, "notes": got["notes"],
                     "side": {"runs": got["runs"], "verified_pages": got["verified_pages"]}})
    return {"side": side, "version": _version(side), "torch_threads": torch.get_num_threads(),
            "results": rows}


def main() -> int:
    spec = json.load(sys.stdin)
    doc = run(spec)
    sys.stdout.flush()
    print(RESULT_MARK + json.dumps(doc), flush=True)
    return 0


if __name__ == "__main__":
    # Run as a script, this file's directory is sys.path[0]: its sibling sglang.py would
    # shadow the sglang package.
    if sys.path and os.path.realpath(sys.path[0]) == os.path.dirname(os.path.realpath(__file__)):
        del sys.path[0]
    sys.exit(main())
