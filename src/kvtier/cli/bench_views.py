"""Views of ``kvtier bench`` results: the workload summary tables, and the plots of the
workload (default mode) and of ``--micro``."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ..bench.disk import DiskBenchResult
from ..bench.host import HostBenchResult
from ..bench.peers import MEASURES as PEER_MEASURES, PeersBenchResult
from ..bench.targets import Target
from ..bench.workload import WorkloadResult
from ..config import format_size


def print_workload(result: WorkloadResult, console: Console) -> None:
    """The summary: where each request page came from, what it saved, restore vs recompute."""
    pages = max(result.pages, 1)
    table = Table(title=f"workload · {result.source} · {result.model}, "
                        f"{format_size(result.page_bytes)} pages of {result.block_tokens} tokens")
    table.add_column("request pages", style="bold")
    table.add_column("pages", justify="right")
    table.add_column("share", justify="right")
    table.add_column("load time", justify="right")
    for tier in sorted(result.loaded):
        seconds = result.restore_s.get(tier, 0.0)
        table.add_row(f"loaded from {tier}", f"{result.loaded[tier]:,}",
                      f"{result.loaded[tier] / pages:.1%}", f"{seconds:.2f} s")
    table.add_row("recomputed", f"{result.recomputed:,}", f"{result.recomputed / pages:.1%}", "")
    table.add_row("  of them stored, recompute was faster", f"{result.declined:,}",
                  f"{result.declined / pages:.1%}", "")
    table.add_row("hit rate: physical (kvtier)", "", f"{result.hit_rate:.1%}", "")
    table.add_row("hit rate: logical (infinite cache)", "", f"{result.logical_hit_rate:.1%}", "")
    console.print(table)
    reasons = ", ".join(f"{name} {count}" for name, count in
                        sorted(result.stopped_by.items(), key=lambda item: -item[1]))
    saved = 1 - result.prefill_tokens / result.tokens if result.tokens else 0.0
    console.print(f"{result.requests:,} requests, {result.tokens:,} input tokens: {saved:.1%} not "
                  f"prefilled; modelled time to first token {result.modelled_ttft_s:.2f} s vs "
                  f"{result.baseline_ttft_s:.2f} s recomputing everything "
                  f"(prefill {result.prefill_tokens_per_s:,.0f} tokens/s)")
    console.print(f"first page a request could not load: {reasons or 'none'}; "
                  f"{result.verified_pages:,} loaded pages compared byte for byte")
    restore = Table(title="time to bring back a cached prefix (median) vs recomputing it")
    for name in ("tokens", "pages", "host", "disk", "recompute", "host ÷ recompute", "disk ÷ recompute"):
        restore.add_column(name, justify="right")
    for point in result.restore:
        recompute = point["recompute_s"]
        restore.add_row(f"{point['tokens']:,}", f"{point['pages']:,}", _ms(point["host_s"]),
                        _ms(point["disk_s"]), _ms(recompute), f"{point['host_s'] / recompute:.2f}×",
                        f"{point['disk_s'] / recompute:.2f}×")
    console.print(restore)
    console.print("host, disk: measured here (disk reads O_DIRECT, so cold); recompute: modelled "
                  "prefill on the GPU preset; below 1× restoring wins")


def _ms(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1e3:.1f} ms"


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_workload(result: WorkloadResult, path: str) -> None:
    """Two panels: restore vs recompute time by prefix length, and where request pages came from."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    tokens = [p["tokens"] for p in result.restore]
    for key, label, style in (("host_s", "host DRAM", "o-"), ("disk_s", "NVMe disk (cold)", "s-"),
                              ("recompute_s", f"recompute ({result.prefill_tokens_per_s:,.0f} tok/s)", "k--")):
        left.plot(tokens, [p[key] * 1e3 for p in result.restore], style, label=label)
    left.set(xscale="log", yscale="log", xlabel="prefix tokens", ylabel="ms",
             title="bring back a cached prefix vs recompute it")
    left.legend()
    names = [f"from {tier}" for tier in sorted(result.loaded)] + ["recomputed"]
    counts = [result.loaded[tier] for tier in sorted(result.loaded)] + [result.recomputed]
    right.bar(names, counts, color=["tab:blue", "tab:orange", "tab:green"][:len(names) - 1] + ["tab:gray"])
    right.set(ylabel="request pages", title=f"physical hit rate {result.hit_rate:.0%} "
                                            f"(logical {result.logical_hit_rate:.0%})")
    fig.suptitle(f"kvtier bench · {result.model}, {format_size(result.page_bytes)} pages · {result.source}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_micro(host: HostBenchResult, disk: DiskBenchResult | None, path: str) -> None:
    """Throughput vs page size per tier and operation, each tier's ceiling as a dashed line."""
    plt = _pyplot()
    panels = 2 if disk is not None and disk.results else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.2), squeeze=False)
    sizes = [p.page_bytes for p in host.pages]
    ax = axes[0][0]
    for values, label, style in (([p.put for p in host.pages], "put", "o-"),
                                 ([p.batch_put for p in host.pages], "batch_put ×16", "o:"),
                                 ([p.get_into for p in host.pages], "get_into", "s-"),
                                 ([p.put_ceiling for p in host.pages], "memcpy (ceiling)", "k--")):
        ax.plot(sizes, [v / 1e9 for v in values], style, label=label)
    ax.set(xscale="log", xlabel="page bytes", ylabel="GB/s", title="host DRAM tier")
    ax.legend()
    if panels == 2:
        ax = axes[0][1]
        for batch in sorted({r.batch for r in disk.results}):
            rows = [r for r in disk.results if r.batch == batch]
            x = [r.page_bytes for r in rows]
            ax.plot(x, [r.write / 1e9 for r in rows], "o-", label=f"write ×{batch}")
            ax.plot(x, [r.read / 1e9 for r in rows], "s-", label=f"read ×{batch}")
            ax.plot(x, [r.read_ceiling / 1e9 for r in rows], "k--", alpha=0.5,
                    label=f"raw O_DIRECT read ×{batch} ({disk.ceiling_tool})")
        ax.set(xscale="log", xlabel="page bytes", ylabel="GB/s", title="NVMe disk tier")
        ax.legend(fontsize=7)
    fig.suptitle("kvtier bench --micro: each tier beside its ceiling, same run")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_peers(result: PeersBenchResult, console: Console) -> None:
    """``--peers``: per peer and page size, kvtier and the peer in MB/s, and kvtier / peer."""
    settings = result.settings
    load = " → ".join(f"{value:.2f}" for value in (result.load[0], max(result.load), result.load[-1]))
    table = Table(title=f"peers · same pages, kvtier vs each · {result.directory} · {result.cpu} · "
                        f"load (start → max → end) {load}",
                  caption=f"MB/s of page bytes, median of {settings.trials} trials after a warm-up, "
                          f"{format_size(settings.bytes_per_run)} per trial and side, each side in a "
                          f"process of its own, one at a time; write = until on the drive "
                          f"(os.sync) for disk rows, put for DRAM rows; cold = page cache dropped "
                          f"(posix_fadvise DONTNEED); warm = read again; ×: kvtier / peer (above 1: "
                          f"kvtier ahead)")
    for name in ("peer", "page", "measure"):
        table.add_column(name, no_wrap=True)
    for name in ("kvtier", "peer", "×", "verified"):
        table.add_column(name, justify="right")
    for row in result.rows:
        measures = [m for m in PEER_MEASURES if row.kvtier[m] is not None or row.peer_rates[m] is not None]
        for at, measure in enumerate(measures):
            ratio = row.ratio(measure)
            mark = "" if ratio is None else ("green" if ratio >= 1 else "red")
            who = (_PEER_SHORT[row.peer] + ("" if row.skipped is None else " (skipped)")) if at == 0 \
                else (f"vs kvtier {_PEER_SHORT[row.kvtier_side]}" if at == 1 else "")
            what = {"write": "put", "warm_read": "get"}[measure] if row.peer == "lmcache_cpu" \
                else _PEER_MEASURE_NAMES[measure]
            table.add_row(who, f"{format_size(row.page_bytes)} ×{row.pages}" if at == 0 else "",
                          what, _peer_mbs(row.kvtier[measure]),
                          _peer_mbs(row.peer_rates[measure]),
                          "—" if ratio is None else f"[{mark}]{ratio:.2f}×[/{mark}]",
                          (f"{row.verified_pages['kvtier']} / {row.verified_pages['peer']}"
                           if at == 0 else ""), end_section=at == len(measures) - 1)
    console.print(table)
    for peer, why in result.skipped.items():
        console.print(f"{peer}: skipped ({why})")
    versions = ", ".join(f"{side} {version}" for side, version in result.versions.items())
    console.print(f"versions: {versions}")
    verdict = "ahead of every peer on every measured row" if result.kvtier_leads else \
        "behind on at least one row (red)"
    console.print(f"kvtier is {verdict}")


