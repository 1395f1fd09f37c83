"""Eviction policies: pure bookkeeping (no I/O, no clock), shared by the store and the simulator."""

from __future__ import annotations

from .base import EvictionPolicy
from .lru import LRUPolicy
from .ttl import TTLPolicy

_POLICIES: dict[str, type] = {"lru": LRUPolicy, "ttl": TTLPolicy}


def make_policy(name: str) -> EvictionPolicy:
    """A new policy instance by name (``"lru"`` or ``"ttl"``)."""
    try:
        return _POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of {sorted(_POLICIES)}") from None


__all__ = ["EvictionPolicy", "LRUPolicy", "TTLPolicy", "make_policy"]
