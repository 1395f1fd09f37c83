"""Replay a trace through the store's own tier indexes and policies (no second implementation).

Each tier is a ``TierIndex`` with a ``SlotAllocator`` sized in whole KV blocks and the policy
class the store uses. A block evicted or expired from tier i is demoted to tier i+1 (through
the index's ``on_drop`` hook); a hit in a lower tier is promoted back to the first. Time is the
trace's, so TTL windows behave as they would in production.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Hashable

from ..index import Entry, GhostList, SlotAllocator, TierIndex
from ..metrics import MissReason
from ..policy import make_policy
from ..specs import GPUSpec, ModelSpec
from .trace import Trace

#  Default bandwidths (GB/s) of the links a restored block crosses, beyond the GPU's PCIe.
DEFAULT_NVME_GBS = 7.0      # one PCIe Gen4 x4 NVMe drive, sequential read
DEFAULT_REMOTE_GBS = 12.5   # 100 GbE to a shared tier


@dataclass(frozen=True, slots=True)
class TierSpec:
    """One simulated tier: ``name`` (host, disk or remote), capacity, and its own cache window."""

    name: str
    capacity_bytes: int
    ttl_s: float | None = None


@dataclass(frozen=True, slots=True)
class Prices:
    """USD per million input tokens (defaults: a typical provider's list prices)."""

    uncached: float = 3.0   # input tokens computed and not written to the cache
    cached: float = 0.30    # input tokens read from the cache
    write: float = 3.75     # input tokens computed and written to the cache (the write premium)


@dataclass(frozen=True, slots=True)
class SimConfig:
    """One simulated configuration.

    Args:
        tiers: fastest first; each block evicted or expired from one is demoted to the next.
        policy: eviction policy of every tier (``lru`` or ``ttl``), the store's own classes.
        refresh: ``write`` (only a write extends a window) or ``read`` (every hit does).
        promote: copy a block hit in a lower tier back into the first tier.
        nvme_gbs / remote_gbs: read bandwidth of the disk and remote tiers (the GPU's PCIe
            bandwidth caps both; the host tier restores at PCIe speed).
    """

    tiers: tuple[TierSpec, ...]
    model: ModelSpec
    gpu: GPUSpec
    dtype: str | None = None
    policy: str = "lru"
    refresh: str = "write"
    promote: bool = True
    prices: Prices = field(default_factory=Prices)
    nvme_gbs: float = DEFAULT_NVME_GBS
    remote_gbs: float = DEFAULT_REMOTE_GBS

    def restore_gbs(self, tier: str) -> float:
        link = {"disk": self.nvme_gbs, "remote": self.remote_gbs}.get(tier, self.gpu.pcie_gbs)
        return min(link, self.gpu.pcie_gbs)


@dataclass(slots=True)
class SimResult:
    """Counts from one replay; rates and dollars are derived properties (see ``to_json``)."""

    config: SimConfig
    block_tokens: int
    block_bytes: int
    requests: int = 0
    block_refs: int = 0
    input_tokens: int = 0
    logical_hits: int = 0
    physical_hits: int = 0
    prefix_hits: int = 0
    hit_tokens: int = 0           # tokens of prefix hits: prefill actually skipped
    physical_hit_tokens: int = 0  # tokens of every block found in some tier
    write_tokens: int = 0         # tokens of missed blocks written into the first tier
    gpu_seconds_saved: float = 0.0
    hits_by_tier: Counter = field(default_factory=Counter)
    misses: Counter = field(default_factory=Counter)  # "never_stored", "evicted:host", ...
    evictions: Counter = field(default_factory=Counter)
    expirations: Counter = field(default_factory=Counter)
    demotions: int = 0
    promotions: int = 0

    @property
    def logical_hit_rate(self) -> float:
        return self.logical_hits / self.block_refs if self.block_refs else 0.0

    @property
    def physical_hit_rate(self) -> float:
        return self.physical_hits / self.block_refs if self.block_refs else 0.0

    @property
    def prefix_hit_rate(self) -> float:
        return self.prefix_hits / self.block_refs if self.block_refs else 0.0

    @property
    def physical_token_hit_rate(self) -> float:
        return self.physical_hit_tokens / self.input_tokens if self.input_tokens else 0.0

    def hit_rate_by_tier(self) -> dict[str, float]:
        """Share of all block references each tier served."""
        return {name: n / self.block_refs for name, n in self.hits_by_tier.items()} if self.block_refs else {}

    @property
    def token_hit_rate(self) -> float:
        return self.hit_tokens / self.input_tokens if self.input_tokens else 0.0

    @property
    def eviction_regret(self) -> int:
        """Misses on blocks a tier had evicted (ghost list): hits a bigger tier would have made."""
        return sum(n for reason, n in self.misses.items() if reason.startswith("evicted"))

    def dollars(self) -> dict[str, float]:
        p, per = self.config.prices, 1e-6
        uncached_tokens = self.input_tokens - self.hit_tokens - self.write_tokens
        parts = {"uncached": uncached_tokens * p.uncached * per, "cached": self.hit_tokens * p.cached * per,
                 "write": self.write_tokens * p.write * per}
        total = sum(parts.values())
        baseline = self.input_tokens * p.uncached * per
        return {**parts, "total": total, "no_cache": baseline, "saved": baseline - total}

    def to_json(self) -> dict:
        cfg = self.config
        return {
            "requests": self.requests, "block_refs": self.block_refs, "input_tokens": self.input_tokens,
            "block_tokens": self.block_tokens, "block_bytes": self.block_bytes,
            "model": cfg.model.name, "gpu": cfg.gpu.name, "policy": cfg.policy, "refresh": cfg.refresh,
            "tiers": [{"name": t.name, "capacity_bytes": t.capacity_bytes, "ttl_s": t.ttl_s} for t in cfg.tiers],
            "logical_hit_rate": self.logical_hit_rate, "physical_hit_rate": self.physical_hit_rate,
            "prefix_hit_rate": self.prefix_hit_rate, "token_hit_rate": self.token_hit_rate,
            "physical_token_hit_rate": self.physical_token_hit_rate,
            "hit_rate_by_tier": self.hit_rate_by_tier(),
            "hits_by_tier": dict(self.hits_by_tier), "misses": dict(self.misses),
            "eviction_regret": self.eviction_regret, "evictions": dict(self.evictions),
            "expirations": dict(self.expirations), "demotions": self.demotions, "promotions": self.promotions,
            "prefill_tokens_saved": self.hit_tokens, "gpu_seconds_saved": self.gpu_seconds_saved,
            "gpu_dollars_saved": self.gpu_seconds_saved * cfg.gpu.usd_per_hour / 3600,
            "dollars": self.dollars(),
        }


class _Replay:
    """The mutable state of one replay."""

    def __init__(self, cfg: SimConfig, block_bytes: int, result: SimResult) -> None:
        self.cfg = cfg
        self.block_bytes = block_bytes
        self.result = result
        self.now = 0.0
        self.ghosts = GhostList(limit=1 << 40)  # remember every drop: regret needs all of them
        self.tiers: list[TierIndex] = []
        for i, spec in enumerate(cfg.tiers):
            last = i + 1 == len(cfg.tiers)
            self.tiers.append(TierIndex(
                spec.name, SlotAllocator(spec.capacity_bytes // block_bytes, block_bytes),
                make_policy(cfg.policy), self.ghosts, max_pinned_bytes=0,
                refresh_on_read=cfg.refresh == "read",
                on_drop=None if last else self._demoter(i + 1),
            ))

    def _demoter(self, target: int) -> Callable[[Entry, MissReason], None]:
        def demote(entry: Entry, reason: MissReason) -> None:
            if self.tiers[target].find(entry.key, self.now) is None and self.insert(target, entry.key):
                self.result.demotions += 1
        return demote

    def insert(self, tier: int, key: Hashable) -> bool:
        index = self.tiers[tier]
        reservation = index.reserve(key, self.block_bytes, self.now, False)
        if reservation is None:
            return False
        ttl = self.cfg.tiers[tier].ttl_s
        index.publish(key, reservation, self.block_bytes, None if ttl is None else self.now + ttl, ttl, None)
        return True

    def lookup(self, key: Hashable) -> int | None:
        """Index of the fastest tier holding ``key`` (counted as a read there), else None."""
        for position, index in enumerate(self.tiers):
            entry = index.find(key, self.now)
            if entry is not None:
                index.begin_read(entry, self.now)
                index.end_read(entry, True)
                return position
        return None


def simulate(trace: Trace, cfg: SimConfig, progress: Callable[[int], None] | None = None) -> SimResult:
    """Replay ``trace`` under ``cfg``; ``progress(n)`` is called with requests done, every 1000."""
    kv_per_token = cfg.model.kv_bytes_per_token(cfg.dtype)
    block_tokens = trace.block_tokens
    result = SimResult(cfg, block_tokens, kv_per_token * block_tokens)
    replay = _Replay(cfg, result.block_bytes, result)
    prefill_s = cfg.gpu.prefill_seconds_per_token(cfg.model)
    saved_per_token = [max(0.0, prefill_s - kv_per_token / (cfg.restore_gbs(t.name) * 1e9)) for t in cfg.tiers]
    tier_names = [t.name for t in cfg.tiers]
    seen: set[Hashable] = set()
    for done, request in enumerate(trace.requests, 1):
        replay.now = request.timestamp_s
        result.requests += 1
        result.input_tokens += request.input_tokens
        prefix_intact = True
        for position, key in enumerate(request.blocks):
            tokens = max(0, min(block_tokens, request.input_tokens - position * block_tokens))
            result.block_refs += 1
            if key in seen:
                result.logical_hits += 1
            else:
                seen.add(key)
            tier = replay.lookup(key)
            if tier is None:
                reason, dropped_by = replay.ghosts.detail(key)
                result.misses[reason.value if dropped_by is None else f"{reason.value}:{dropped_by}"] += 1
                prefix_intact = False
                if replay.insert(0, key):
                    result.write_tokens += tokens
                continue
            result.physical_hits += 1
            result.physical_hit_tokens += tokens
            result.hits_by_tier[tier_names[tier]] += 1
            if prefix_intact:
                result.prefix_hits += 1
                result.hit_tokens += tokens
                result.gpu_seconds_saved += tokens * saved_per_token[tier]
            if tier > 0 and cfg.promote and replay.insert(0, key):
                result.promotions += 1
        if progress is not None and done % 1000 == 0:
            progress(done)
    if progress is not None:
        progress(result.requests)
    for index in replay.tiers:
        result.evictions[index.name] = index.evictions
        result.expirations[index.name] = index.expirations
    return result
