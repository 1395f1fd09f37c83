"""The worker half of kvtier's vLLM connector: this rank's ``TieredStore``, lookups and the
planner, loads before the forward pass, layer-wise gathers and background saves. Every failure
is logged and counted, never raised into the engine. Split out of ``vllm.py``."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from ..keys import BlockKey, Namespace
from ..store import TieredStore
from .vllm_config import safe_name
from .vllm_meta import KvtierMetadata, KvtierWorkerMetadata, PageBatch, Side
from .vllm_pages import PagedKV

logger = logging.getLogger(__name__)


class WorkerSide(Side):
    def __init__(self, connector: Any, vllm_config: Any, kv_cache_config: Any) -> None:
        self.c = connector
        self.num_blocks = kv_cache_config.num_blocks
        parallel = vllm_config.parallel_config
        from vllm.distributed.parallel_state import get_tensor_model_parallel_rank
        try:
            self.tp_rank = get_tensor_model_parallel_rank()
        except (AssertionError, RuntimeError):
            self.tp_rank = 0
        self.tp_size, self.pp_rank = parallel.tensor_parallel_size, getattr(parallel, "rank", 0)
        self.store: TieredStore | None = None
        self.paged: PagedKV | None = None
        self._namespaces: dict[str | None, Namespace] = {}
        self._answers: dict[str, tuple[int, int]] = {}
        self._load_errors: set[int] = set()
        self._saves: list[PageBatch] = []
        self._save_pages: torch.Tensor | None = None
        self._save_ids: torch.Tensor | None = None
        self._gathered: set[int] = set()
        self._putter: ThreadPoolExecutor | None = None
        self._puts: list[Future] = []
        self._lock = threading.Lock()
        self._step_start: float | None = None
        self._step_tokens = 0
        self.prefill_tokens_per_s: float | None = connector.config.prefill_tokens_per_s

    def register(self, kv_caches: dict[str, torch.Tensor]) -> None:
        bpp = self.c.page_tokens // self.c.block_size
        self.paged = PagedKV(kv_caches, self.num_blocks, bpp)
        base = self._namespace(None)
        subdirs = (safe_name(self.c.model_id), f"tp{self.tp_rank}of{self.tp_size}_pp{self.pp_rank}")
        config = self.c.config.store_config(self.paged.page_bytes, subdirs, label=base.digest.hex(),
                                            rank=self.tp_rank + self.tp_size * self.pp_rank)
        self.store = TieredStore(config)
        self._putter = ThreadPoolExecutor(1, thread_name_prefix="kvtier-vllm-save")
        logger.info("kvtier connector: pages of %d tokens (%d blocks, %d layers, %.1f KiB), disk %s",
                    self.c.page_tokens, bpp, len(self.paged.layers), self.paged.page_bytes / 1024,
                    config.disk.paths if config.disk else "none")

    def _namespace(self, salt: str | None) -> Namespace:
        ns = self._namespaces.get(salt)
        if ns is None:
            paged = self.paged
            ns = Namespace(model=self.c.model_id, fingerprint=self.c.fingerprint, dtype=paged.dtype,
                           layout=f"vllm:{paged.device.type}:{paged.layout_id}:page{self.c.page_tokens}"
                                  f":pp{self.pp_rank}",
                           tp_rank=self.tp_rank, tp_world_size=self.tp_size, tenant_salt=salt)
            if len(self._namespaces) > 4096:
                self._namespaces.clear()
            self._namespaces[salt] = ns
        return ns

    def _keys(self, batch: PageBatch) -> list[BlockKey]:
        digest = self._namespace(batch.salt).digest
        return [BlockKey(digest, chain) for chain in batch.chains]

    # -- per step -----------------------------------------------------------------------------
    def start(self, meta: KvtierMetadata | None) -> None:
        if not isinstance(meta, KvtierMetadata) or self.store is None:
            return
        for batch in meta.lookups:
            self._answers[batch.req_id] = self._lookup(batch)
        if meta.loads:
            started = time.perf_counter()
            self._load(meta.loads)
            if self._step_start is not None:  # loading is not prefill: keep it out of the timing
                self._step_start += time.perf_counter() - started

    def begin_step(self, meta: KvtierMetadata | None) -> None:
        """Bound before the forward pass: prepare this step's saves and time its prefill."""
        if not isinstance(meta, KvtierMetadata) or self.store is None:
            return
        self._saves = meta.saves
        self._gathered = set()
        if self._saves:
            ids = [row for batch in self._saves for row in batch.block_ids]
            self._save_ids = torch.tensor(ids, dtype=torch.int64)
            self._save_pages = self.paged.new_pages(len(ids))
        self._step_tokens, self._step_start = meta.step_tokens, time.perf_counter()

    def _lookup(self, batch: PageBatch) -> tuple[int, int]:
        try:
            keys = self._keys(batch)
            hit = self.store.lookup_prefix(keys)
            load = hit
            speed = self.prefill_tokens_per_s
            if hit and speed:  # None: not measured yet (load everything); 0: configured "always load"
                plan = self.store.plan(keys[:hit], speed, block_tokens=self.c.page_tokens)
                load = plan.load_blocks
                logger.debug("kvtier: plan at %.0f tokens/s: %s", speed, plan)
            self.c.count("lookups")
            self.c.count("lookup_hit_pages", hit)
            self.c.count("planned_pages", load)
            return hit, load
        except Exception:  # noqa: BLE001 - kvtier must never take the engine down
            logger.exception("kvtier: lookup failed; the request runs without kvtier")
            self.c.count("errors")
            return 0, 0

    def _load(self, loads: list[PageBatch]) -> None:
        rows = [row for batch in loads for row in batch.block_ids]
        keys = [key for batch in loads for key in self._keys(batch)]
        pages = self.paged.new_pages(len(rows), aligned=True)
        try:
            got = self.store.batch_get_into(keys, [pages[i] for i in range(len(rows))])
        except Exception:  # noqa: BLE001
            logger.exception("kvtier: loading %d page(s) failed; vLLM recomputes them", len(rows))
            self.c.count("errors")
            got = [False] * len(rows)
        ok_rows, at = [], 0
        for batch in loads:
            good = True
            for _ in batch.chains:
                good = good and got[at]  # a prefix: nothing after a failed page is usable
                if good:
                    ok_rows.append(at)
                else:
                    self._load_errors.update(b for b in rows[at] if b >= 0)
                    self.c.count("load_failed_pages")
                at += 1
        if ok_rows:
            index = torch.tensor(ok_rows, dtype=torch.int64)
            try:
                self.paged.scatter(pages.index_select(0, index), torch.tensor([rows[i] for i in ok_rows]))
            except Exception:  # noqa: BLE001
                logger.exception("kvtier: scattering loaded pages failed; vLLM recomputes them")
                self.c.count("errors")
                self._load_errors.update(b for i in ok_rows for b in rows[i] if b >= 0)
                return
            self.c.count("loaded_pages", len(ok_rows))
            self.c.count("bytes_loaded", len(ok_rows) * self.paged.page_bytes)

    def save_layer(self, layer_name: str) -> None:
        if not self._saves or self.paged is None:
            return
        index = self.paged.layer_index(layer_name)
        if index is None or index in self._gathered:
            return
        try:
            self.paged.gather(self._save_ids, self._save_pages, layer=index)
            self._gathered.add(index)
        except Exception:  # noqa: BLE001
            logger.exception("kvtier: gathering layer %s for saving failed", layer_name)
            self.c.count("errors")
            self._saves = []

    def end_step(self) -> None:
        if self._step_start is not None and self._step_tokens >= max(64, self.c.block_size):
            self._measure(self._step_tokens / max(time.perf_counter() - self._step_start, 1e-6))
        self._step_start = None
        if not self._saves or self.store is None:
            return
        saves, pages = self._saves, self._save_pages
        self._saves, self._save_pages = [], None
        try:
            for i in range(len(self.paged.layers)):
                if i not in self._gathered:
                    self.paged.gather(self._save_ids, pages, layer=i)
        except Exception:  # noqa: BLE001
            logger.exception("kvtier: gathering pages for saving failed; they are not saved")
            self.c.count("errors")
            return
        with self._lock:
            self._puts = [f for f in self._puts if not f.done()]
            self._puts.append(self._putter.submit(self._put, saves, pages))

    def _measure(self, tokens_per_s: float) -> None:
        if self.c.config.prefill_tokens_per_s is not None:
            return  # configured, not measured
        old = self.prefill_tokens_per_s
        self.prefill_tokens_per_s = tokens_per_s if old is None else 0.7 * old + 0.3 * tokens_per_s

    def _put(self, saves: list[PageBatch], pages: torch.Tensor) -> None:
        at = 0
        for batch in saves:
            keys, count = self._keys(batch), len(batch.chains)
            try:
                done = self.store.lookup_prefix(keys)  # leading pages already stored
                stored = self.store.batch_put(keys[done:], [pages[at + i] for i in range(done, count)])
                self.c.count("save_skipped_pages", done)
                self.c.count("saved_pages", stored.count(True))
                self.c.count("save_failed_pages", stored.count(False))
                self.c.count("bytes_saved", stored.count(True) * self.paged.page_bytes)
            except Exception:  # noqa: BLE001
                logger.exception("kvtier: saving %d page(s) failed", count)
                self.c.count("errors")
                self.c.count("save_failed_pages", count)
            at += count

    def take_load_errors(self) -> set[int]:
        errors, self._load_errors = self._load_errors, set()
        return errors

    def take_answers(self) -> KvtierWorkerMetadata | None:
        if not self._answers:
            return None
        answers, self._answers = self._answers, {}
        return KvtierWorkerMetadata(answers)

    def flush(self) -> None:
        """Wait until every queued save is in the store."""
        with self._lock:
            puts, self._puts = self._puts, []
        for future in puts:
            future.result()

    def shutdown(self) -> None:
        if self._putter is not None:
            self.flush()
            self._putter.shutdown(wait=True)
            self._putter = None
        if self.store is not None:
            self.store.close()
            self.store = None
