"""kvtier as SGLang's HiCache L3 storage backend (``--hicache-storage-backend dynamic``).

::

    python -m sglang.launch_server --model-path meta-llama/Llama-3.1-8B-Instruct \\
        --enable-hierarchical-cache --hicache-mem-layout page_first \\
        --hicache-storage-backend dynamic --hicache-storage-backend-extra-config \\
        '{"backend_name": "kvtier", "module_path": "kvtier.integrations.sglang",
          "class_name": "KvtierHiCacheStorage", "interface_v1": 1,
          "storage_dir": "/nvme/kvtier", "disk_capacity": "1TiB"}'

Each SGLang rank (process) gets one ``TieredStore``: a host DRAM tier, a disk tier in its own
subdirectory of ``storage_dir``, and optionally the shared Redis tier (``remote_url``). Pages
are keyed by SGLang's page hashes inside a ``Namespace`` of the model, the rank's shard
(TP/PP/CP; MLA pages are rank-replicated and stored once), the host layout and the dtype.
Every key of the extra config, with its default: docs/integrations/sglang.md.

A page is stored as one kvtier block per component: K and V for MHA pools (the leading axis
of every SGLang MHA host layout), the whole page for MLA. Where a component is contiguous in
the host pool (``page_first``, ``page_first_direct``, ``page_head``), ``batch_get_v1`` and
``batch_set_v1`` move it straight between the pool and the store; where the pool scatters it
across layers (``layer_first``) it goes through a reusable staging buffer (one copy).
"""

from __future__ import annotations

import logging
import mmap
import os
import re
import shutil
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

import torch

from ..buffers import byte_view
from ..errors import ConfigError, StoreClosedError
from ..keys import BlockKey, Namespace
from ..store import TieredStore
from ._sglang_import import hicache_interface, storage_metrics_class
from .sglang_config import SGLangBackendConfig

_sglang = hicache_interface()
HiCacheStorage = _sglang.HiCacheStorage
HiCacheStorageConfig = _sglang.HiCacheStorageConfig
HiCacheStorageExtraInfo = _sglang.HiCacheStorageExtraInfo

logger = logging.getLogger(__name__)

