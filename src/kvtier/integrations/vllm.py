"""kvtier as a vLLM KV connector: the engine's prefix KV kept in DRAM, on NVMe and across restarts.

::

    vllm serve Qwen/Qwen3-8B --kv-transfer-config '{"kv_connector": "KvtierConnector",
        "kv_connector_module_path": "kvtier.integrations.vllm", "kv_role": "kv_both",
        "kv_connector_extra_config": {"storage_dir": "/nvme/kvtier", "disk_capacity": "1TiB"}}'

Every key of the extra config, the metrics and the design: docs/integrations/vllm.md.

How it runs. vLLM builds one connector in its scheduler and one in each worker; they may be
different processes (``vllm serve`` on CPU, tensor parallelism), so only the workers open a
``TieredStore`` (the one that owns the rank's disk directory) and the scheduler talks to them
through vLLM's own per-step channels:

* **lookup**: ``get_num_new_matched_tokens`` of a new request sends the chained digests of its
  prompt pages to the workers (in the step's connector metadata) and answers "not yet" once;
  each worker answers with ``lookup_prefix`` and the load-or-recompute planner (its worker
  metadata), the scheduler takes the minimum over ranks, and the request is scheduled with the
  pages worth loading counted as computed (vLLM's own prefix cache answers first);
* **load**: before the forward pass (``start_load_kv``) the worker reads the pages with one
  ``batch_get_into`` and scatters them into the blocks vLLM allocated. A page that fails
  (missing, corrupt) is reported through ``get_block_ids_with_load_errors`` with every block
  after it, and vLLM recomputes them;
* **save**: every full page a step computed is gathered layer by layer as the forward pass
  writes it (``save_kv_layer``; the rest in ``wait_for_save``) into a host buffer, which a
  background thread puts into the store, so the engine never waits for the disk.

A page is ``page_tokens`` tokens (a multiple of vLLM's block size) of every layer of this rank
(``vllm_pages``). Keys are kvtier ``BlockKey``s: a chained digest of the page's tokens in a
``Namespace`` of the model, ``fingerprint``, KV dtype, the cache's block layout, page size and
TP rank, salted with the request's ``cache_salt`` (plus its LoRA and multimodal inputs), so
tenants, adapters and layouts never share a page. Failures inside kvtier are logged and
counted, never raised into the engine.
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING, Any

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1, KVConnectorMetadata, KVConnectorRole)

from ..errors import ConfigError
from ..keys import Namespace
from .vllm_config import VLLMConnectorConfig
from .vllm_meta import COUNTERS, KvtierConnectorStats, KvtierMetadata, KvtierWorkerMetadata, PageBatch
from .vllm_scheduler import SchedulerSide
from .vllm_worker import WorkerSide

if TYPE_CHECKING:
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.outputs import KVConnectorOutput
    from vllm.v1.request import Request

__all__ = ["KvtierConnector", "KvtierConnectorStats", "KvtierMetadata", "KvtierWorkerMetadata",
           "PageBatch", "live_connectors"]
logger = logging.getLogger(__name__)
_live: "weakref.WeakSet[KvtierConnector]" = weakref.WeakSet()


def live_connectors() -> list["KvtierConnector"]:
    """The connectors alive in this process (scheduler and worker roles), for tests and tools."""
    return list(_live)


class KvtierConnector(KVConnectorBase_V1):
    """vLLM ``KVConnectorBase_V1`` over a kvtier ``TieredStore`` (see the module docstring)."""

    def __init__(self, vllm_config: Any, role: KVConnectorRole, kv_cache_config: Any) -> None:
        super().__init__(vllm_config, role, kv_cache_config)
        self.config = VLLMConnectorConfig.from_extra_config(
            self._kv_transfer_config.kv_connector_extra_config)
        if len(kv_cache_config.kv_cache_groups) != 1:
            raise ConfigError("kvtier's vLLM connector supports models with one KV cache group (not "
                              f"hybrid models); this one has {len(kv_cache_config.kv_cache_groups)}")
        self.block_size = kv_cache_config.kv_cache_groups[0].kv_cache_spec.block_size
        self.page_tokens = self.config.page_tokens_for(self.block_size)
        model = vllm_config.model_config
        self.model_id = model.model
        self.fingerprint = self.config.fingerprint or (model.revision or "")
        self.counters = dict.fromkeys(COUNTERS, 0)
        self._reported = dict.fromkeys(COUNTERS, 0)
        self._side = (SchedulerSide(self) if role == KVConnectorRole.SCHEDULER
                      else WorkerSide(self, vllm_config, kv_cache_config))
        if role == KVConnectorRole.SCHEDULER and self.config.recompute_on_load_failure:
            # Read by vLLM's scheduler right after it builds this connector.
            self._kv_transfer_config.kv_load_failure_policy = "recompute"
        _live.add(self)

    @property
    def requires_kv_delivery(self) -> bool:
        return False  # a best-effort cache: a dropped save is a later miss

    def chain_namespace(self, salt: str | None) -> Namespace:
        """The namespace chained digests are computed in (the worker adds dtype, layout, rank)."""
        return Namespace(model=self.model_id, fingerprint=self.fingerprint,
                         layout=f"vllm:page{self.page_tokens}", tenant_salt=salt)

    # -- scheduler side -----------------------------------------------------------------------
    def get_num_new_matched_tokens(self, request: "Request", num_computed_tokens: int) -> tuple[int | None, bool]:
        return self._side.matched(request, num_computed_tokens), False

    def update_state_after_alloc(self, request: "Request", blocks: Any, num_external_tokens: int) -> None:
        self._side.after_alloc(request, num_external_tokens)

    def build_connector_meta(self, scheduler_output: "SchedulerOutput") -> KVConnectorMetadata:
        return self._side.build_meta(scheduler_output)

    def update_connector_output(self, connector_output: "KVConnectorOutput") -> None:
        meta = connector_output.kv_connector_worker_meta
        if isinstance(meta, KvtierWorkerMetadata):
            self._side.answers(meta.answers)

    def request_finished(self, request: "Request", block_ids: list[int]) -> tuple[bool, dict | None]:
        self._side.finished(request.request_id)
        return False, None

    # -- worker side --------------------------------------------------------------------------
    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        self._side.register(kv_caches)

    def bind_connector_metadata(self, connector_metadata: KVConnectorMetadata) -> None:
        super().bind_connector_metadata(connector_metadata)
        self._side.begin_step(connector_metadata)  # before the forward pass, whatever the step

    def start_load_kv(self, forward_context: Any, **kwargs: Any) -> None:
        self._side.start(self._connector_metadata)

    def wait_for_layer_load(self, layer_name: str) -> None:
        return  # loads finish in start_load_kv, before the forward pass

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: Any, **kwargs: Any) -> None:
        self._side.save_layer(layer_name)

    def wait_for_save(self) -> None:
        self._side.end_step()

    def get_block_ids_with_load_errors(self) -> set[int]:
        return self._side.take_load_errors()

    def build_connector_worker_meta(self) -> KvtierWorkerMetadata | None:
        return self._side.take_answers()

    def get_kv_connector_stats(self) -> KvtierConnectorStats | None:
        delta = {k: self.counters[k] - self._reported[k] for k in COUNTERS}
        if not any(delta.values()):
            return None
        self._reported = dict(self.counters)
        return KvtierConnectorStats(data=delta)

    @classmethod
    def build_kv_connector_stats(cls, data: dict[str, Any] | None = None) -> KvtierConnectorStats:
        return KvtierConnectorStats(data=dict(data or {}))

    def store_stats(self) -> Any:
        """The worker store's ``StoreStats`` (``None`` on the scheduler side)."""
        store = self._side.store
        return None if store is None else store.stats()

    def reset_cache(self) -> bool:
        return False  # kvtier's tiers outlive vLLM's prefix-cache resets (that is the point)

    def shutdown(self) -> None:
        self._side.shutdown()

    def count(self, name: str, amount: int = 1) -> None:
        self.counters[name] += amount
