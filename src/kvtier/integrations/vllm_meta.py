"""What kvtier's vLLM connector sends between its scheduler and worker halves, its stats, and
the interface both halves implement. Split out of ``vllm.py``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorMetadata, KVConnectorWorkerMetadata
from vllm.distributed.kv_transfer.kv_connector.v1.metrics import KVConnectorStats

from ..store import TieredStore

COUNTERS = ("lookups", "lookup_hit_pages", "planned_pages", "loaded_pages", "load_failed_pages",
            "saved_pages", "save_skipped_pages", "save_failed_pages", "bytes_loaded", "bytes_saved",
            "errors")


# -- what travels between the scheduler and the workers ---------------------------------------
@dataclass
class PageBatch:
    """Pages of one request: chained digests and, per page, the engine block ids (``-1``: skip)."""

    req_id: str
    salt: str | None
    chains: list[bytes]
    block_ids: list[list[int]] = field(default_factory=list)


@dataclass
class KvtierMetadata(KVConnectorMetadata):
    """Scheduler -> workers, once per step."""

    lookups: list[PageBatch] = field(default_factory=list)
    loads: list[PageBatch] = field(default_factory=list)
    saves: list[PageBatch] = field(default_factory=list)
    step_tokens: int = 0


@dataclass
class KvtierWorkerMetadata(KVConnectorWorkerMetadata):
    """Workers -> scheduler: ``req_id -> (stored leading pages, pages worth loading)``."""

    answers: dict[str, tuple[int, int]] = field(default_factory=dict)

    def aggregate(self, other: "KvtierWorkerMetadata") -> "KvtierWorkerMetadata":
        merged = dict(self.answers)
        for req_id, (hit, load) in other.answers.items():
            mine = merged.get(req_id)
            merged[req_id] = (hit, load) if mine is None else (min(mine[0], hit), min(mine[1], load))
        return KvtierWorkerMetadata(merged)


@dataclass
class KvtierConnectorStats(KVConnectorStats):
    """kvtier's counters for one interval, shown in vLLM's "KV Transfer metrics" log line."""

    def reset(self) -> None:
        self.data = {}

    def aggregate(self, other: KVConnectorStats) -> "KvtierConnectorStats":
        for key, value in other.data.items():
            self.data[key] = self.data.get(key, 0) + value
        return self

    def reduce(self) -> dict[str, int | float]:
        return {f"kvtier_{k}": v for k, v in self.data.items()}

    def is_empty(self) -> bool:
        return not any(self.data.values())


class Side:
    """What the connector delegates to; each role overrides its own half (the rest are no-ops)."""

    store: TieredStore | None = None

    def matched(self, request: Any, num_computed: int) -> int | None:
        return 0

    def after_alloc(self, request: Any, num_external_tokens: int) -> None:
        return

    def build_meta(self, out: Any) -> KvtierMetadata:
        return KvtierMetadata()

    def answers(self, answers: dict[str, tuple[int, int]]) -> None:
        return

    def finished(self, req_id: str) -> None:
        return

    def register(self, kv_caches: dict[str, torch.Tensor]) -> None:
        return

    def begin_step(self, meta: Any) -> None:
        return

    def start(self, meta: Any) -> None:
        return

    def save_layer(self, layer_name: str) -> None:
        return

    def end_step(self) -> None:
        return

    def take_load_errors(self) -> set[int]:
        return set()

    def take_answers(self) -> "KvtierWorkerMetadata | None":
        return None

    def flush(self) -> None:
        return

    def shutdown(self) -> None:
        return
