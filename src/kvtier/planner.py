"""Load or recompute: which leading pages of a prompt are worth bringing back from a tier.

A cached prefix is only a win if loading it is faster than the engine recomputing it (a slow
disk or a remote tier can lose to a fast GPU's prefill). Engines load a contiguous prefix and
compute the rest, so a plan is a split point: pages ``[0, load_blocks)`` are loaded, pages
``[load_blocks, len(keys))`` are prefilled.

Costs, from measured or given figures:

* loading a run of consecutive pages from one tier: ``latency + bytes / bandwidth`` of that
  tier's route (one batched transfer per run);
* recomputing pages: ``tokens / prefill_tokens_per_s`` (``block_tokens`` per page).

The planner picks the split (at a boundary between runs of the hit prefix) with the least
total time, the smallest such split on a tie: loading is chosen only when strictly faster.
"""

from __future__ import annotations

from dataclasses import dataclass

LOAD, RECOMPUTE = "load", "recompute"


@dataclass(frozen=True, slots=True)
class TierSpeed:
    """How fast pages come back from one tier: bytes/s and seconds of fixed cost per batch."""

    bandwidth_Bps: float
    latency_s: float = 0.0


@dataclass(frozen=True, slots=True)
class PlanRange:
    """Consecutive pages ``[start, stop)`` held by ``tier`` (``None``: not stored)."""

    start: int
    stop: int
    tier: str | None
    action: str            # "load" or "recompute"
    load_s: float | None   # time to load this run (None where nothing is stored)
    recompute_s: float     # time to prefill its tokens


@dataclass(frozen=True, slots=True)
class Plan:
    """The decision for one request's pages (see the module docstring)."""

    ranges: tuple[PlanRange, ...]
    block_tokens: int
    prefill_tokens_per_s: float

    @property
    def load_blocks(self) -> int:
        """Leading pages to load; the engine prefills every page after them."""
        return sum(r.stop - r.start for r in self.ranges if r.action == LOAD)

    @property
    def hit_blocks(self) -> int:
        """Leading pages stored in some tier (whether or not loading them pays)."""
        return sum(r.stop - r.start for r in self.ranges if r.tier is not None)

    @property
    def total_blocks(self) -> int:
        return self.ranges[-1].stop if self.ranges else 0

    @property
    def tokens_to_prefill(self) -> int:
        return (self.total_blocks - self.load_blocks) * self.block_tokens

    @property
    def estimated_s(self) -> float:
        """Load time of the loaded runs plus prefill time of the rest."""
        return sum(r.load_s if r.action == LOAD else r.recompute_s for r in self.ranges)

    @property
    def recompute_all_s(self) -> float:
        """What prefilling every page would take (the baseline the plan beats or equals)."""
        return sum(r.recompute_s for r in self.ranges)


def make_plan(tiers: list[str | None], page_bytes: list[int], speeds: dict[str, TierSpeed], *,
              prefill_tokens_per_s: float, block_tokens: int) -> Plan:
    """Plan a request whose page ``i`` is held by ``tiers[i]`` (``None``: a miss) and has
    ``page_bytes[i]`` bytes. Only the leading run of hits can be loaded."""
    if not prefill_tokens_per_s > 0:
        raise ValueError(f"prefill_tokens_per_s must be > 0, got {prefill_tokens_per_s!r}")
    if block_tokens < 1:
        raise ValueError(f"block_tokens must be >= 1, got {block_tokens!r}")
    if len(tiers) != len(page_bytes):
        raise ValueError("tiers and page_bytes must have the same length")
    per_block_s = block_tokens / prefill_tokens_per_s
    runs: list[tuple[int, int, str | None]] = []
    hit_end = next((i for i, tier in enumerate(tiers) if tier is None), len(tiers))
    start = 0
    for i in range(1, hit_end + 1):
        if i == hit_end or tiers[i] != tiers[start]:
            if i > start:
                runs.append((start, i, tiers[start]))
            start = i
    if hit_end < len(tiers):
        runs.append((hit_end, len(tiers), None))
    loads = []
    for first, stop, tier in runs:
        if tier is None:
            loads.append(None)
            continue
        speed = speeds[tier]
        loads.append(speed.latency_s + sum(page_bytes[first:stop]) / speed.bandwidth_Bps)
    recomputes = [(stop - first) * per_block_s for first, stop, _ in runs]
    # total(k) = load the first k runs, recompute the others; keep the cheapest k (smallest on a tie)
    best_k, best = 0, sum(recomputes)
    total = best
    for k, load in enumerate(loads):
        if load is None:
            break
        total += load - recomputes[k]
        if total < best:
            best_k, best = k + 1, total
    ranges = tuple(PlanRange(first, stop, tier, LOAD if k < best_k else RECOMPUTE, loads[k], recomputes[k])
                   for k, (first, stop, tier) in enumerate(runs))
    return Plan(ranges, block_tokens, float(prefill_tokens_per_s))