class _Gate:
    """Many operations at once, or one exclusive one (``clear``/``close`` swap the store)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._exclusive = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive)
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive)
            self._exclusive = True
            self._cond.wait_for(lambda: not self._active)
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class _Staging:
    """A reusable, page-aligned byte buffer (allocated on first use), one per direction."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.lock = threading.Lock()
        self._bytes: torch.Tensor | None = None

    def blocks(self, sizes: Sequence[int]) -> list[torch.Tensor]:
        """Consecutive 4 KiB-aligned uint8 views of ``sizes`` bytes each (they must fit)."""
        if self._bytes is None:
            self._bytes = torch.frombuffer(mmap.mmap(-1, self.nbytes), dtype=torch.uint8)
        views, offset = [], 0
        for size in sizes:
            views.append(self._bytes[offset:offset + size])
            offset += -(-size // 4096) * 4096
        return views


class _PoolPages:
    """The blocks kvtier stores for each page of an SGLang host pool, and where they live.

    Components come from the pool's own ``get_data_page(index, flat=False)``: for MHA its
    leading axis is K/V, so a page is two blocks; for MLA it is one. When every component is
    contiguous and sits at ``base + page * stride`` in ``kv_buffer`` (checked on the first,
    second and last page), pages move as numpy views of the pool (``direct``); otherwise
    (``layer_first``) through copies of the component views.
    """

    def __init__(self, pool: Any, *, split_kv: bool, page_step: int) -> None:
        self.pool, self.split_kv, self.page_step = pool, split_kv, page_step
        try:
            first = self.components(0)
        except (ValueError, NotImplementedError, AttributeError) as exc:
            raise NotImplementedError(
                f"kvtier's SGLang backend reads pages through the host pool's get_data_page, which "
                f"{type(pool).__name__} (layout {getattr(pool, 'layout', '?')!r}) does not support: {exc}"
            ) from exc
        self.names = ("k", "v") if split_kv else ("kv",)
        self.sizes = [c.numel() * c.element_size() for c in first]
        self.page_nbytes = sum(self.sizes)
        self.pages = max(1, pool.size // pool.page_size)
        self._flat, self._offsets, self._stride = None, [], 0
        self._probe_direct(first)

    @property
    def direct(self) -> bool:
        return self._flat is not None

    def components(self, start: int) -> list[torch.Tensor]:
        view = self.pool.get_data_page(start, flat=False)
        if not self.split_kv:
            return [view]
        if view.shape[0] != 2:
            raise ValueError(f"expected a leading K/V axis of 2 in an MHA page, got {tuple(view.shape)}")
        return list(view.unbind(0))

    def views(self, starts: Sequence[int]) -> list[Any]:
        """Numpy byte views of every component of the pages at ``starts`` (``direct`` only)."""
        flat, stride, step = self._flat, self._stride, self.page_step
        out = []
        for start in starts:
            page, rest = divmod(start, step)
            if rest:
                raise ValueError(f"host index {start} is not the start of a page of {step} tokens")
            for offset, size in zip(self._offsets, self.sizes):
                at = offset + page * stride
                out.append(flat[at:at + size])
        return out

    def _probe_direct(self, first: list[torch.Tensor]) -> None:
        buf = getattr(self.pool, "kv_buffer", None)
        if not isinstance(buf, torch.Tensor) or buf.device.type != "cpu" or not buf.is_contiguous():
            return
        base, end = buf.data_ptr(), buf.data_ptr() + buf.numel() * buf.element_size()
        offsets = [c.data_ptr() - base for c in first]
        stride = 0
        if self.pages > 1:
            stride = self.components(self.page_step)[0].data_ptr() - first[0].data_ptr()
        for page in sorted({0, min(1, self.pages - 1), self.pages - 1}):
            comps = first if page == 0 else self.components(page * self.page_step)
            for comp, offset, size in zip(comps, offsets, self.sizes):
                ptr = base + offset + page * stride
                if not comp.is_contiguous() or comp.data_ptr() != ptr or not base <= ptr <= end - size:
                    return
        self._flat = buf.reshape(-1).view(torch.uint8).numpy()
        self._offsets, self._stride = offsets, stride


class KvtierHiCacheStorage(HiCacheStorage):
    """An SGLang HiCache storage backend on a kvtier ``TieredStore`` (one per rank).

    Built by SGLang's ``StorageBackendFactory`` as ``KvtierHiCacheStorage(storage_config,
    kwargs)``; the store opens when SGLang registers its host pool (or at the first call).
    Keys are SGLang's page hashes (hex strings). Batch methods never return ``None``: a page
    that is missing or fails verification is ``False``/``None`` in the result (and a counted
    miss in ``store.stats()``); bad input and I/O failures raise.
    """

    def __init__(self, storage_config: Any, kwargs: Mapping[str, Any] | None = None) -> None:
        self.storage_config = storage_config
        self.config = SGLangBackendConfig.from_sglang(storage_config)
        self.mem_pool_host = None
        self._pages: _PoolPages | None = None
        self._store: TieredStore | None = None
        self._namespaces: tuple[Namespace, ...] = ()
        self._sidecars: list[str] = []
        self._gate = _Gate()
        self._open_lock = threading.Lock()
        self._closed = False
        self._staging = {way: _Staging(self.config.staging_bytes) for way in ("get", "set")}
        self._metrics_lock = threading.Lock()
        self._metrics: dict[str, list] = {name: [] for name in _METRICS}

    # -- lifecycle ------------------------------------------------------------------------
    def register_mem_pool_host(self, mem_pool_host: Any) -> None:
        """SGLang hands over its host KV pool (torch CPU tensors); the store opens for its pages."""
        super().register_mem_pool_host(mem_pool_host)
        with self._gate.exclusive():
            if self._store is not None:
                self._store.close()
                self._store = None
            self._open_locked()

    def register_mem_host_pool_v2(self, host_pool: Any, host_pool_name: Any) -> None:
        super().register_mem_host_pool_v2(host_pool, host_pool_name)
        if str(host_pool_name) != "kv":
            self._sidecars.append(str(host_pool_name))

    def on_host_pools_registered(self) -> None:
        if self._sidecars:
            raise NotImplementedError(
                f"kvtier's SGLang backend stores the KV pool only; this model also has the pools "
                f"{self._sidecars} (hybrid attention, Mamba, indexer), which need HiCache's v2 interface")

    @property
    def store(self) -> TieredStore:
        """This rank's ``TieredStore`` (opened on first use)."""
        return self._acquire()

    def close(self) -> None:
        """Close the store (host-only pages are written to disk first); idempotent."""
        with self._gate.exclusive():
            self._closed = True
            if self._store is not None:
                self._store.close()
                self._store = None

    def clear(self) -> None:
        """Drop every page of this rank: its host and disk tiers are emptied (the disk
        directory is recreated). Pages in the shared Redis tier are other ranks' too and stay."""
        with self._gate.exclusive():
            if self._closed:
                raise StoreClosedError("this backend is closed")
            if self._store is not None:
                self._store.close()
                self._store = None
            for path in self.config.storage_dirs:
                if os.path.exists(path):
                    shutil.rmtree(path)
            self._open_locked()

    # -- lookups --------------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        return self.batch_exists([key]) == 1

    def batch_exists(self, keys: list[str], extra_info: Any = None) -> int:
        """How many leading pages of ``keys`` are stored (every component of each)."""
        if not keys:
            return 0
        with self._gate.shared():
            store = self._acquire()
            return store.lookup_prefix(self._block_keys(keys)) // len(self._namespaces)

    # -- zero-copy path (extra_config interface_v1) ---------------------------------------
    def batch_get_v1(self, keys: list[str], host_indices: torch.Tensor, extra_info: Any = None) -> list[bool]:
        """Read pages straight into SGLang's host pool: page ``i`` goes to the pool page that
        starts at token index ``host_indices[i * page_size]``. ``True`` per page read whole."""
        if not keys:
            return []
        start_time = time.perf_counter()
        with self._gate.shared():
            store, pages = self._acquire(), self._require_pool()
            starts = self._page_starts(keys, host_indices)
            block_keys, count = self._block_keys(keys), len(pages.names)
            if pages.direct:
                got = store.batch_get_into(block_keys, pages.views(starts))
            else:
                got = self._staged_get(store, pages, block_keys, starts)
        results = [all(got[i * count:(i + 1) * count]) for i in range(len(keys))]
        self._record("prefetch", results.count(True), pages.page_nbytes, start_time)
        return results

    def batch_set_v1(self, keys: list[str], host_indices: torch.Tensor, extra_info: Any = None) -> list[bool]:
        """Store the pool pages at ``host_indices`` (as for ``batch_get_v1``); leading pages
        already stored are not rewritten. ``True`` per page stored."""
        if not keys:
            return []
        start_time = time.perf_counter()
        with self._gate.shared():
            store, pages = self._acquire(), self._require_pool()
            starts = self._page_starts(keys, host_indices)
            block_keys, count = self._block_keys(keys), len(pages.names)
            done = store.lookup_prefix(block_keys) // count
            if pages.direct:
                stored = self._put_chunked(store, block_keys[done * count:], pages.views(starts[done:]))
            else:
                stored = self._staged_put(store, pages, block_keys[done * count:], starts[done:])
        results = [True] * done + [all(stored[i * count:(i + 1) * count]) for i in range(len(keys) - done)]
        self._record("backup", len(keys) - done, pages.page_nbytes, start_time)
        return results

    # -- flat-page path (SGLang's generic get/set) ----------------------------------------
    def get(self, key: str, target_location: Any = None, target_sizes: Any = None) -> torch.Tensor | None:
        return self.batch_get([key], None if target_location is None else [target_location])[0]

    def batch_get(self, keys: list[str], target_locations: Any = None,
                  target_sizes: Any = None) -> list[torch.Tensor | None]:
        """Pages as flat tensors: into ``target_locations[i]`` (contiguous, one page's bytes,
        e.g. ``get_dummy_flat_data_page()``), else into new tensors. ``None`` per missing page."""
        if not keys:
            return []
        start_time = time.perf_counter()
        with self._gate.shared():
            store = self._acquire()
            if target_locations is None:
                target_locations = [self._new_flat_page() for _ in keys]
            targets = list(target_locations)
            if len(targets) != len(keys):
                raise ValueError(f"batch_get got {len(keys)} keys but {len(targets)} target_locations")
            outs = [part for i, target in enumerate(targets)
                    for part in self._split(target, f"target_locations[{i}]", True)]
            got = store.batch_get_into(self._block_keys(keys), outs)
        count = len(self._namespaces)
        results = [t if all(got[i * count:(i + 1) * count]) else None for i, t in enumerate(targets)]
        self._record("prefetch", len(keys) - results.count(None), self._page_nbytes(), start_time)
        return results

    def set(self, key: str, value: Any = None, target_location: Any = None, target_sizes: Any = None) -> bool:
        return self.batch_set([key], [value])

    def batch_set(self, keys: list[str], values: Any = None, target_locations: Any = None,
                  target_sizes: Any = None) -> bool:
        """Store flat pages (``get_data_page(i, flat=True)``); ``True`` when every page is stored."""
        if not keys:
            return True
        values = list(values or [])
        if len(values) != len(keys):
            raise ValueError(f"batch_set got {len(keys)} keys but {len(values)} values")
        start_time = time.perf_counter()
        with self._gate.shared():
            store = self._acquire()
            srcs = [part for i, v in enumerate(values) for part in self._split(v, f"values[{i}]", False)]
            block_keys, count = self._block_keys(keys), len(self._namespaces)
            done = store.lookup_prefix(block_keys) // count
            stored = self._put_chunked(store, block_keys[done * count:], srcs[done * count:])
        self._record("backup", len(keys) - done, self._page_nbytes(), start_time)
        return all(stored)

    # -- metrics --------------------------------------------------------------------------
    def get_stats(self) -> Any:
        """SGLang's ``StorageMetrics`` (pages and GiB/s per prefetch and backup batch since the
        last call, when ``enable_storage_metrics``), with kvtier's ``StoreStats`` attached as
        ``.kvtier``."""
        metrics = storage_metrics_class()()
        with self._metrics_lock:
            for name in _METRICS:
                getattr(metrics, name).extend(self._metrics[name])
                self._metrics[name].clear()
        with self._gate.shared():  # not while clear() swaps the store
            store = self._store
            metrics.kvtier = store.stats() if store is not None else None
        return metrics

    # -- internals ------------------------------------------------------------------------
    def _acquire(self) -> TieredStore:
        store = self._store
        if store is not None:
            return store
        with self._open_lock:
            if self._store is None:
                self._open_locked()
            return self._store

    def _open_locked(self) -> None:
        if self._closed:
            raise StoreClosedError("this backend is closed")
        pool, c = self.mem_pool_host, self.storage_config
        if pool is not None:
            dcp = getattr(c, "dcp_size", 1)
            step = c.logical_page_size if dcp > 1 else pool.page_size
            self._pages = _PoolPages(pool, split_kv=not c.is_mla_model, page_step=step)
            slot, layout = max(self._pages.sizes), pool.layout
            dtype, names = str(pool.dtype).removeprefix("torch."), self._pages.names
            geometry = f"page{pool.page_size}:dcp{getattr(c, 'dcp_rank', 0)}of{dcp}"
        else:
            self._pages = None
            slot, layout, dtype, names, geometry = self.config.flat_page_bytes, "flat", "", ("page",), ""
        shard = f"pp{c.pp_rank}of{c.pp_size}:cp{c.attn_cp_rank}of{c.attn_cp_size}"
        tp = (0, 1) if c.is_mla_model else (c.tp_rank, c.tp_size)
        self._namespaces = tuple(Namespace(
            model=c.model_name or "unnamed-model", fingerprint=self.config.fingerprint, dtype=dtype,
            layout=f"sglang:{layout}:{'mla' if c.is_mla_model else 'mha'}:{geometry}:{shard}:{name}"
                   f":{size if self._pages else 0}",
            tp_rank=tp[0], tp_world_size=tp[1], tenant_salt=self.config.tenant_salt)
            for name, size in zip(names, self._pages.sizes if self._pages else [0]))
        self._store = TieredStore(self.config.store_config(slot))
        logger.info("kvtier HiCache backend: %d block(s) per page (%s), %s; disk %s",
                    len(names), "zero-copy" if self._pages and self._pages.direct else "staged",
                    layout, list(self.config.storage_dirs) or "none")

    def _require_pool(self) -> _PoolPages:
        if self._pages is None:
            raise RuntimeError("batch_get_v1/batch_set_v1 need SGLang's host pool: call "
                               "register_mem_pool_host(pool) first")
        return self._pages

    def _block_keys(self, keys: Sequence[str]) -> list[BlockKey]:
        first, rest = self._namespaces[0], self._namespaces[1:]
        out: list[BlockKey] = []
        for key in keys:
            if len(key) == 32 and _HEX.fullmatch(key):
                block = first.key(bytes.fromhex(key))  # a 16-byte digest
            else:
                block = first.key_for_bytes(key.encode())
            out.append(block)
            for ns in rest:
                out.append(BlockKey(ns.digest, block.chain_digest))
        return out

    def _page_starts(self, keys: Sequence[str], host_indices: torch.Tensor) -> list[int]:
        step = self._pages.page_step
        if host_indices.numel() != len(keys) * step:
            raise ValueError(f"{len(keys)} keys need {len(keys) * step} host indices "
                             f"({step} per page), got {host_indices.numel()}")
        return host_indices.reshape(-1)[::step].tolist()

    def _put_chunked(self, store: TieredStore, keys: list[BlockKey], srcs: list[Any]) -> list[bool]:
        """``batch_put`` in pieces that fit the host tier (a larger batch would refuse its tail)."""
        per_call = max(len(self._namespaces), store.config.host.slot_count // 2)
        out: list[bool] = []
        for at in range(0, len(keys), per_call):
            out += store.batch_put(keys[at:at + per_call], srcs[at:at + per_call])
        return out

    def _staged_get(self, store: TieredStore, pages: _PoolPages, keys: list[BlockKey],
                    starts: list[int]) -> list[bool]:
        staging, count, got = self._staging["get"], len(pages.names), []
        with staging.lock:
            for at, chunk in self._chunks(starts, pages.sizes):
                blocks = staging.blocks(pages.sizes * len(chunk))
                ok = store.batch_get_into(keys[at * count:(at + len(chunk)) * count], blocks)
                for p, start in enumerate(chunk):
                    if all(ok[p * count:(p + 1) * count]):
                        for comp, block in zip(pages.components(start), blocks[p * count:(p + 1) * count]):
                            comp.copy_(block.view(comp.dtype).view(comp.shape))
                got += ok
        return got

    def _staged_put(self, store: TieredStore, pages: _PoolPages, keys: list[BlockKey],
                    starts: list[int]) -> list[bool]:
        staging, count, stored = self._staging["set"], len(pages.names), []
        with staging.lock:
            for at, chunk in self._chunks(starts, pages.sizes):
                blocks = staging.blocks(pages.sizes * len(chunk))
                for p, start in enumerate(chunk):
                    for comp, block in zip(pages.components(start), blocks[p * count:(p + 1) * count]):
                        block.view(comp.dtype).view(comp.shape).copy_(comp)
                stored += self._put_chunked(store, keys[at * count:(at + len(chunk)) * count], blocks)
        return stored

    def _chunks(self, starts: list[int], sizes: list[int]) -> Iterator[tuple[int, list[int]]]:
        footprint = sum(-(-size // 4096) * 4096 for size in sizes)  # as _Staging.blocks lays them out
        per_chunk = self.config.staging_bytes // footprint
        if not per_chunk:
            raise ConfigError(f"staging_bytes ({self.config.staging_bytes}) is smaller than one page "
                              f"({footprint} bytes): raise it")
        for at in range(0, len(starts), per_chunk):
            yield at, starts[at:at + per_chunk]

    def _split(self, tensor: Any, what: str, writable: bool) -> list[memoryview]:
        """The component byte ranges of one flat page (zero-copy views)."""
        if isinstance(tensor, torch.Tensor) and not writable and not tensor.is_contiguous():
            tensor = tensor.contiguous()
        view = byte_view(tensor, what)
        if writable and view.readonly:
            raise ValueError(f"{what} is read-only")
        if self._pages is None:
            return [view]
        if view.nbytes != self._pages.page_nbytes:
            raise ValueError(f"{what} has {view.nbytes} bytes but a page of this host pool has "
                             f"{self._pages.page_nbytes}")
        parts, offset = [], 0
        for size in self._pages.sizes:
            parts.append(view[offset:offset + size])
            offset += size
        return parts

    def _new_flat_page(self) -> torch.Tensor:
        if self._pages is None:
            raise ValueError("batch_get without target_locations needs a registered host pool "
                             "(the page size); pass target_locations")
        return torch.empty(self._pages.page_nbytes // self.mem_pool_host.dtype.itemsize,
                           dtype=self.mem_pool_host.dtype)

    def _page_nbytes(self) -> int:
        return self._pages.page_nbytes if self._pages is not None else 0

    def _record(self, kind: str, pages: int, page_nbytes: int, start_time: float) -> None:
        if not self.storage_config.enable_storage_metrics or not pages:
            return
        seconds = max(time.perf_counter() - start_time, 1e-9)
        with self._metrics_lock:
            self._metrics[f"{kind}_pgs"].append(pages)
            self._metrics[f"{kind}_bandwidth"].append(pages * page_nbytes / seconds / (1 << 30))


_HEX = re.compile(r"[0-9a-fA-F]+")
_METRICS = ("prefetch_pgs", "backup_pgs", "prefetch_bandwidth", "backup_bandwidth")
