"""vLLM's ``kv_connector_extra_config`` for the kvtier connector, translated into kvtier's typed
``StoreConfig`` at the edge (unknown keys rejected). Split out of ``vllm.py``.

Every key, with its default and meaning: docs/integrations/vllm.md.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Mapping

from ..config import HostTierConfig, StoreConfig, parse_size
from ..errors import ConfigError
from .common import deep_merge, path_list, rank_metrics_port, store_table

KVTIER_KEYS = frozenset({
    "storage_dir", "disk_capacity", "host_capacity", "write_mode", "fsync", "codec",
    "promote_on_read", "remote_url", "fingerprint", "page_tokens", "prefill_tokens_per_s",
    "recompute_on_load_failure", "lookup_timeout_s", "metrics_port", "kvtier",
})
# Pages reach disk as they are saved (on the connector's own thread), so a killed server keeps them.
_CONNECTOR_DEFAULTS = {"disk": {"write_mode": "write_through"}}
_DEFAULT_PAGE_TOKENS = 256


@dataclasses.dataclass(frozen=True, slots=True)
class VLLMConnectorConfig:
    """``kv_connector_extra_config`` (plus ``KVTIER_*`` variables), translated and validated.

    Args:
        store: the settings of this worker's ``TieredStore`` as a ``StoreConfig.from_dict``
            mapping; the connector sets the slot size (one page) and the rank's disk directory.
        storage_dirs: the base disk-tier directories (empty: no disk tier).
        fingerprint: the weights revision or hash (part of every key's namespace).
        page_tokens: tokens per kvtier page, a multiple of vLLM's block size (``None``: the
            smallest multiple of it that holds 256 tokens).
        prefill_tokens_per_s: the engine's prefill speed for the load-or-recompute planner:
            ``None`` measures it from the engine's own steps ("auto"); ``0`` loads every hit.
        recompute_on_load_failure: set vLLM's ``kv_load_failure_policy`` to ``recompute``, so a
            page that fails to load (corrupt, gone) is recomputed instead of failing the request.
        lookup_timeout_s: how long the scheduler waits for the worker's answer to a prefix
            lookup before scheduling the request without kvtier.
    """

    store: Mapping[str, Any]
    storage_dirs: tuple[str, ...]
    fingerprint: str = ""
    page_tokens: int | None = None
    prefill_tokens_per_s: float | None = None
    recompute_on_load_failure: bool = True
    lookup_timeout_s: float = 5.0

    @classmethod
    def from_extra_config(cls, extra: Mapping[str, Any] | None,
                          environ: Mapping[str, str] | None = None) -> "VLLMConnectorConfig":
        extra = dict(extra or {})
        unknown = sorted(set(extra) - KVTIER_KEYS)
        if unknown:
            raise ConfigError(
                f"kvtier's vLLM connector got unknown kv_connector_extra_config key(s) {unknown}; "
                f"known keys: {sorted(KVTIER_KEYS)} (docs/integrations/vllm.md)")
        store = store_table(extra, _CONNECTOR_DEFAULTS, os.environ if environ is None else environ,
                            "kv_connector_extra_config")
        bases = path_list(extra.get("storage_dir") or store.get("disk", {}).get("paths"))
        dirs = tuple(str(Path(base).expanduser()) for base in bases)
        if not dirs:
            store.pop("disk", None)
        if not dirs and "remote" not in store:
            raise ConfigError("kvtier's vLLM connector needs somewhere to keep pages: set storage_dir "
                              "(a directory on NVMe) in kv_connector_extra_config, KVTIER_DISK_PATHS, "
                              "or remote_url")
        page_tokens = extra.get("page_tokens")
        if page_tokens is not None and (isinstance(page_tokens, bool) or not isinstance(page_tokens, int)
                                        or page_tokens <= 0):
            raise ConfigError(f"page_tokens must be a positive int, got {page_tokens!r}")
        speed = extra.get("prefill_tokens_per_s", "auto")
        if speed == "auto":
            speed = None
        elif isinstance(speed, bool) or not isinstance(speed, (int, float)) or speed < 0:
            raise ConfigError(f"prefill_tokens_per_s must be 'auto', 0 (always load) or a positive "
                              f"number, got {speed!r}")
        recompute = extra.get("recompute_on_load_failure", True)
        if not isinstance(recompute, bool):
            raise ConfigError(f"recompute_on_load_failure must be true or false, got {recompute!r}")
        timeout = extra.get("lookup_timeout_s", 5.0)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ConfigError(f"lookup_timeout_s must be > 0 seconds, got {timeout!r}")
        config = cls(store=store, storage_dirs=dirs, fingerprint=str(extra.get("fingerprint", "")),
                     page_tokens=page_tokens, prefill_tokens_per_s=None if speed is None else float(speed),
                     recompute_on_load_failure=recompute, lookup_timeout_s=float(timeout))
        config.store_config(4096, ())  # validate every setting now, not at the first page
        return config

    def page_tokens_for(self, block_size: int) -> int:
        """Tokens per page for vLLM blocks of ``block_size`` tokens (a multiple of it)."""
        if self.page_tokens is None:
            return block_size * max(1, _DEFAULT_PAGE_TOKENS // block_size)
        if self.page_tokens % block_size:
            raise ConfigError(f"page_tokens ({self.page_tokens}) must be a multiple of vLLM's block "
                              f"size ({block_size}); e.g. {block_size * max(1, self.page_tokens // block_size)}")
        return self.page_tokens

    def store_config(self, page_bytes: int, subdirs: tuple[str, ...], label: str = "", *,
                     rank: int = 0) -> StoreConfig:
        """The ``StoreConfig`` of one worker's store, for pages of ``page_bytes``; its disk
        directories are ``storage_dirs`` joined with ``subdirs`` (model, rank). Each rank serves
        its metrics on ``metrics_port + rank`` (0 stays "any free port"), named after ``subdirs``."""
        table = deep_merge({}, self.store)
        port = rank_metrics_port(table.get("metrics_port"), rank)
        if port is not None:
            table["metrics_port"] = port
            table.setdefault("metrics_name", "-".join(("vllm",) + subdirs))
        host = table.setdefault("host", {})
        host["slot_bytes"] = page_bytes
        capacity = parse_size(host.get("capacity_bytes", HostTierConfig().capacity_bytes))
        host["capacity_bytes"] = max(capacity, 4 * page_bytes)  # room for a batch to turn over
        if self.storage_dirs:
            disk = table.setdefault("disk", {})
            disk["paths"] = [str(Path(base, *subdirs)) for base in self.storage_dirs]
            disk["slot_bytes"] = 0  # = host.slot_bytes
            disk.setdefault("namespace", label)
        return StoreConfig.from_dict(table)


def safe_name(text: str) -> str:
    """A directory name for a model id or path."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "unnamed-model"
