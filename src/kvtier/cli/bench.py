"""``kvtier bench``."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .. import native
from ..bench.host import DEFAULT_PAGE_SIZES, HostBenchResult, HostBenchSettings, run_host_bench
from ..config import format_size, parse_size

err = Console(stderr=True)


def _sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(parse_size(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def bench(
    page_sizes: str = typer.Option(",".join(f"{s >> 10}KiB" for s in DEFAULT_PAGE_SIZES),
                                   "--page-sizes", help="Comma-separated page sizes."),
    capacity: str = typer.Option("256MiB", help="Host arena size (the workload overfills it 2x)."),
    seconds: float = typer.Option(0.25, min=0.001, help="Seconds per measurement."),
    trials: int = typer.Option(5, min=1, help="Repetitions per measurement (best kept)."),
    metadata_ops: int = typer.Option(100_000, min=50, help="Calls per metadata figure."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Also write the JSON here."),
) -> None:
    """Host-tier put/get throughput per page size, beside memcpy measured in the same run."""
    try:
        settings = HostBenchSettings(page_sizes=_sizes(page_sizes), capacity_bytes=parse_size(capacity),
                                     seconds=seconds, trials=trials, metadata_ops=metadata_ops)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if not settings.page_sizes or min(settings.page_sizes) <= 0:
        raise typer.BadParameter("--page-sizes needs at least one positive size")
    with Progress(TextColumn("[bold]host tier"), BarColumn(), TextColumn("{task.description}"),
                  TimeElapsedColumn(), console=err, transient=True) as bar:
        task = bar.add_task("starting", total=len(settings.page_sizes) + 1)
        result = run_host_bench(settings, lambda step: bar.update(task, advance=1, description=step))
    doc = result.to_json()
    if output:
        with open(output, "w") as fh:
            json.dump(doc, fh, indent=2)
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
    else:
        _print_host_table(result)


def _gbs(value: float) -> str:
    return f"{value / 1e9:.2f}"


def _print_host_table(result: HostBenchResult) -> None:
    table = Table(title=f"host tier · {format_size(result.settings.capacity_bytes)} arena · "
                        f"native backend: {result.native_backend} · {result.cpu}",
                  caption="memcpy: the ceiling, raw copies over the same memory, same run")
    table.add_column("GB/s and ratios")
    for page in result.pages:
        table.add_column(format_size(page.page_bytes), justify="right")
    rows = [
        ("put", lambda p: _gbs(p.put)),
        ("memcpy into arena", lambda p: _gbs(p.put_ceiling)),
        ("put / memcpy", lambda p: f"{p.put_ratio:.0%}"),
        ("get_into", lambda p: _gbs(p.get_into)),
        ("get (allocates)", lambda p: _gbs(p.get)),
        ("memcpy out of arena", lambda p: _gbs(p.get_ceiling)),
        ("get_into / memcpy", lambda p: f"{p.get_into_ratio:.0%}"),
        ("get / memcpy", lambda p: f"{p.get_ratio:.0%}"),
        ("batch_put ×16", lambda p: _gbs(p.batch_put)),
        ("batch_put ×16 / memcpy", lambda p: f"{p.batch_put_ratio:.0%}"),
        ("batch_get_into ×16", lambda p: _gbs(p.batch_get_into)),
        ("batch_get_into ×16 / memcpy", lambda p: f"{p.batch_get_into_ratio:.0%}"),
    ]
    for label, cell in rows:
        table.add_row(label, *(cell(page) for page in result.pages))
    console = Console()
    console.print(table)
    meta = result.metadata
    if meta is not None:
        console.print(
            f"metadata, single thread, 64 B pages: contains {meta.contains_ops_s / 1e3:,.0f}k ops/s · "
            f"put at a full tier {meta.put_ops_s / 1e3:,.0f}k ops/s · get_into {meta.get_into_ops_s / 1e3:,.0f}k "
            f"ops/s · lookup_prefix of {meta.lookup_prefix_keys} keys {meta.lookup_prefix_us:.0f} µs"
        )
    if native.fallback_reason:
        err.print(f"[yellow]native extension not used: {native.fallback_reason}")
