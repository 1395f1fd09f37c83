"""Codec benchmark: what compression does to real KV pages, and to the disk tier end to end.

Two parts, each beside a ceiling measured in the same run:

* **Codec speed and ratio** (``CodecSpeed``), per codec (``none`` as the reference, ``zstd``,
  ``shuffle-zstd``) and dtype (float16, bfloat16), on the real KV pages shipped with kvtier
  (``kvtier.kvdata``): the compression ratio (raw / stored bytes, summed over the pages), and
  ``kvtier.codec.encode`` / ``decode_into`` throughput in raw page bytes per second on one
  thread. The ceiling is ``native.copy`` (libc ``memcpy``) of the same pages into a page-sized
  buffer. ``none`` has no throughput: the tier writes and reads its pages as they are.
* **Disk tier end to end** (``DiskCodecResult``), per codec (``none``, ``zstd``,
  ``shuffle-zstd``, ``auto``) on the float16 pages, batch 16: write = ``TieredStore.flush`` of
  host-resident pages, read = ``batch_get_into`` of pages only on disk (a reopened store,
  ``promote_on_read=False``), in raw page bytes per second, ``fsync="never"``: the same paths
  and settings as ``bench/disk.py``. The ceiling is raw O_DIRECT I/O of the same page size and
  queue depth in the same directory (fio when installed, else ``native.raw_io_bench``). A codec
  that shrinks pages moves fewer bytes than the ceiling does, so it may beat it.

Every trial runs each measurement once, in an order that rotates from trial to trial (so that
no codec always follows the disk's busiest moment); the best of each is kept.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import zstandard

from .. import native
from ..codec import CODEC_IDS, decode_into, encode
from ..config import MiB
from ..kvdata import kv_manifest, kv_pages
from .disk import raw_run, remove_path, store_run
from .host import _cpu_name

SPEED_CODECS = ("none", "zstd", "shuffle-zstd")
DISK_CODECS = ("none", "zstd", "shuffle-zstd", "auto")
DEFAULT_DTYPES = ("float16", "bfloat16")


@dataclass(frozen=True, slots=True)
class CodecBenchSettings:
    """What to measure.

    Args:
        directory: where the disk tiers and the raw-I/O file live (``None``: a temporary
            directory under ``$TMPDIR``, removed afterwards). Put it on the drive to measure.
        dtypes: KV page dtypes for the speed and ratio part (``kvtier.kvdata.kv_pages``).
        level: zstd level.
        trials: repetitions of every measurement, interleaved; the best of each is kept.
        min_seconds: the least time one speed measurement lasts (it repeats passes over all
            pages until then).
        disk: also measure the disk tier end to end.
        disk_dtype: dtype of the pages written to the disk tier.
        batch: pages per flush batch and per ``batch_get_into`` (the ceiling's queue depth).
        bytes_per_run: raw page bytes written and read per end-to-end measurement.
        use_fio: use fio for the disk ceiling when it is installed.
    """

    directory: str | None = None
    dtypes: tuple[str, ...] = DEFAULT_DTYPES
    level: int = 1
    trials: int = 5
    min_seconds: float = 0.1
    disk: bool = True
    disk_dtype: str = "float16"
    batch: int = 16
    bytes_per_run: int = 64 * MiB
    use_fio: bool = True

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ValueError(f"trials must be >= 1, got {self.trials}")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        if not self.min_seconds > 0:
            raise ValueError(f"min_seconds must be > 0, got {self.min_seconds}")
        if not 1 <= self.level <= 19:
            raise ValueError(f"level must be from 1 to 19, got {self.level}")
        if self.bytes_per_run <= 0:
            raise ValueError(f"bytes_per_run must be > 0, got {self.bytes_per_run}")


@dataclass(frozen=True, slots=True)
class CodecSpeed:
    """One codec on one dtype's pages: sizes in bytes, throughputs in raw bytes/s."""

    codec: str
    dtype: str
    raw_bytes: int
    stored_bytes: int
    compress: float | None    # None for ``none``: nothing to do
    decompress: float | None
    memcpy: float             # the ceiling: native.copy of the same pages, same run

    @property
    def ratio(self) -> float:
        return self.raw_bytes / self.stored_bytes

    @property
    def compress_ratio(self) -> float | None:
        return None if self.compress is None else self.compress / self.memcpy

    @property
    def decompress_ratio(self) -> float | None:
        return None if self.decompress is None else self.decompress / self.memcpy


@dataclass(frozen=True, slots=True)
class DiskCodecResult:
    """The disk tier with one codec: raw page bytes/s, and what the tier said it wrote."""

    codec: str
    write: float
    read: float
    ratio_written: float | None   # raw / stored bytes the tier wrote (its own count)
    codec_now: str                # what the tier picks for its next batch (auto's decision)


@dataclass(frozen=True, slots=True)
class DiskCodecBench:
    """End-to-end disk tier figures for every codec, beside raw O_DIRECT of the same pages."""

    dtype: str
    page_bytes: int
    batch: int
    pages: int
    write_ceiling: float
    read_ceiling: float
    ceiling_tool: str   # "fio" or "native loop"
    direct_io: bool     # False where the filesystem refused O_DIRECT
    io_engine: str
    directory: str
    results: list[DiskCodecResult] = field(default_factory=list)
    none_spread: float = 0.0  # 1 - median/best of none's own trials (the disk's noise), worst of write/read

    def result(self, codec: str) -> DiskCodecResult:
        return next(r for r in self.results if r.codec == codec)

    def vs_none(self, codec: str) -> tuple[float, float]:
        """(write, read) of ``codec`` over those of ``none`` in the same run."""
        row, none = self.result(codec), self.result("none")
        return row.write / none.write, row.read / none.read

    def vs_ceiling(self, codec: str) -> tuple[float, float]:
        """(write, read) of ``codec`` over raw O_DIRECT of the same raw bytes, same run."""
        row = self.result(codec)
        return row.write / self.write_ceiling, row.read / self.read_ceiling

    @property
    def auto_at_least_none(self) -> bool:
        """Whether ``auto`` wrote and read at least as fast as ``none`` (best trials, same run),
        within the disk's own noise (``none_spread``: how far ``none``'s median trial fell
        below its best)."""
        return min(self.vs_none("auto")) >= 1.0 - self.none_spread


@dataclass(frozen=True, slots=True)
class CodecBenchResult:
    settings: CodecBenchSettings
    page_bytes: int
    pages_per_dtype: int
    model: str
    speeds: list[CodecSpeed] = field(default_factory=list)
    disk: DiskCodecBench | None = None
    zstd: str = f"python-zstandard {zstandard.__version__} ({zstandard.backend})"
    native_backend: str = native.backend
    cpu: str = ""

    def to_json(self) -> dict:
        doc = asdict(self)
        for row, speed in zip(doc["speeds"], self.speeds):
            row.update(ratio=speed.ratio, compress_ratio=speed.compress_ratio,
                       decompress_ratio=speed.decompress_ratio)
        if self.disk is not None:
            for row, result in zip(doc["disk"]["results"], self.disk.results):
                (row["write_vs_none"], row["read_vs_none"]) = self.disk.vs_none(result.codec)
                (row["write_ratio"], row["read_ratio"]) = self.disk.vs_ceiling(result.codec)
            doc["disk"]["auto_at_least_none"] = self.disk.auto_at_least_none
        return doc


def run_codec_bench(settings: CodecBenchSettings,
                    progress: Callable[[str], None] = lambda step: None) -> CodecBenchResult:
    """Measure codec speeds and ratios, then the disk tier per codec; ``progress`` is called
    once per finished step (``codec_bench_steps(settings)`` of them)."""
    manifest = kv_manifest()
    speeds: list[CodecSpeed] = []
    for dtype in settings.dtypes:
        speeds.extend(_speeds(kv_pages(dtype), dtype, settings))
        progress(f"codecs on {dtype}")
    disk = _disk(settings, progress) if settings.disk else None
    return CodecBenchResult(settings, manifest["page_bytes"], len(kv_pages(settings.disk_dtype)),
                            str(manifest.get("model", "")), speeds, disk, cpu=_cpu_name())


def codec_bench_steps(settings: CodecBenchSettings) -> int:
    """How many times ``run_codec_bench`` calls ``progress``."""
    return len(settings.dtypes) + (settings.trials if settings.disk else 0)


# -- codec speed ---------------------------------------------------------------------------------
def _rate(one_pass: Callable[[], None], nbytes: int, min_seconds: float) -> float:
    """Bytes/s of ``one_pass`` (which handles ``nbytes``), repeated until ``min_seconds``."""
    passes = 0
    start = time.perf_counter()
    while True:
        one_pass()
        passes += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return passes * nbytes / elapsed


def _speeds(raw_pages: list[bytes], dtype: str, s: CodecBenchSettings) -> list[CodecSpeed]:
    pages = [memoryview(native.alloc_bytearray(len(p))) for p in raw_pages]
    for page, raw in zip(pages, raw_pages):
        page[:] = raw
    out = memoryview(native.alloc_bytearray(pages[0].nbytes))
    raw_bytes = sum(p.nbytes for p in pages)
    payloads: dict[str, list[memoryview]] = {}
    for name in SPEED_CODECS:
        codec = CODEC_IDS[name]
        payloads[name] = [memoryview(encode(codec, p, level=s.level)) for p in pages]
        for payload, page in zip(payloads[name], pages):  # lossless, or the figures mean nothing
            decode_into(codec, payload, out)
            if out != page:
                raise RuntimeError(f"codec bench: {name} did not round-trip a {dtype} page")

    def copy_pass() -> None:
        for page in pages:
            native.copy(out, page)

    def compress_pass(codec: int) -> Callable[[], None]:
        def one_pass() -> None:
            for page in pages:
                encode(codec, page, level=s.level)
        return one_pass

    def decompress_pass(codec: int, blobs: list[memoryview]) -> Callable[[], None]:
        def one_pass() -> None:
            for blob in blobs:
                decode_into(codec, blob, out)
        return one_pass

    jobs: dict[str, Callable[[], None]] = {"memcpy": copy_pass}
    for name in SPEED_CODECS[1:]:
        jobs[f"{name} compress"] = compress_pass(CODEC_IDS[name])
        jobs[f"{name} decompress"] = decompress_pass(CODEC_IDS[name], payloads[name])
    best = dict.fromkeys(jobs, 0.0)
    order = list(jobs)
    for trial in range(s.trials):
        shift = trial % len(order)
        for name in order[shift:] + order[:shift]:
            best[name] = max(best[name], _rate(jobs[name], raw_bytes, s.min_seconds))
    rows = []
    for name in SPEED_CODECS:
        stored = sum(p.nbytes for p in payloads[name])
        rows.append(CodecSpeed(name, dtype, raw_bytes, stored, best.get(f"{name} compress"),
                               best.get(f"{name} decompress"), best["memcpy"]))
    return rows


# -- disk tier end to end ------------------------------------------------------------------------
def _disk(s: CodecBenchSettings, progress: Callable[[str], None]) -> DiskCodecBench:
    pages = kv_pages(s.disk_dtype)
    page_bytes = len(pages[0])
    count = max(s.batch, s.bytes_per_run // page_bytes)
    count -= count % s.batch
    owned = s.directory is None
    root = Path(tempfile.mkdtemp(prefix="kvtier-codec-bench-") if owned else s.directory)
    root.mkdir(parents=True, exist_ok=True)
    fio = shutil.which("fio") if s.use_fio else None
    tiers = {name: root / f"tier-{name}" for name in DISK_CODECS}
    raw = root / "raw.dat"
    leftovers = [*tiers.values(), raw]
    write = dict.fromkeys(DISK_CODECS, 0.0)
    read = dict.fromkeys(DISK_CODECS, 0.0)
    none_trials: dict[str, list[float]] = {"write": [], "read": []}
    last: dict[str, dict[str, object]] = {}  # each codec's disk stats from its latest trial
    ceiling = {"write": 0.0, "read": 0.0}
    direct_io = True
    steps = [*DISK_CODECS, "raw"]
    try:
        for leftover in leftovers:
            remove_path(leftover)
        for trial in range(s.trials):
            shift = trial % len(steps)
            for step in steps[shift:] + steps[:shift]:
                if step == "raw":
                    for kind in ceiling:
                        ceiling[kind] = max(ceiling[kind], raw_run(fio, raw, page_bytes, s.batch, count,
                                                                   write=kind == "write"))
                    continue
                run = store_run(tiers[step], pages, s.batch, count, codec=step)
                direct_io = direct_io and run.direct_io
                write[step], read[step] = max(write[step], run.write), max(read[step], run.read)
                if step == "none":
                    none_trials["write"].append(run.write)
                    none_trials["read"].append(run.read)
                last[step] = run.disk_stats
            progress(f"disk tier, trial {trial + 1} of {s.trials}")
    finally:
        for leftover in leftovers:
            remove_path(leftover)
        if owned:
            shutil.rmtree(root, ignore_errors=True)
    results = [DiskCodecResult(name, write[name], read[name], last[name]["codec_ratio_written"],
                               str(last[name]["codec_now"])) for name in DISK_CODECS]
    return DiskCodecBench(s.disk_dtype, page_bytes, s.batch, count, ceiling["write"], ceiling["read"],
                          "fio" if fio else "native loop", direct_io, native.io_engine(),
                          str(root), results,
                          max(1 - statistics.median(v) / max(v) for v in none_trials.values()))
