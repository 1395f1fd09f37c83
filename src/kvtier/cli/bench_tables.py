"""The result tables of ``kvtier bench --micro``, ``--codec``, ``--remote`` and ``--sglang``
(rich tables on stdout; notes on stderr)."""

from __future__ import annotations

from typing import Any, Callable

from rich.console import Console
from rich.table import Table

from .. import native
from ..bench.codec import CodecBenchResult
from ..bench.disk import DiskBenchResult
from ..bench.host import HostBenchResult
from ..bench.remote import RemoteBenchResult
from ..bench.sglang import SGLangBenchResult
from ..config import format_size

err = Console(stderr=True)


def _column_table(title: str, caption: str, corner: str, headers: list[tuple[str, Any]],
                  rows: list[tuple[str, Callable[[Any], str]]], sections: tuple[str, ...] = ()) -> Table:
    """One column per measured item (``headers``: its title and the item), one row per
    ``(label, cell(item))``; a section ends after each label ending with one of ``sections``."""
    table = Table(title=title, caption=caption)
    table.add_column(corner)
    for header, _ in headers:
        table.add_column(header, justify="right")
    for label, cell in rows:
        table.add_row(label, *(cell(item) for _, item in headers),
                      end_section=bool(sections) and label.endswith(sections))
    return table


def _gbs(value: float) -> str:
    return f"{value / 1e9:.2f}"


def print_host_table(result: HostBenchResult) -> None:
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
    console = Console()
    console.print(_column_table(
        f"host tier · {format_size(result.settings.capacity_bytes)} arena · native backend: "
        f"{result.native_backend} · {result.cpu}",
        "memcpy: the ceiling, raw copies over the same memory, same run", "GB/s and ratios",
        [(format_size(page.page_bytes), page) for page in result.pages], rows))
    meta = result.metadata
    if meta is not None:
        console.print(
            f"metadata, single thread, 64 B pages: contains {meta.contains_ops_s / 1e3:,.0f}k ops/s · "
            f"put at a full tier {meta.put_ops_s / 1e3:,.0f}k ops/s · get_into {meta.get_into_ops_s / 1e3:,.0f}k "
            f"ops/s · lookup_prefix of {meta.lookup_prefix_keys} keys {meta.lookup_prefix_us:.0f} µs"
        )
    if native.fallback_reason:
        err.print(f"[yellow]native extension not used: {native.fallback_reason}")


def print_disk_table(result: DiskBenchResult) -> None:
    mode = "O_DIRECT" if result.direct_io else "buffered (O_DIRECT refused here)"
    rows = [
        ("write", lambda r: _gbs(r.write)),
        ("raw write", lambda r: _gbs(r.write_ceiling)),
        ("write / raw", lambda r: f"{r.write_ratio:.0%}"),
        ("read", lambda r: _gbs(r.read)),
        ("raw read", lambda r: _gbs(r.read_ceiling)),
        ("read / raw", lambda r: f"{r.read_ratio:.0%}"),
    ]
    Console().print(_column_table(
        f"disk tier · {mode} · io engine {result.io_engine} · {result.directory}",
        f"ceiling: raw O_DIRECT I/O of the same pages and queue depth in the same directory, same "
        f"run ({result.ceiling_tool}); kvtier write = write-back (flush), read = batch_get_into "
        f"from disk", "GB/s and ratios",
        [(f"{format_size(row.page_bytes)} ×{row.batch}", row) for row in result.results], rows))


def _mbs(value: float | None) -> str:
    return "—" if value is None else f"{value / 1e6:,.0f}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def print_codec_tables(result: CodecBenchResult) -> None:
    console = Console()
    table = Table(title=f"codecs · real KV pages ({result.pages_per_dtype} × "
                        f"{format_size(result.page_bytes)} per dtype) · zstd level "
                        f"{result.settings.level} · {result.zstd} · {result.cpu}",
                  caption=f"MB/s of raw page bytes, one thread, best of {result.settings.trials}; "
                          "memcpy: the ceiling, native.copy of the same pages, same run; none "
                          "stores pages as they are")
    for name in ("dtype", "codec"):
        table.add_column(name, no_wrap=True, min_width=len("shuffle-zstd") if name == "codec" else 8)
    for name in ("ratio", "compress MB/s", "/ memcpy", "decompress MB/s", "/ memcpy"):
        table.add_column(name, justify="right")
    for dtype in result.settings.dtypes:
        rows = [row for row in result.speeds if row.dtype == dtype]
        for row in rows:
            table.add_row(row.dtype, row.codec, f"{row.ratio:.3f}", _mbs(row.compress),
                          _pct(row.compress_ratio), _mbs(row.decompress), _pct(row.decompress_ratio))
        table.add_row(dtype, "memcpy", "", _mbs(rows[0].memcpy), "", _mbs(rows[0].memcpy), "",
                      end_section=True)
    console.print(table)
    disk = result.disk
    if disk is None:
        return
    mode = "O_DIRECT" if disk.direct_io else "buffered (O_DIRECT refused here)"
    table = Table(title=f"disk tier per codec · {disk.pages} {disk.dtype} KV pages of "
                        f"{format_size(disk.page_bytes)}, batch {disk.batch} · {mode} · io engine "
                        f"{disk.io_engine} · {disk.directory}",
                  caption=f"MB/s of raw page bytes, best of {result.settings.trials}; raw: O_DIRECT "
                          f"I/O of the same raw bytes and queue depth in the same directory, same run "
                          f"({disk.ceiling_tool}); write = write-back (flush), read = batch_get_into "
                          f"from disk; ratio: raw / stored bytes the tier wrote")
    table.add_column("codec", no_wrap=True, min_width=len("shuffle-zstd"))
    for name in ("ratio", "write MB/s", "/ none", "/ raw", "read MB/s", "/ none", "/ raw"):
        table.add_column(name, justify="right")
    for row in disk.results:
        write_none, read_none = disk.vs_none(row.codec)
        write_raw, read_raw = disk.vs_ceiling(row.codec)
        ratio = "—" if row.ratio_written is None else f"{row.ratio_written:.3f}"
        table.add_row(row.codec, ratio, _mbs(row.write), _pct(write_none), _pct(write_raw),
                      _mbs(row.read), _pct(read_none), _pct(read_raw))
    table.add_row("raw", "", _mbs(disk.write_ceiling), "", "", _mbs(disk.read_ceiling), "", "")
    console.print(table)
    auto = disk.result("auto")
    write_none, read_none = disk.vs_none("auto")
    verdict = "at least as fast as" if disk.auto_at_least_none else "slower than"
    console.print(f"auto vs none, same run: write {write_none:.0%}, read {read_none:.0%} (none's own "
                  f"trial spread: {disk.none_spread:.0%}): auto was {verdict} none within that "
                  f"noise (it picks {auto.codec_now} next)")


