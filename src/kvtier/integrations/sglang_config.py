"""SGLang's extra config for the kvtier HiCache backend, translated into kvtier's typed
``StoreConfig`` at the edge (unknown keys rejected). Split out of ``sglang.py``."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Mapping

from ..config import HostTierConfig, StoreConfig, parse_size
from ..errors import ConfigError
from .common import deep_merge, path_list, rank_metrics_port, store_table

KVTIER_KEYS = frozenset({  # each with its default and meaning: docs/integrations/sglang.md
    "storage_dir", "disk_capacity", "host_capacity", "write_mode", "fsync", "codec", "promote_on_read",
    "remote_url", "fingerprint", "tenant_salt", "page_bytes", "staging_bytes", "metrics_port", "kvtier",
})
SGLANG_KEYS = frozenset({
    "backend_name", "module_path", "class_name", "interface_v1",  # the dynamic factory's
    "file_storage_path",  # --file-storage-path; used as storage_dir when that is not given
    "prefetch_threshold", "prefetch_timeout_base", "prefetch_timeout_per_ki_token",
    "hicache_storage_pass_prefix_keys", "tp_lcm_size",  # SGLang's own knobs, normally popped
})
_BACKEND_DEFAULTS = {"disk": {"write_mode": "write_through"}}  # promote_on_read: the store default (on)
_DEFAULT_STAGING = 64 << 20


@dataclasses.dataclass(frozen=True, slots=True)
class SGLangBackendConfig:
    """SGLang's ``extra_config`` dict and ``HiCacheStorageConfig``, translated and validated.

    Args:
        store: the settings of this rank's ``TieredStore`` as a ``StoreConfig.from_dict``
            mapping (``host.slot_bytes`` is set from the host pool's page when it is known).
        storage_dirs: this rank's disk-tier directories (empty: no disk tier).
        fingerprint / tenant_salt: the ``Namespace`` fields SGLang does not know.
        page_bytes: the slot size when no host pool is registered (``None``: kvtier's).
        staging_bytes: size of each staging buffer for pages the host layout scatters.
    """

    store: Mapping[str, Any]
    storage_dirs: tuple[str, ...]
    fingerprint: str = ""
    tenant_salt: str | None = None
    page_bytes: int | None = None
    staging_bytes: int = _DEFAULT_STAGING

    @classmethod
    def from_sglang(cls, storage_config: Any,
                    environ: Mapping[str, str] | None = None) -> "SGLangBackendConfig":
        """Translate ``storage_config.extra_config`` (plus ``KVTIER_*`` variables, which it
        overrides) for the rank that ``storage_config`` describes."""
        extra = dict(storage_config.extra_config or {})
        unknown = sorted(set(extra) - KVTIER_KEYS - SGLANG_KEYS)
        if unknown:
            raise ConfigError(
                f"kvtier's SGLang backend got unknown extra_config key(s) {unknown}; kvtier keys: "
                f"{sorted(KVTIER_KEYS)}; SGLang keys it accepts: {sorted(SGLANG_KEYS)} "
                "(docs/integrations/sglang.md)")
        store = store_table(extra, _BACKEND_DEFAULTS, os.environ if environ is None else environ,
                            "extra_config")
        _rank_metrics(store, storage_config)
        bases = path_list(extra.get("storage_dir") or extra.get("file_storage_path")
                          or store.get("disk", {}).get("paths"))
        dirs = tuple(str(Path(base).expanduser() / rank_directory(storage_config)) for base in bases)
        if dirs:
            store.setdefault("disk", {})["paths"] = list(dirs)
        else:
            store.pop("disk", None)
        if not dirs and "remote" not in store:
            raise ConfigError("kvtier's SGLang backend needs somewhere to keep pages: set storage_dir "
                              "(a directory on NVMe) in extra_config, KVTIER_DISK_PATHS, or remote_url")
        if storage_config.is_mla_model and storage_config.tp_size > 1 and "remote" not in store:
            raise ConfigError(
                "MLA pages are written by one TP rank and read by every rank, but kvtier's disk tier "
                "belongs to one process: with tp_size > 1 set remote_url so the ranks share pages "
                "through Redis (each rank keeps its own disk tier as a cache below it)")
        if getattr(storage_config, "should_split_heads", False):
            raise ConfigError("kvtier's SGLang backend does not split heads across heterogeneous TP "
                              "sizes (tp_lcm_size); leave tp_lcm_size unset")
        page_bytes = parse_size(extra["page_bytes"]) if "page_bytes" in extra else None
        staging = parse_size(extra.get("staging_bytes", _DEFAULT_STAGING))
        if staging <= 0 or (page_bytes is not None and page_bytes <= 0):
            raise ConfigError("page_bytes and staging_bytes must be > 0")
        salt = extra.get("tenant_salt")
        config = cls(store=store, storage_dirs=dirs, fingerprint=str(extra.get("fingerprint", "")),
                     tenant_salt=None if salt is None else str(salt), page_bytes=page_bytes,
                     staging_bytes=staging)
        config.store_config(4096)  # validate every setting now, not at the first page
        return config

    @property
    def flat_page_bytes(self) -> int:
        """The slot size without a registered host pool: ``page_bytes``, else kvtier's."""
        configured = self.store.get("host", {}).get("slot_bytes", HostTierConfig().slot_bytes)
        return self.page_bytes or parse_size(configured)

    def store_config(self, slot_bytes: int) -> StoreConfig:
        """The ``StoreConfig`` of this rank's store, for blocks of at most ``slot_bytes``."""
        table = deep_merge({}, self.store)
        host = table.setdefault("host", {})
        host["slot_bytes"] = slot_bytes
        capacity = parse_size(host.get("capacity_bytes", HostTierConfig().capacity_bytes))
        host["capacity_bytes"] = max(capacity, 4 * slot_bytes)  # room for a batch to turn over
        if "disk" in table:
            table["disk"]["slot_bytes"] = 0  # = host.slot_bytes
        return StoreConfig.from_dict(table)


def rank_directory(storage_config: Any) -> str:
    """This rank's subdirectory: one disk tier per process, named by model and shard."""
    model = re.sub(r"[^A-Za-z0-9._-]+", "-", storage_config.model_name or "unnamed-model").strip("-")
    c = storage_config
    return (f"{model}/tp{c.tp_rank}of{c.tp_size}_pp{c.pp_rank}of{c.pp_size}"
            f"_cp{c.attn_cp_rank}of{c.attn_cp_size}_dp{getattr(c, 'dp_rank', 0)}")


def _rank_metrics(store: dict[str, Any], storage_config: Any) -> None:
    """Each rank (process) serves its own exporter: on ``metrics_port`` + its TP/PP rank
    (``0`` stays "any free port"), with its shard as the ``store`` label."""
    c = storage_config
    port = rank_metrics_port(store.get("metrics_port"), c.tp_rank + c.tp_size * c.pp_rank)
    if port is None:
        return
    store["metrics_port"] = port
    store.setdefault("metrics_name", "sglang-" + rank_directory(c).rsplit("/", 1)[-1])