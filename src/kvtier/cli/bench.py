"""``kvtier bench``."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .. import native
from ..bench.disk import (DEFAULT_DISK_PAGE_SIZES, DiskBenchResult, DiskBenchSettings,
                          run_disk_bench)
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
    seconds: float = typer.Option(0.2, min=0.001, help="Seconds per measurement."),
    trials: int = typer.Option(5, min=1, help="Repetitions per measurement (best kept)."),
    metadata_ops: int = typer.Option(100_000, min=50, help="Calls per metadata figure."),
    disk: bool = typer.Option(True, "--disk/--no-disk", help="Also measure the NVMe disk tier."),
    disk_dir: Optional[str] = typer.Option(None, "--disk-dir",
                                           help="Directory on the drive to measure (default: a temp dir)."),
    disk_page_sizes: str = typer.Option(",".join(f"{s >> 10}KiB" for s in DEFAULT_DISK_PAGE_SIZES),
                                        "--disk-page-sizes", help="Disk page sizes (multiples of 4 KiB)."),
    disk_bytes: str = typer.Option("64MiB", "--disk-bytes", help="Bytes written and read per disk measurement."),
    disk_trials: int = typer.Option(5, min=1, help="Repetitions per disk measurement (best kept)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Also write the JSON here."),
) -> None:
    """Tier throughput beside its ceiling measured in the same run: host put/get vs memcpy,
    disk write-back/read vs raw O_DIRECT I/O (fio, else a native loop)."""
    try:
        settings = HostBenchSettings(page_sizes=_sizes(page_sizes), capacity_bytes=parse_size(capacity),
                                     seconds=seconds, trials=trials, metadata_ops=metadata_ops)
        disk_settings = DiskBenchSettings(directory=disk_dir, page_sizes=_sizes(disk_page_sizes),
                                          bytes_per_run=parse_size(disk_bytes), trials=disk_trials)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if not settings.page_sizes or min(settings.page_sizes) <= 0:
        raise typer.BadParameter("--page-sizes needs at least one positive size")
    with Progress(TextColumn("[bold]host tier"), BarColumn(), TextColumn("{task.description}"),
                  TimeElapsedColumn(), console=err, transient=True) as bar:
        task = bar.add_task("starting", total=len(settings.page_sizes) + 1)
        result = run_host_bench(settings, lambda step: bar.update(task, advance=1, description=step))
    doc = result.to_json()
    disk_result = None
    if disk:
        with Progress(TextColumn("[bold]disk tier"), BarColumn(), TextColumn("{task.description}"),
                      TimeElapsedColumn(), console=err, transient=True) as bar:
            steps = len(disk_settings.page_sizes) * len(disk_settings.batches)
            task = bar.add_task("starting", total=steps)
            disk_result = run_disk_bench(
                disk_settings, lambda step: bar.update(task, advance=1, description=step))
        doc["disk"] = disk_result.to_json()
    if output:
        with open(output, "w") as fh:
            json.dump(doc, fh, indent=2)
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
    else:
        _print_host_table(result)
        if disk_result is not None:
            _print_disk_table(disk_result)


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


def _print_disk_table(result: DiskBenchResult) -> None:
    mode = "O_DIRECT" if result.direct_io else "buffered (O_DIRECT refused here)"
    table = Table(title=f"disk tier · {mode} · io engine {result.io_engine} · {result.directory}",
                  caption=f"ceiling: raw O_DIRECT I/O of the same pages and queue depth in the same "
                          f"directory, same run ({result.ceiling_tool}); kvtier write = write-back "
                          f"(flush), read = batch_get_into from disk")
    table.add_column("GB/s and ratios")
    for row in result.results:
        table.add_column(f"{format_size(row.page_bytes)} ×{row.batch}", justify="right")
    rows = [
        ("write", lambda r: _gbs(r.write)),
        ("raw write", lambda r: _gbs(r.write_ceiling)),
        ("write / raw", lambda r: f"{r.write_ratio:.0%}"),
        ("read", lambda r: _gbs(r.read)),
        ("raw read", lambda r: _gbs(r.read_ceiling)),
        ("read / raw", lambda r: f"{r.read_ratio:.0%}"),
    ]
    for label, cell in rows:
        table.add_row(label, *(cell(row) for row in result.results))
    Console().print(table)
