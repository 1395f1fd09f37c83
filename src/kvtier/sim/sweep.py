"""Variants (policy × cache window) and capacity sweeps over one trace."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Callable

from ..units import format_duration, parse_size
from ..errors import InvalidArgumentError
from .simulator import SimConfig, SimResult, simulate
from .trace import Trace

_SWEEP_RE = re.compile(r"^(\w+)=([^.]+)\.\.(.+)$")


@dataclass(frozen=True, slots=True)
class Variant:
    """A policy and the first tier's cache window (``None``: no window)."""

    policy: str
    ttl_s: float | None

    @property
    def label(self) -> str:
        return f"{self.policy}, window {format_duration(self.ttl_s)}"

    def apply(self, cfg: SimConfig) -> SimConfig:
        first = replace(cfg.tiers[0], ttl_s=self.ttl_s)
        return replace(cfg, policy=self.policy, tiers=(first, *cfg.tiers[1:]))


@dataclass(frozen=True, slots=True)
class CapacitySweep:
    """``host=8GiB..512GiB``: the named tier's capacity doubles from ``low`` up to ``high``."""

    tier: str
    low: int
    high: int

    @classmethod
    def parse(cls, text: str) -> "CapacitySweep":
        match = _SWEEP_RE.match(text.strip())
        if not match:
            raise InvalidArgumentError(f"--sweep {text!r}: use TIER=LOW..HIGH, e.g. host=8GiB..512GiB")
        low, high = parse_size(match.group(2)), parse_size(match.group(3))
        if not 0 < low <= high:
            raise InvalidArgumentError(f"--sweep {text!r}: needs 0 < LOW <= HIGH")
        return cls(match.group(1), low, high)

    def capacities(self) -> list[int]:
        sizes, size = [], self.low
        while size < self.high:
            sizes.append(size)
            size *= 2
        return sizes + [self.high]

    def apply(self, cfg: SimConfig, capacity: int) -> SimConfig:
        names = [t.name for t in cfg.tiers]
        if self.tier not in names:
            raise InvalidArgumentError(f"--sweep names tier {self.tier!r} but the tiers are {names}")
        tiers = tuple(replace(t, capacity_bytes=capacity) if t.name == self.tier else t for t in cfg.tiers)
        return replace(cfg, tiers=tiers)


@dataclass(frozen=True, slots=True)
class SweepPoint:
    variant: Variant
    capacity_bytes: int
    result: SimResult

    def to_json(self) -> dict:
        r = self.result
        return {"policy": self.variant.policy, "ttl_s": self.variant.ttl_s,
                "capacity_bytes": self.capacity_bytes, "physical_hit_rate": r.physical_hit_rate,
                "prefix_hit_rate": r.prefix_hit_rate, "token_hit_rate": r.token_hit_rate,
                "eviction_regret": r.eviction_regret, "dollars_total": r.dollars()["total"]}


def run_variants(trace: Trace, base: SimConfig, variants: list[Variant],
                 progress: Callable[[int], None]) -> list[SimResult]:
    """One replay per variant at the configured capacities."""
    return [simulate(trace, v.apply(base), progress) for v in variants]


def run_sweep(trace: Trace, base: SimConfig, variants: list[Variant], sweep: CapacitySweep,
              progress: Callable[[int], None]) -> list[SweepPoint]:
    """One replay per variant and capacity."""
    return [SweepPoint(v, cap, simulate(trace, sweep.apply(v.apply(base), cap), progress))
            for v in variants for cap in sweep.capacities()]
