"""Counters, miss reasons and the ``stats()`` result types."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import Enum


class MissReason(str, Enum):
    """Why a read found nothing. ``str`` values are stable names for logs and metrics."""

    NEVER_STORED = "never_stored"      # no record of this key (or it fell off the ghost list)
    EVICTED = "evicted"                # removed to make room, or by an explicit evict()
    EXPIRED = "expired"                # its TTL window closed
    CORRUPT = "corrupt"                # stored bytes failed verification; dropped (fail closed)
    TIER_UNAVAILABLE = "tier_unavailable"  # the tier holding it cannot be reached
    DEADLINE = "deadline"              # the read did not finish before its deadline


@dataclass(frozen=True, slots=True)
class TierStats:
    """One tier's counters at the time of ``stats()``."""

    name: str
    hits: int
    bytes_in: int        # payload bytes written into this tier
    bytes_out: int       # payload bytes read out of this tier
    used_bytes: int      # payload bytes of the blocks it holds
    capacity_bytes: int
    slots_used: int
    slots_total: int
    entries: int
    pinned_bytes: int
    evictions: int
    expirations: int
    extra: dict = field(default_factory=dict)  # tier-specific, e.g. disk: direct_io, io_errors


@dataclass(frozen=True, slots=True)
class StoreStats:
    """What ``TieredStore.stats()`` returns."""

    tiers: tuple[TierStats, ...]
    puts: int
    puts_rejected: int          # put() returned False: no tier admitted the block
    gets: int
    hits: int
    misses: dict[str, int]      # MissReason value -> count
    native_backend: str         # "native" or "python" (kvtier.native.backend)
    routes: dict = field(default_factory=dict)  # transfer route -> kvtier.transfer.RouteStats

    @property
    def miss_count(self) -> int:
        return sum(self.misses.values())

    @property
    def hit_rate(self) -> float:
        return self.hits / self.gets if self.gets else 0.0

    def tier(self, name: str) -> TierStats:
        """The stats of the tier called ``name`` (e.g. ``"host"``)."""
        for tier in self.tiers:
            if tier.name == name:
                return tier
        raise KeyError(f"no tier named {name!r}; tiers: {[t.name for t in self.tiers]}")


@dataclass(slots=True)
class StoreCounters:
    """Mutable store-wide counters, updated under the store's metadata lock."""

    puts: int = 0
    puts_rejected: int = 0
    gets: int = 0
    hits: int = 0
    misses: Counter = field(default_factory=Counter)

    def miss(self, reason: MissReason) -> None:
        self.gets += 1
        self.misses[reason.value] += 1

    def hit(self) -> None:
        self.gets += 1
        self.hits += 1
