"""Disk-tier micro benchmark: write-back and read throughput beside raw O_DIRECT I/O.

For each page size and batch size, in the same directory and the same run:

* **kvtier write**: ``TieredStore.flush(batch_pages=batch)`` of pages held in the host tier,
  the write-back path (checksum, page header, O_DIRECT batch write, LMDB commit per batch);
* **kvtier read**: ``batch_get_into`` of pages that are only on disk (a reopened store,
  ``promote_on_read=False``) into aligned buffers: lock, lookup, O_DIRECT batch read, header
  and checksum verification;
* **ceiling**: the same bytes as raw O_DIRECT transfers of the same size, in batches of the
  same size (submit ``batch`` transfers, wait for all of them: the semantics of one kvtier
  batch call), on a file in the same directory: ``fio`` when it is installed
  (``--iodepth=B --iodepth_batch_submit=B --iodepth_batch_complete_min=B``), else
  ``native.raw_io_bench`` (the same I/O engine kvtier uses, with nothing else around it).

The disk tier runs with ``codec="none"`` pinned (the default is ``"auto"``): this benchmark
measures kvtier's raw I/O path against raw O_DIRECT, byte for byte, on random pages that no
codec could shrink anyway. What compression does on real KV pages is ``bench/codec.py``'s
question (``kvtier bench --codec``).

Trials interleave kvtier and the ceiling and keep the best of each. Both reuse their files
across trials, so the best trials measure overwrites of allocated blocks (a disk tier's steady
state), not first-touch allocation.
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .. import native
from ..config import DiskTierConfig, HostTierConfig, MiB, StoreConfig
from ..keys import Namespace
from ..store import TieredStore

DEFAULT_DISK_PAGE_SIZES = (256 << 10, 1 << 20, 4 << 20)
DEFAULT_DISK_BATCHES = (1, 16)
BENCH_NAMESPACE = Namespace(model="kvtier-disk-bench")


@dataclass(frozen=True, slots=True)
class DiskBenchSettings:
    """What to measure.

    Args:
        directory: where the disk tier and the raw-I/O file live (``None``: a temporary
            directory under ``$TMPDIR``, removed afterwards). Put it on the drive to measure.
        page_sizes: page sizes in bytes (multiples of 4096).
        batches: pages per call (the queue depth of the ceiling).
        bytes_per_run: bytes written and read per measurement.
        trials: repetitions, kvtier and ceiling interleaved; the best of each is kept.
        use_fio: use fio for the ceiling when it is installed.
    """

    directory: str | None = None
    page_sizes: tuple[int, ...] = DEFAULT_DISK_PAGE_SIZES
    batches: tuple[int, ...] = DEFAULT_DISK_BATCHES
    bytes_per_run: int = 64 * MiB
    trials: int = 5
    use_fio: bool = True

    def __post_init__(self) -> None:
        for size in self.page_sizes:
            if size <= 0 or size % 4096:
                raise ValueError(f"disk page sizes must be positive multiples of 4096, got {size}")
        if not self.batches or min(self.batches) < 1:
            raise ValueError(f"batches must be >= 1, got {self.batches}")
        if self.trials < 1:
            raise ValueError(f"trials must be >= 1, got {self.trials}")


@dataclass(frozen=True, slots=True)
class DiskResult:
    """Throughputs in bytes/s for one page size and batch size."""

    page_bytes: int
    batch: int
    write: float
    write_ceiling: float
    read: float
    read_ceiling: float

    @property
    def write_ratio(self) -> float:
        return self.write / self.write_ceiling

    @property
    def read_ratio(self) -> float:
        return self.read / self.read_ceiling


@dataclass(frozen=True, slots=True)
class DiskBenchResult:
    settings: DiskBenchSettings
    ceiling_tool: str   # "fio" or "native loop"
    direct_io: bool     # False where the filesystem refused O_DIRECT
    io_engine: str
    directory: str
    results: list[DiskResult] = field(default_factory=list)

    def to_json(self) -> dict:
        doc = asdict(self)
        for row, result in zip(doc["results"], self.results):
            row["write_ratio"] = result.write_ratio
            row["read_ratio"] = result.read_ratio
        return doc


def run_disk_bench(settings: DiskBenchSettings,
                   progress: Callable[[str], None] = lambda step: None) -> DiskBenchResult:
    """Measure every (page size, batch) pair; see the module docstring."""
    owned = settings.directory is None
    root = Path(tempfile.mkdtemp(prefix="kvtier-disk-bench-") if owned else settings.directory)
    root.mkdir(parents=True, exist_ok=True)
    fio = shutil.which("fio") if settings.use_fio else None
    results, direct_io = [], True
    try:
        for page_bytes in settings.page_sizes:
            for batch in settings.batches:
                progress(f"{page_bytes >> 10} KiB pages, batch {batch}")
                count = max(batch, settings.bytes_per_run // page_bytes)
                count -= count % batch
                best = {"write": 0.0, "read": 0.0, "write_ceiling": 0.0, "read_ceiling": 0.0}
                for leftover in (root / "tier", root / "raw.dat"):
                    remove_path(leftover)
                for _ in range(settings.trials):
                    run = store_run(root / "tier", [os.urandom(page_bytes)], batch, count, codec="none")
                    direct_io = direct_io and run.direct_io
                    raw_write = raw_run(fio, root / "raw.dat", page_bytes, batch, count, write=True)
                    raw_read = raw_run(fio, root / "raw.dat", page_bytes, batch, count, write=False)
                    for name, value in (("write", run.write), ("read", run.read),
                                        ("write_ceiling", raw_write), ("read_ceiling", raw_read)):
                        best[name] = max(best[name], value)
                results.append(DiskResult(page_bytes, batch, **best))
    finally:
        for leftover in (root / "tier", root / "raw.dat"):
            remove_path(leftover)
        if owned:
            shutil.rmtree(root, ignore_errors=True)
    return DiskBenchResult(settings, "fio" if fio else "native loop", direct_io,
                           native.io_engine(), str(root), results)


@dataclass(frozen=True, slots=True)
class StoreRun:
    """One trial of the disk tier: bytes/s of raw page bytes, and what the tier reported."""

    write: float       # flush (write-back) of host-resident pages
    read: float        # batch_get_into of pages that are only on disk
    direct_io: bool
    disk_stats: dict[str, object]  # stats().tier("disk").extra of the writer, after the flush


def store_run(directory: Path, pages: Sequence[bytes], batch: int, count: int, *,
              codec: str = "none") -> StoreRun:
    """Write ``count`` pages (cycling through ``pages``, all of one size) from the host tier to
    a disk tier in ``directory`` with ``flush(batch_pages=batch)``, then read them back from a
    reopened store (``promote_on_read=False``) with ``batch_get_into`` of ``batch`` pages.

    The directory is kept across trials: a trial re-puts every page (new versions replace the
    disk copies and free their slots), so after the first trial writes overwrite allocated slots,
    as in a disk tier's steady state; the raw ceiling's file is reused the same way.
    ``fsync="never"``: O_DIRECT data reaches the device either way; the periodic flush is not timed.
    """
    page_bytes = len(pages[0])
    if any(len(page) != page_bytes for page in pages):
        raise ValueError("store_run: all pages must have the same size")
    nbytes = count * page_bytes
    config = StoreConfig(
        host=HostTierConfig(capacity_bytes=nbytes, slot_bytes=page_bytes),
        disk=DiskTierConfig(paths=(str(directory),), capacity_bytes=nbytes, min_free_bytes=0,
                            fsync="never", promote_on_read=False, flush_on_close=False,
                            codec=codec))
    keys = [BENCH_NAMESPACE.key_for_bytes(i.to_bytes(8, "little")) for i in range(count)]
    with TieredStore(config) as store:
        for i, key in enumerate(keys):
            store.put(key, pages[i % len(pages)])
        start = time.perf_counter()
        written = store.flush(batch_pages=batch)
        write_s = time.perf_counter() - start
        disk_stats = dict(store.stats().tier("disk").extra)
    if written != count:
        raise RuntimeError(f"disk bench: flushed {written} of {count} pages (is the disk full?)")
    outs = [memoryview(mmap.mmap(-1, page_bytes)) for _ in range(batch)]
    with TieredStore(config) as store:
        start = time.perf_counter()
        for i in range(0, count, batch):
            if not all(store.batch_get_into(keys[i:i + batch], outs[:len(keys[i:i + batch])])):
                raise RuntimeError("disk bench: a page written moments ago did not read back")
        read_s = time.perf_counter() - start
    return StoreRun(nbytes / write_s, nbytes / read_s, bool(disk_stats["direct_io"]), disk_stats)


def raw_run(fio: str | None, path: Path, page_bytes: int, batch: int, count: int, *, write: bool) -> float:
    """Raw O_DIRECT bytes/s for ``count`` pages at queue depth ``batch``: ``fio`` at ``fio``
    (its path) when given, else ``native.raw_io_bench``."""
    if fio:
        return _fio(fio, path, page_bytes, batch, count, write=write)
    seconds = native.raw_io_bench(str(path), page_bytes, batch, count, write)
    return count * page_bytes / seconds


def _fio(fio: str, path: Path, page_bytes: int, batch: int, count: int, *, write: bool) -> float:
    engine = "io_uring" if native.io_engine() == "io_uring" else "libaio"
    args = [fio, "--name=kvtier-ceiling", f"--filename={path}", f"--rw={'write' if write else 'read'}",
            f"--bs={page_bytes}", f"--size={count * page_bytes}", "--direct=1",
            f"--ioengine={engine}", f"--iodepth={batch}", f"--iodepth_batch_submit={batch}",
            f"--iodepth_batch_complete_min={batch}", "--output-format=json"]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    job = json.loads(out[out.index("{"):])["jobs"][0]
    return float(job["write" if write else "read"]["bw_bytes"])


def remove_path(path: Path) -> None:
    """Remove a file or a directory tree, if there."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
