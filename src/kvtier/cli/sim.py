"""``kvtier size`` and ``kvtier sim``."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import List, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..config import format_size, parse_duration, parse_size
from ..errors import KvtierError
from ..policy import make_policy
from ..sim import (CapacitySweep, Prices, SimConfig, SimResult, TierSpec, Variant, load_trace,
                   run_sweep, run_variants)
from ..sim.trace import FORMATS
from ..specs import GPUS, MODELS, ModelSpec, gpu_spec, model_spec

err = Console(stderr=True)
_TOKENS_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*$")
_TIER_RE = re.compile(r"^(host|disk|remote)=([^@]+)(?:@(.+))?$")


def _fail(exc: Exception) -> typer.BadParameter:
    return typer.BadParameter(str(exc))


def parse_tokens(text: str) -> int:
    """``32768``, ``32K`` (= 32768), ``1M`` (= 1048576) tokens."""
    match = _TOKENS_RE.match(text)
    if not match:
        raise typer.BadParameter(f"cannot parse token count {text!r}: use 32768, 32K or 1M")
    scale = {"": 1, "k": 1024, "m": 1024 * 1024}[match.group(2).lower()]
    return int(float(match.group(1)) * scale)


def _model(name: Optional[str], layers, kv_heads, head_dim, kv_lora_rank, rope_dim) -> ModelSpec:
    try:
        return model_spec(name, layers=layers, kv_heads=kv_heads, head_dim=head_dim,
                          kv_lora_rank=kv_lora_rank, rope_dim=rope_dim)
    except KvtierError as exc:
        raise _fail(exc) from None


_PRICES = Prices()
_MODEL_HELP = f"Model preset: {', '.join(MODELS)}."


def size(
    model: Optional[str] = typer.Option(None, help=_MODEL_HELP),
    tokens: str = typer.Option("32K", help="Tokens of context per user (32768, 32K, 1M)."),
    users: int = typer.Option(1, min=1, help="Concurrent users (sequences)."),
    dtype: Optional[str] = typer.Option(None, help="KV dtype: bf16, fp16, fp8, fp32, int8 (default: the model's)."),
    block_tokens: int = typer.Option(256, min=1, help="Tokens per kvtier page, for the page size."),
    layers: Optional[int] = typer.Option(None, help="Override or give: layers."),
    kv_heads: Optional[int] = typer.Option(None, help="Override or give: KV heads."),
    head_dim: Optional[int] = typer.Option(None, help="Override or give: head dim."),
    kv_lora_rank: Optional[int] = typer.Option(None, help="MLA latent rank (DeepSeek: 512)."),
    rope_dim: Optional[int] = typer.Option(None, help="MLA rope dim (DeepSeek: 64)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """KV-cache bytes per token, per user and in total, from a model spec."""
    spec = _model(model, layers, kv_heads, head_dim, kv_lora_rank, rope_dim)
    try:
        per_token = spec.kv_bytes_per_token(dtype)
    except KvtierError as exc:
        raise _fail(exc) from None
    count = parse_tokens(tokens)
    doc = {"model": spec.name, "shape": spec.describe(), "dtype": dtype or spec.dtype,
           "bytes_per_token": per_token, "tokens": count, "users": users,
           "bytes_per_user": per_token * count, "bytes_total": per_token * count * users,
           "block_tokens": block_tokens, "page_bytes": per_token * block_tokens}
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    table = Table(title=f"{spec.name} · {doc['shape']} · {doc['dtype']}", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("KV per token", f"{per_token:,} B = {format_size(per_token)}")
    table.add_row(f"per user ({count:,} tokens)", _both_units(doc["bytes_per_user"]))
    table.add_row(f"total ({users} users)", _both_units(doc["bytes_total"]))
    table.add_row(f"kvtier page ({block_tokens} tokens)", format_size(doc["page_bytes"]))
    Console().print(table)


def _both_units(nbytes: int) -> str:
    return f"{format_size(nbytes)} ({nbytes / 1e9:,.1f} GB)"


def _tiers(specs: List[str], ttl_first: Optional[float]) -> tuple[TierSpec, ...]:
    tiers = []
    for i, text in enumerate(specs):
        match = _TIER_RE.match(text.strip())
        if not match:
            raise typer.BadParameter(f"--tier {text!r}: use NAME=SIZE[@TTL] with NAME host, disk or remote")
        try:
            ttl = parse_duration(match.group(3)) if match.group(3) else (ttl_first if i == 0 else None)
            tiers.append(TierSpec(match.group(1), parse_size(match.group(2)), ttl))
        except KvtierError as exc:
            raise _fail(exc) from None
    names = [t.name for t in tiers]
    if len(set(names)) != len(names):
        raise typer.BadParameter(f"--tier names must be distinct, got {names}")
    return tuple(tiers)


def sim(
    trace: str = typer.Argument(..., help="Trace file: Mooncake jsonl, or kvtier jsonl/CSV (docs/sim.md)."),
    model: Optional[str] = typer.Option("llama-3-70b", help=_MODEL_HELP),
    dtype: Optional[str] = typer.Option(None, help="KV dtype (default: the model's, bf16)."),
    layers: Optional[int] = typer.Option(None, help="Override the model's layers."),
    kv_heads: Optional[int] = typer.Option(None, help="Override the model's KV heads."),
    head_dim: Optional[int] = typer.Option(None, help="Override the model's head dim."),
    gpu: str = typer.Option("h100", help=f"GPU for the prefill roofline: {', '.join(GPUS)}."),
    mfu: Optional[float] = typer.Option(None, min=0.01, max=1.0, help="Prefill FLOP utilisation (default 0.5)."),
    tier: List[str] = typer.Option(["host=64GiB"], help="NAME=SIZE[@TTL], fastest first; repeat (host, disk, remote)."),
    policy: List[str] = typer.Option(["lru"], help="Eviction policy: lru or ttl; repeat to compare."),
    ttl: List[str] = typer.Option(["none"], help="First tier's cache window (5m, 1h, none); repeat to compare."),
    refresh: str = typer.Option("write", help="write: only writes extend a window; read: hits do too."),
    promote: bool = typer.Option(True, help="Copy lower-tier hits back into the first tier."),
    price_uncached: float = typer.Option(_PRICES.uncached, help="USD per million uncached input tokens."),
    price_cached: float = typer.Option(_PRICES.cached, help="USD per million cached input tokens."),
    price_write: float = typer.Option(_PRICES.write, help="USD per million input tokens written to cache."),
    nvme_gbs: float = typer.Option(7.0, help="Disk-tier read GB/s for restores."),
    remote_gbs: float = typer.Option(12.5, help="Remote-tier read GB/s for restores."),
    sweep: Optional[str] = typer.Option(None, help="TIER=LOW..HIGH capacity sweep, doubling (host=8GiB..512GiB)."),
    fmt: str = typer.Option("auto", "--format", help=f"Trace format: {', '.join(FORMATS)}."),
    block_tokens: Optional[int] = typer.Option(None, min=1, help="Tokens per block (kvtier formats; default 512)."),
    limit: Optional[int] = typer.Option(None, min=1, help="Replay only the first N requests."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    plot: Optional[str] = typer.Option(None, help="Write a PNG: hit rate vs capacity and the cost breakdown."),
) -> None:
    """Replay a serving trace through kvtier's policies: hit rates, misses, prefill and dollars saved.

    Reports the logical (infinite cache) vs physical hit rate, misses by reason and tier, prefill
    tokens and GPU-seconds saved, and the input-token bill at the given prices (docs/sim.md).
    """
    if refresh not in ("write", "read"):
        raise typer.BadParameter(f"--refresh must be write or read, got {refresh!r}")
    try:
        windows = [parse_duration(t) for t in ttl]
        gpu_cfg = gpu_spec(gpu)
        if mfu is not None:
            gpu_cfg = replace(gpu_cfg, mfu=mfu)
        spec = _model(model, layers, kv_heads, head_dim, None, None)
        spec.kv_bytes_per_token(dtype)
        tiers = _tiers(tier, windows[0])
        capacity_sweep = CapacitySweep.parse(sweep) if sweep else None
        base = SimConfig(tiers=tiers, model=spec, gpu=gpu_cfg, dtype=dtype, refresh=refresh,
                         promote=promote, prices=Prices(price_uncached, price_cached, price_write),
                         nvme_gbs=nvme_gbs, remote_gbs=remote_gbs)
        if capacity_sweep is not None:
            capacity_sweep.apply(base, capacity_sweep.low)  # validates the tier name
        for name in policy:
            make_policy(name)
        variants = [Variant(p, w) for p in policy for w in windows]
        loaded = load_trace(trace, fmt=fmt, block_tokens=block_tokens, limit=limit)
    except (KvtierError, ValueError) as exc:
        raise _fail(exc) from None
    replays = len(variants) * (1 + (len(capacity_sweep.capacities()) if capacity_sweep else 0))
    with Progress(TextColumn("[bold]sim"), BarColumn(), MofNCompleteColumn(), TextColumn("requests"),
                  TimeElapsedColumn(), console=err, transient=True) as bar:
        task = bar.add_task("", total=replays * len(loaded.requests))
        finished = [0]

        def progress(done: int) -> None:
            if done == len(loaded.requests):
                finished[0] += done
                bar.update(task, completed=finished[0])
            else:
                bar.update(task, completed=finished[0] + done)

        results = run_variants(loaded, base, variants, progress)
        points = run_sweep(loaded, base, variants, capacity_sweep, progress) if capacity_sweep else []
    doc = results[0].to_json()
    doc["variants"] = [{"policy": v.policy, "ttl_s": v.ttl_s, **_summary(r)} for v, r in zip(variants, results)]
    if points:
        doc["sweep"] = [p.to_json() for p in points]
    if plot:
        from ..sim.plot import plot_sim

        plot_sim(plot, variants, results, points, capacity_sweep.tier if capacity_sweep else None)
        err.print(f"wrote {plot}")
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
    else:
        _print_sim(loaded.source, variants, results, points)


def _summary(r: SimResult) -> dict:
    return {"physical_hit_rate": r.physical_hit_rate, "prefix_hit_rate": r.prefix_hit_rate,
            "token_hit_rate": r.token_hit_rate, "misses": dict(r.misses),
            "eviction_regret": r.eviction_regret, "gpu_seconds_saved": r.gpu_seconds_saved,
            "dollars": r.dollars()}


def _print_sim(source: str, variants: list[Variant], results: list[SimResult], points) -> None:
    first = results[0]
    cfg = first.config
    console = Console()
    console.print(f"[bold]{source}[/]", soft_wrap=True)
    console.print(f"logical hit rate {first.logical_hit_rate:.1%}: {first.requests:,} requests, "
                  f"{first.block_refs:,} block refs of {first.block_tokens} tokens "
                  f"({format_size(first.block_bytes)} of {cfg.model.name} KV each)")
    table = Table(title="tiers: " + " → ".join(f"{t.name} {format_size(t.capacity_bytes)}" for t in cfg.tiers))
    table.add_column("policy, first-tier window")
    for variant in variants:
        table.add_column(variant.label, justify="right")
    reasons = sorted({reason for r in results for reason in r.misses})
    rows = [
        ("physical hit rate", lambda r: f"{r.physical_hit_rate:.1%}"),
        ("prefix hit rate", lambda r: f"{r.prefix_hit_rate:.1%}"),
        ("token hit rate", lambda r: f"{r.token_hit_rate:.1%}"),
        *((f"hits: {t.name}", lambda r, n=t.name: f"{r.hits_by_tier[n]:,}") for t in cfg.tiers),
        *((f"misses: {reason}", lambda r, m=reason: f"{r.misses[m]:,}") for reason in reasons),
        ("eviction regret", lambda r: f"{r.eviction_regret:,}"),
        ("prefill tokens saved", lambda r: f"{r.hit_tokens:,}"),
        (f"GPU-seconds saved ({cfg.gpu.name})", lambda r: f"{r.gpu_seconds_saved:,.0f}"),
        ("input cost, USD", lambda r: f"{r.dollars()['total']:,.2f}"),
        ("saved vs no cache, USD", lambda r: f"{r.dollars()['saved']:,.2f}"),
    ]
    for label, cell in rows:
        table.add_row(label, *(cell(r) for r in results))
    console.print(table)
    console.print(f"no cache: ${first.dollars()['no_cache']:,.2f} for {first.input_tokens:,} input tokens")
    if points:
        sweep = Table(title="prefix hit rate vs capacity")
        sweep.add_column("capacity")
        for variant in variants:
            sweep.add_column(variant.label, justify="right")
        for cap in sorted({p.capacity_bytes for p in points}):
            row = {p.variant: p.result.prefix_hit_rate for p in points if p.capacity_bytes == cap}
            sweep.add_row(format_size(cap), *(f"{row[v]:.1%}" for v in variants))
        console.print(sweep)