def print_targets(targets: list[Target], console: Console) -> None:
    """``--all``: each target's worst measured cell against its goal."""
    table = Table(title="targets · the worst measured cell of each",
                  caption="host: put / get_into, one and 16 pages per call, pages ≥ 256 KiB, vs "
                          "memcpy; disk: write-back writes and reads vs raw O_DIRECT, every page "
                          "size and batch; peers: kvtier / peer on every measured row")
    for name, justify in (("target", "left"), ("goal", "right"), ("worst", "right"),
                          ("where", "left"), ("cells under goal", "right"), ("met", "left")):
        table.add_column(name, justify=justify)
    for target in targets:
        percent = target.goal < 1
        show = (lambda v: f"{v:.0%}") if percent else (lambda v: f"{v:.2f}×")
        met = {None: "[yellow]not measured", True: "[green]yes", False: "[red]no"}[target.met]
        table.add_row(target.name, show(target.goal), "—" if target.worst is None else show(target.worst),
                      target.where, f"{target.below} / {target.cells}", met)
    console.print(table)


_PEER_SHORT = {"lmcache_cpu": "LMCache CPU", "lmcache_disk": "LMCache disk", "hicache_file": "HiCacheFile",
               "kvtier_host": "host", "kvtier_disk": "disk", "kvtier_sglang": "SGLang"}
