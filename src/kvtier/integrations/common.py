"""Engine-free helpers the integrations share: the extra-config shorthands and how an
engine's config, ``KVTIER_*`` environment variables and defaults merge into one
``StoreConfig.from_dict`` table."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from ..config import OTHER_ENV, TIER_SECTIONS, StoreConfig, env_name
from ..errors import ConfigError

# Extra-config keys that set one StoreConfig field: key -> (section, field).
STORE_SHORTHANDS = {"host_capacity": ("host", "capacity_bytes"), "disk_capacity": ("disk", "capacity_bytes"),
                    "write_mode": ("disk", "write_mode"), "fsync": ("disk", "fsync"),
                    "codec": ("disk", "codec"), "promote_on_read": ("disk", "promote_on_read"),
                    "remote_url": ("remote", "url")}


def env_table(environ: Mapping[str, str]) -> dict[str, Any]:
    """The ``KVTIER_*`` settings (as ``StoreConfig.from_env`` reads them) as a nested table."""
    table: dict[str, Any] = {}
    known = set(OTHER_ENV)  # not config fields
    sections = TIER_SECTIONS
    names = [(None, f.name) for f in dataclasses.fields(StoreConfig) if f.name not in sections]
    names += [(section, f.name) for section, cls in sections.items() for f in dataclasses.fields(cls)]
    for section, name in names:
        var = env_name(name, section)
        known.add(var)
        if var in environ:
            (table.setdefault(section, {}) if section else table)[name] = environ[var]
    unknown = sorted(k for k in environ if k.startswith("KVTIER_") and k not in known)
    if unknown:
        raise ConfigError(f"unknown environment variables {unknown}; known: {sorted(known)}")
    return table


def deep_merge(into: dict[str, Any], other: Mapping[str, Any]) -> dict[str, Any]:
    """``other``'s settings merged into ``into`` (nested tables merged, not replaced); ``into``."""
    for key, value in other.items():
        if isinstance(value, Mapping):
            deep_merge(into.setdefault(key, {}), value)
        else:
            into[key] = list(value) if isinstance(value, (list, tuple)) else value
    return into


def store_table(extra: Mapping[str, Any], defaults: Mapping[str, Any],
                environ: Mapping[str, str], where: str) -> dict[str, Any]:
    """One ``StoreConfig.from_dict`` table from an engine's extra config: ``defaults``, then the
    ``KVTIER_*`` variables, then the nested ``kvtier`` table, then the shorthand keys and
    ``metrics_port`` (later wins). ``where`` names the engine's setting in errors."""
    store = deep_merge({}, defaults)
    deep_merge(store, env_table(environ))
    nested = extra.get("kvtier", {})
    if not isinstance(nested, Mapping):
        raise ConfigError(f"{where}['kvtier'] must be a table of StoreConfig settings, got {nested!r}")
    deep_merge(store, nested)
    for key, (section, name) in STORE_SHORTHANDS.items():
        if key in extra:
            store.setdefault(section, {})[name] = extra[key]
    if "metrics_port" in extra:
        store["metrics_port"] = extra["metrics_port"]
    return store


def path_list(value: Any) -> list[str]:
    """Directories given as a list, or as one comma-separated string; [] for none."""
    if isinstance(value, str):
        return [p for p in value.split(",") if p.strip()]
    return list(value or ())


def rank_metrics_port(port: Any, rank: int) -> int | None:
    """The metrics port of one rank: ``port + rank``; ``0`` stays "any free port"; None when
    metrics are off (``None``, ``""`` or ``"none"``)."""
    if port is None or (isinstance(port, str) and port.strip().lower() in ("", "none")):
        return None
    try:
        port = int(port)
    except (TypeError, ValueError):
        raise ConfigError(f"metrics_port must be a port number, got {port!r}") from None
    return port + rank if port else 0
