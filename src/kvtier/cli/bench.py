"""``kvtier bench``."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

import redis
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from ..bench.codec import CodecBenchSettings, codec_bench_steps, run_codec_bench
from ..bench.disk import (DEFAULT_DISK_PAGE_SIZES, DiskBenchResult, DiskBenchSettings,
                          run_disk_bench)
from ..bench.host import DEFAULT_PAGE_SIZES, HostBenchResult, HostBenchSettings, run_host_bench
from ..bench.peers import (DEFAULT_PEERS_PAGE_SIZES, PEERS, PeersBenchSettings, peers_bench_steps,
                           run_peers_bench)
from ..bench.remote import (DEFAULT_REMOTE_PAGE_SIZES, RemoteBenchSettings, remote_bench_steps,
                            run_remote_bench)
from ..bench.sglang import (DEFAULT_SGLANG_PAGE_SIZES, SGLangBenchSettings, run_sglang_bench,
                            sglang_bench_steps)
from ..bench.workload import WorkloadSettings, run_workload, workload_steps
from ..config import format_size, parse_duration, parse_size
from ..errors import ConfigError, KvtierError
from ..bench.targets import check_targets
from .bench_tables import (err, print_codec_tables, print_disk_table, print_host_table,
                           print_remote_table, print_sglang_table)
from .bench_views import (plot_micro, plot_peers, plot_workload, print_peers, print_targets,
                          print_workload)


def _sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(parse_size(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _size_text(nbytes: int) -> str:
    return format_size(nbytes).replace(" ", "")


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
    codec: bool = typer.Option(False, "--codec",
                               help="Run only the codec benchmark: ratio and speed of each codec on "
                                    "real KV pages, and the disk tier end to end per codec."),
    codec_bytes: str = typer.Option("64MiB", "--codec-bytes",
                                    help="Raw page bytes written and read per end-to-end codec run."),
    codec_trials: int = typer.Option(5, min=1, help="Repetitions per codec measurement (best kept)."),
    remote: Optional[str] = typer.Option(None, "--remote", metavar="URL",
                                         help="Run only the Redis tier benchmark against this server "
                                              "(redis://host:port/db, rediss://..., unix://path): "
                                              "put_many/get_many beside a raw redis-py loop and "
                                              "redis-benchmark, same run."),
    remote_password: str = typer.Option("", "--remote-password", envvar="KVTIER_REMOTE_PASSWORD",
                                        show_default=False, help="Redis AUTH password."),
    remote_sizes: str = typer.Option(",".join(_size_text(s) for s in DEFAULT_REMOTE_PAGE_SIZES),
                                     "--remote-sizes", help="Comma-separated remote page sizes."),
    remote_batch: int = typer.Option(16, "--remote-batch", min=1, help="Pages per pipelined call."),
    remote_trials: int = typer.Option(5, "--remote-trials", min=1,
                                      help="Remote trials after one warm-up (median kept)."),
    remote_bytes: str = typer.Option("64MiB", "--remote-bytes",
                                     help="Page bytes written and read per remote trial and side."),
    sglang: bool = typer.Option(False, "--sglang",
                                help="Run only the SGLang HiCache L3 benchmark: kvtier's backend beside "
                                     "SGLang's HiCacheFile, same pages, same directory, same run "
                                     "(needs torch and SGLang's storage interface)."),
    sglang_dir: Optional[str] = typer.Option(None, "--sglang-dir",
                                             help="Directory on the drive to measure (default: a temp dir)."),
    sglang_sizes: str = typer.Option(",".join(_size_text(s) for s in DEFAULT_SGLANG_PAGE_SIZES),
                                     "--sglang-sizes", help="SGLang page sizes (K+V, all layers)."),
    sglang_bytes: str = typer.Option("64MiB", "--sglang-bytes",
                                     help="Page bytes written and read per SGLang trial and backend."),
    sglang_trials: int = typer.Option(5, "--sglang-trials", min=1,
                                      help="SGLang trials after one warm-up (median kept)."),
    peers: bool = typer.Option(False, "--peers",
                               help="Run only the peers benchmark: the same pages through LMCache's "
                                    "LocalCPUBackend / LocalDiskBackend and SGLang's HiCacheFile beside "
                                    "kvtier (durable writes, cold and warm reads; LMCache from "
                                    "benchmarks/peers/setup.sh's virtualenv, skipped without it)."),
    peers_dir: Optional[str] = typer.Option(None, "--peers-dir",
                                            help="Directory on the drive to measure (default: a temp dir)."),
    peers_sizes: str = typer.Option(",".join(_size_text(s) for s in DEFAULT_PEERS_PAGE_SIZES),
                                    "--peers-sizes", help="Peer page sizes (K+V, all layers; whole tokens)."),
    peers_bytes: str = typer.Option("64MiB", "--peers-bytes",
                                    help="Page bytes written and read per peer trial and side."),
    peers_trials: int = typer.Option(5, "--peers-trials", min=1,
                                     help="Peer trials after one warm-up (median kept)."),
    peers_only: str = typer.Option(",".join(PEERS), "--peers-only",
                                   help="Which peers to run (comma-separated)."),
    all_: bool = typer.Option(False, "--all",
                              help="The whole showcase in one run: the workload, --micro (host and "
                                   "disk beside their ceilings) and --peers, then the targets "
                                   "(host ≥ 90 % of memcpy, disk ≥ 85 % of raw O_DIRECT, kvtier "
                                   "ahead of every peer). Plots: FILE.png, FILE-micro.png, "
                                   "FILE-peers.png (default bench*.png)."),
    micro: bool = typer.Option(False, "--micro",
                               help="Per-tier put/get throughput beside each tier's ceiling (host "
                                    "vs memcpy, disk vs raw O_DIRECT) instead of the workload."),
    model: str = typer.Option("llama-3-8b", "--model",
                              help="Workload: model preset (kvtier size); page = its KV bytes per "
                                   "token × --block-tokens."),
    prefill_gpu: str = typer.Option("h100", "--prefill-gpu",
                                    help="Workload: GPU preset whose modelled prefill is the recompute option."),
    prefill_tps: Optional[float] = typer.Option(None, "--prefill-tps", min=1e-9,
                                                help="Workload: prefill tokens/s (overrides --prefill-gpu)."),
    block_tokens: int = typer.Option(256, "--block-tokens", min=1, help="Workload: tokens per page."),
    page_bytes: Optional[str] = typer.Option(None, "--page-bytes",
                                             help="Workload: bytes per page (default: from --model)."),
    sessions: int = typer.Option(24, "--sessions", min=1, help="Workload: chat sessions."),
    turns: int = typer.Option(4, "--turns", min=1, help="Workload: turns per session."),
    trace: Optional[str] = typer.Option(None, "--trace",
                                        help="Workload: replay this trace (e.g. Mooncake jsonl) instead of sessions."),
    requests: Optional[int] = typer.Option(None, "--requests", min=1,
                                           help="Workload: replay only the trace's first N requests."),
    host_capacity: str = typer.Option("1GiB", "--host-capacity", help="Workload: host tier size."),
    disk_capacity: str = typer.Option("4GiB", "--disk-capacity", help="Workload: disk tier size."),
    ttl: str = typer.Option("5m", "--ttl", help="Workload: cache window in virtual time ('none': no expiry)."),
    restore_tokens: str = typer.Option("1024,4096,16384", "--restore-tokens",
                                       help="Workload: prefix lengths timed restore vs recompute."),
    plot: Optional[str] = typer.Option(None, "--plot", metavar="FILE.png",
                                       help="Write a plot here (workload default: bench.png; '' for none)."),
    gpu: bool = typer.Option(False, "--gpu",
                             help="Run only the GPU benchmark: D2H/H2D through the store vs pinned "
                                  "cudaMemcpyAsync, paged gather/scatter vs device memcpy (needs CUDA)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Also write the JSON here."),
) -> None:
    """Tier throughput beside its ceiling measured in the same run: host put/get vs memcpy,
    disk write-back/read vs raw O_DIRECT I/O (fio, else a native loop). With --codec, only the
    codec benchmark: compression ratio and speed vs memcpy, disk tier per codec vs O_DIRECT
    (--no-disk skips that part). With --remote URL, only the Redis tier: put_many/get_many MB/s
    vs a raw redis-py SET/GET loop and redis-benchmark on the same server. With --sglang, only
    SGLang's HiCache L3: kvtier's backend vs HiCacheFile, durable writes and cold/warm reads.
    With --peers, only the peers: LMCache's CPU and disk backends and SGLang's HiCacheFile
    beside kvtier on the same pages. With --all, the workload, --micro and --peers in one run,
    then whether each target is met."""
    if gpu:
        _gpu_bench(trials, as_json, output)
        return
    if (remote is not None) + codec + sglang + peers + all_ > 1:
        raise typer.BadParameter("separate benchmarks: give one of --remote, --codec, --sglang, "
                                 "--peers, --all")
    workload = WorkloadCli(model, prefill_gpu, prefill_tps, block_tokens, page_bytes, sessions, turns,
                           trace, requests, host_capacity, disk_capacity, ttl, restore_tokens, disk_dir)
    if all_:
        host_settings, disk_settings = _micro_settings(page_sizes, capacity, seconds, trials,
                                                       metadata_ops, disk_dir, disk_page_sizes,
                                                       disk_bytes, disk_trials)
        _all_bench(workload, host_settings, disk_settings,
                   _peers_settings(peers_dir, peers_sizes, peers_bytes, peers_trials, peers_only),
                   plot, as_json, output)
        return
    if peers:
        _peers_bench(_peers_settings(peers_dir, peers_sizes, peers_bytes, peers_trials, peers_only),
                     plot, as_json, output)
        return
    if sglang:
        _sglang_bench(sglang_dir, sglang_sizes, sglang_bytes, sglang_trials, as_json, output)
        return
    if remote is not None:
        _remote_bench(remote, remote_password, remote_sizes, remote_batch, remote_trials,
                      remote_bytes, as_json, output)
        return
    if codec:
        _codec_bench(disk_dir, codec_bytes, codec_trials, disk, as_json, output)
        return
    if not micro:
        _workload_bench(workload, plot, as_json, output)
        return
    settings, disk_settings = _micro_settings(page_sizes, capacity, seconds, trials, metadata_ops,
                                              disk_dir, disk_page_sizes, disk_bytes, disk_trials)
    result, disk_result = _run_micro(settings, disk_settings if disk else None)
    doc = _micro_doc(result, disk_result)
    if _emit(doc, as_json, output):
        print_host_table(result)
        if disk_result is not None:
            print_disk_table(disk_result)
    if plot:
        plot_micro(result, disk_result, plot)


def _micro_settings(page_sizes: str, capacity: str, seconds: float, trials: int, metadata_ops: int,
                    disk_dir: Optional[str], disk_page_sizes: str, disk_bytes: str,
                    disk_trials: int) -> tuple[HostBenchSettings, DiskBenchSettings]:
    try:
        settings = HostBenchSettings(page_sizes=_sizes(page_sizes), capacity_bytes=parse_size(capacity),
                                     seconds=seconds, trials=trials, metadata_ops=metadata_ops)
        disk_settings = DiskBenchSettings(directory=disk_dir, page_sizes=_sizes(disk_page_sizes),
                                          bytes_per_run=parse_size(disk_bytes), trials=disk_trials)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if not settings.page_sizes or min(settings.page_sizes) <= 0:
        raise typer.BadParameter("--page-sizes needs at least one positive size")
    return settings, disk_settings


def _run_micro(settings: HostBenchSettings, disk_settings: DiskBenchSettings | None,
               ) -> tuple[HostBenchResult, DiskBenchResult | None]:
    result = _with_progress("host tier", len(settings.page_sizes) + 1, run_host_bench, settings)
    if disk_settings is None:
        return result, None
    steps = len(disk_settings.page_sizes) * len(disk_settings.batches)
    return result, _with_progress("disk tier", steps, run_disk_bench, disk_settings)


def _micro_doc(result: HostBenchResult, disk_result: DiskBenchResult | None) -> dict:
    doc = result.to_json()
    if disk_result is not None:
        doc["disk"] = disk_result.to_json()
    return doc


def _all_bench(workload: WorkloadCli, host_settings: HostBenchSettings,
               disk_settings: DiskBenchSettings, peers_settings: PeersBenchSettings,
               plot: Optional[str], as_json: bool, output: Optional[str]) -> None:
    """``--all``: every part in one run, one JSON document, then the targets."""
    settings = workload.settings()
    work = _with_progress("workload", workload_steps(settings), run_workload, settings)
    host, disk = _run_micro(host_settings, disk_settings)
    peers = _with_progress("peers", peers_bench_steps(peers_settings), run_peers_bench, peers_settings)
    doc = {"mode": "all", "workload": work.to_json(), "micro": _micro_doc(host, disk),
           "peers": peers.to_json()}
    targets = check_targets(doc)
    doc["targets"] = [target.to_json() for target in targets]
    plot = "bench.png" if plot is None else plot
    plots = []
    if plot:
        stem = plot[:-4] if plot.lower().endswith(".png") else plot
        plots = [plot, f"{stem}-micro.png", f"{stem}-peers.png"]
        plot_workload(work, plots[0])
        plot_micro(host, disk, plots[1])
        plot_peers(peers, plots[2])
    if _emit(doc, as_json, output):
        console = Console()
        print_workload(work, console)
        print_host_table(host)
        if disk is not None:
            print_disk_table(disk)
        print_peers(peers, console)
        print_targets(targets, console)
        if plots:
            console.print(f"plots: {', '.join(plots)}")
    for peer, why in peers.skipped.items():
        err.print(f"[yellow]{peer}: skipped ({why})")


def _gpu_bench(trials: int, as_json: bool, output: Optional[str]) -> None:
    from .. import gpu as kvgpu
    from ..bench.gpu import GpuBenchSettings, print_gpu_tables, run_gpu_bench

    why = kvgpu.status().reason
    if why is not None:
        err.print(f"[red]kvtier bench --gpu needs a usable CUDA device: {why}")
        raise typer.Exit(2)
    settings = GpuBenchSettings(trials=trials)
    result = _with_progress("gpu", len(settings.page_sizes) + 1, run_gpu_bench, settings)
    if _emit(result.to_json(), as_json, output):
        print_gpu_tables(result)


def _with_progress(label: str, steps: int, run: Callable[..., Any], settings: Any) -> Any:
    """``run(settings, progress)`` under a transient rich progress bar on stderr."""
    with Progress(TextColumn(f"[bold]{label}"), BarColumn(), TextColumn("{task.description}"),
                  TimeElapsedColumn(), console=err, transient=True) as bar:
        task = bar.add_task("starting", total=steps)
        return run(settings, lambda step: bar.update(task, advance=1, description=step))


def _emit(doc: dict, as_json: bool, output: Optional[str]) -> bool:
    """Write ``doc`` to ``output`` and/or print it as JSON; whether tables should be printed."""
    if output:
        with open(output, "w") as fh:
            json.dump(doc, fh, indent=2)
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
    return not as_json


@dataclass(frozen=True)
class WorkloadCli:
    """The workload options as given on the command line (parsed by ``settings``)."""

    model: str
    prefill_gpu: str
    prefill_tps: Optional[float]
    block_tokens: int
    page_bytes: Optional[str]
    sessions: int
    turns: int
    trace: Optional[str]
    requests: Optional[int]
    host_capacity: str
    disk_capacity: str
    ttl: str
    restore_tokens: str
    disk_dir: Optional[str]

    def settings(self) -> WorkloadSettings:
        try:
            ttl = None if self.ttl.strip().lower() in ("none", "0", "") else parse_duration(self.ttl)
            return WorkloadSettings(
                model=self.model, gpu=self.prefill_gpu, prefill_tokens_per_s=self.prefill_tps,
                block_tokens=self.block_tokens, sessions=self.sessions, turns=self.turns,
                page_bytes=None if self.page_bytes is None else parse_size(self.page_bytes),
                trace=self.trace, requests=self.requests, ttl_s=ttl,
                host_bytes=parse_size(self.host_capacity), disk_bytes=parse_size(self.disk_capacity),
                directory=self.disk_dir, restore_tokens=_sizes(self.restore_tokens))
        except (ValueError, KvtierError) as exc:
            raise typer.BadParameter(str(exc)) from None


def _workload_bench(cli: WorkloadCli, plot: Optional[str], as_json: bool, output: Optional[str]) -> None:
    settings = cli.settings()
    if settings.trace and not os.path.isfile(settings.trace):
        raise typer.BadParameter(f"--trace {settings.trace}: no such file")
    result = _with_progress("workload", workload_steps(settings), run_workload, settings)
    plot = "bench.png" if plot is None else plot
    if plot:
        plot_workload(result, plot)
    if _emit(result.to_json(), as_json, output):
        print_workload(result, Console())
        if plot:
            Console().print(f"plot: {plot}")


def _codec_bench(disk_dir: Optional[str], codec_bytes: str, trials: int, disk: bool,
                 as_json: bool, output: Optional[str]) -> None:
    try:
        settings = CodecBenchSettings(directory=disk_dir, bytes_per_run=parse_size(codec_bytes),
                                      trials=trials, disk=disk)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    result = _with_progress("codecs", codec_bench_steps(settings), run_codec_bench, settings)
    if _emit(result.to_json(), as_json, output):
        print_codec_tables(result)


def _remote_bench(url: str, password: str, sizes: str, batch: int, trials: int, nbytes: str,
                  as_json: bool, output: Optional[str]) -> None:
    try:
        settings = RemoteBenchSettings(url=url, password=password, page_sizes=_sizes(sizes),
                                       batch=batch, trials=trials, bytes_per_run=parse_size(nbytes))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    try:
        result = _with_progress("remote tier", remote_bench_steps(settings), run_remote_bench, settings)
    except ConfigError as exc:  # e.g. a URL that is not redis://, rediss:// or unix://
        raise typer.BadParameter(str(exc)) from None
    except (redis.RedisError, OSError, RuntimeError) as exc:  # unreachable, refused credentials, ...
        err.print(f"[red]remote bench failed: {exc}")
        raise typer.Exit(1) from None
    if _emit(result.to_json(), as_json, output):
        print_remote_table(result)


def _sglang_bench(directory: Optional[str], sizes: str, nbytes: str, trials: int,
                  as_json: bool, output: Optional[str]) -> None:
    try:
        settings = SGLangBenchSettings(directory=directory, page_sizes=_sizes(sizes),
                                       bytes_per_run=parse_size(nbytes), trials=trials)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    try:
        result = _with_progress("sglang hicache", sglang_bench_steps(settings), run_sglang_bench, settings)
    except ImportError as exc:  # no torch, or no SGLang storage interface
        err.print(f"[red]sglang bench needs torch and SGLang's storage interface: {exc}")
        raise typer.Exit(1) from None
    if _emit(result.to_json(), as_json, output):
        print_sglang_table(result)


def _peers_settings(directory: Optional[str], sizes: str, nbytes: str, trials: int,
                    only: str) -> PeersBenchSettings:
    try:
        return PeersBenchSettings(directory=directory, page_sizes=_sizes(sizes),
                                  bytes_per_run=parse_size(nbytes), trials=trials,
                                  peers=tuple(p.strip() for p in only.split(",") if p.strip()))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _peers_bench(settings: PeersBenchSettings, plot: Optional[str], as_json: bool,
                 output: Optional[str]) -> None:
    result = _with_progress("peers", peers_bench_steps(settings), run_peers_bench, settings)
    if plot:
        plot_peers(result, plot)
    if _emit(result.to_json(), as_json, output):
        print_peers(result, Console())
        if plot:
            Console().print(f"plot: {plot}")
    for peer, why in result.skipped.items():
        err.print(f"[yellow]{peer}: skipped ({why})")