def print_remote_table(result: RemoteBenchResult) -> None:
    settings = result.settings
    tool = (f"{result.redis_benchmark} -c 1 -P {settings.batch}, one run per size"
            if result.redis_benchmark else "redis-benchmark not run")
    rows = []
    for side, op, call, command in ((0, "write", "put_many", "SET"), (1, "read", "get_many", "GET")):
        rows.append((f"{op} ({call})", lambda r, op=op: _mbs(getattr(r, op))))
        for ceiling, name, short in (("raw", "raw redis-py", "raw"),
                                     ("default", "redis-py defaults", "defaults"),
                                     ("bench", "redis-benchmark", "redis-benchmark")):
            rows += [(f"{name} {command}", lambda r, f=f"{ceiling}_{op}": _mbs(getattr(r, f))),
                     (f"{op} / {short}", lambda r, c=ceiling, i=side: _pct(r.vs(c)[i]))]
    Console().print(_column_table(
        f"remote tier · {result.server} at {result.url} · {result.client} · {result.cpu}",
        f"MB/s of raw page bytes, median of {settings.trials} trials after a warm-up; kvtier: "
        f"put_many / get_many into caller buffers, codec none; raw (the ceiling): redis-py "
        f"pipelined SET / GET of the same bytes, same batch, same server, same run, on a client "
        f"set up as the tier's (packer, read size); defaults: the same on a default redis-py "
        f"client; {tool}", "MB/s and ratios",
        [(f"{format_size(row.page_bytes)} ×{row.batch}", row) for row in result.results], rows,
        sections=("write / redis-benchmark",)))
    if result.redis_benchmark_note:
        err.print(f"[yellow]{result.redis_benchmark_note}")


def print_sglang_table(result: SGLangBenchResult) -> None:
    settings = result.settings
    mode = "O_DIRECT" if result.direct_io else "buffered (O_DIRECT refused here)"
    rows = []
    for measure, label in (("write", "durable write"), ("cold_read", "cold read"),
                           ("warm_read", "warm read")):
        rows += [(f"{label}: kvtier", lambda r, m=measure: _mbs(getattr(r, f"kvtier_{m}"))),
                 (f"{label}: HiCacheFile", lambda r, m=measure: _mbs(getattr(r, f"file_{m}"))),
                 (f"{label}: kvtier / HiCacheFile", lambda r, m=measure: f"{r.ratio(m):.2f}×")]
        if measure != "warm_read":
            rows += [(f"{label}: raw O_DIRECT", lambda r, m=measure: _mbs(getattr(r, f"raw_{m}"))),
                     (f"{label}: kvtier / raw", lambda r, m=measure: _pct(r.ratio(m, "raw")))]
    rows.append(("pages verified byte-exact", lambda r: " / ".join(
        str(r.verified_pages[name]) for name in ("kvtier", "hicache_file"))))
    Console().print(_column_table(
        f"SGLang {result.sglang} HiCache L3 · kvtier vs HiCacheFile · kvtier disk {mode}, io engine "
        f"{result.io_engine} · {result.directory} · {result.cpu} · load {result.load[0]:.2f} → "
        f"{result.load[1]:.2f}",
        f"MB/s of page bytes, median of {settings.trials} trials after a warm-up, {settings.batch} "
        f"pages per call, both backends on the same pages in the same directory; kvtier: "
        f"{result.paths['kvtier']}; HiCacheFile: {result.paths['hicache_file']}; write = backup "
        f"calls + os.sync(); cold = backend rebuilt, posix_fadvise(DONTNEED) on every file of "
        f"both; warm = read again (kvtier: from its host tier when the cold read promoted the "
        f"pages, else from the drive again; HiCacheFile: from the page cache); raw (the "
        f"ceiling): page-sized O_DIRECT transfers of the same bytes, {settings.batch} per "
        f"submission, same directory, same run; torch threads: {result.torch_threads}",
        "MB/s and ratios",
        [(f"{format_size(row.page_bytes)} ({row.page_tokens} tokens) ×{row.pages}", row)
         for row in result.results], rows,
        sections=("kvtier / raw", "warm read: kvtier / HiCacheFile")))
