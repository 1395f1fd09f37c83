"""PNG plots of a simulation: hit rate vs capacity per variant, and the cost breakdown."""

from __future__ import annotations

from pathlib import Path

from ..config import format_size
from .simulator import SimResult
from .sweep import SweepPoint, Variant


def plot_sim(path: str | Path, variants: list[Variant], results: list[SimResult],
             sweep: list[SweepPoint], sweep_tier: str | None) -> None:
    """Left: prefix hit rate vs capacity per variant (the logical rate dashed). Right: input
    token dollars per variant beside no cache, split into uncached, cached and write."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rates, costs) = plt.subplots(1, 2, figsize=(13, 5))
    first = results[0]
    for variant in variants:
        points = [p for p in sweep if p.variant == variant]
        if points:
            xs = [p.capacity_bytes for p in points]
            rates.plot(xs, [p.result.prefix_hit_rate for p in points], marker="o", label=variant.label)
    if sweep:
        rates.set_xscale("log", base=2)
        ticks = sorted({p.capacity_bytes for p in sweep})
        rates.set_xticks(ticks, [format_size(t) for t in ticks], rotation=30)
        rates.set_xlabel(f"{sweep_tier} tier capacity")
    else:
        for variant, result in zip(variants, results):
            rates.bar(variant.label, result.prefix_hit_rate)
        rates.tick_params(axis="x", rotation=20)
    rates.axhline(first.logical_hit_rate, linestyle="--", color="grey",
                  label=f"logical (infinite cache) {first.logical_hit_rate:.1%}")
    rates.set_ylabel("prefix hit rate (block-weighted)")
    rates.set_ylim(0, max(0.05, first.logical_hit_rate * 1.15))
    rates.set_title("physical vs logical hit rate")
    rates.legend(fontsize=8)

    labels = ["no cache"] + [v.label for v in variants]
    parts = {"uncached": [first.dollars()["no_cache"]], "cached": [0.0], "write": [0.0]}
    for result in results:
        dollars = result.dollars()
        for name in parts:
            parts[name].append(dollars[name])
    bottom = [0.0] * len(labels)
    for name, color in (("uncached", "#c44e52"), ("write", "#dd8452"), ("cached", "#55a868")):
        costs.bar(labels, parts[name], bottom=bottom, label=name, color=color)
        bottom = [b + v for b, v in zip(bottom, parts[name])]
    costs.set_ylabel("input-token cost, USD")
    costs.set_title("cost breakdown at the configured capacities")
    costs.tick_params(axis="x", rotation=20)
    costs.legend(fontsize=8)
    fig.suptitle(f"{first.config.model.name} · {first.requests:,} requests · "
                 + " + ".join(f"{t.name} {format_size(t.capacity_bytes)}" for t in first.config.tiers))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