_PEER_MEASURE_NAMES = {"write": "durable write", "cold_read": "cold read", "warm_read": "warm read"}


def _peer_mbs(value: float | None) -> str:
    return "—" if value is None else f"{value / 1e6:,.0f}"


def plot_peers(result: PeersBenchResult, path: str) -> None:
    """One panel per measure: grouped bars of kvtier and each peer per page size (a missing
    bar: the side has no such measure, or the peer was skipped)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(PEER_MEASURES), figsize=(5.2 * len(PEER_MEASURES), 4.4))
    rows = result.rows
    labels = [f"{_PEER_SHORT[r.peer]}\n{format_size(r.page_bytes)}" for r in rows]
    x = range(len(rows))
    for ax, measure in zip(axes, PEER_MEASURES):
        ours = [(r.kvtier[measure] or 0) / 1e9 for r in rows]
        theirs = [(r.peer_rates[measure] or 0) / 1e9 for r in rows]
        ax.bar([i - 0.2 for i in x], ours, 0.4, label="kvtier", color="tab:blue")
        ax.bar([i + 0.2 for i in x], theirs, 0.4, label="peer", color="tab:gray")
        ax.set_xticks(list(x), labels, fontsize=7)
        ax.set(ylabel="GB/s", title=_PEER_MEASURE_NAMES[measure] + " (DRAM rows: put / get)"
               if measure != "cold_read" else "cold read")
        ax.legend(fontsize=7)
    fig.suptitle(f"kvtier bench --peers · median of {result.settings.trials} trials · {result.cpu}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
