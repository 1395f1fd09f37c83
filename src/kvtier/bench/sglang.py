"""SGLang HiCache L3 benchmark: kvtier's backend beside SGLang's own ``HiCacheFile`` (issue 9).

Both backends get the same pages of the same host pool, through the calls SGLang's cache
controller (``managers/cache_controller.py``) makes, each on the fastest path it offers:

* **kvtier** (``KvtierHiCacheStorage`` with ``interface_v1``): the controller's zero-copy path,
  ``batch_set_v1(hashes, host_indices)`` to back pages up and ``batch_get_v1(hashes,
  host_indices)`` to prefetch them, straight between the pool and the store;
* **HiCacheFile** (one ``.bin`` file per page): it has no v1 methods (its v2 ones do the same
  page by page), so the controller's generic path: ``batch_set`` of ``get_data_page(index)``
  (a flat copy of each page), and ``batch_get`` into ``get_dummy_flat_data_page()`` tensors,
  then ``set_from_flat_data_page`` into the pool.

Pages are shaped like Llama-3-8B's KV (32 layers, 8 KV heads, head dim 128, bfloat16: 128 KiB
per token for K and V of every layer), in SGLang's ``page_first`` host layout, so a 256 KiB
page is 2 tokens and a 2 MiB page 16. Calls carry SGLang's ``STORAGE_BATCH_SIZE`` (128) pages.

Per trial, for each backend in turn (and the raw ceiling; each goes first in turn):

* **durable write**: the backup calls, then ``os.sync()``, timed together, on the backend
  that read in the previous trial (as in a running server);
* **cold read**: the backend is restarted (rebuilt on its directory: nothing of the pages in
  process memory, kvtier's DRAM tier included) and reads one spare page (untimed, not among
  the measured ones, so its I/O threads run again as in a running server); then every file
  under both backends' directories gets ``posix_fadvise(DONTNEED)`` (no page in the page
  cache; the kernel's inode and directory caches stay warm, which spares HiCacheFile's
  ``open`` a lookup) and the prefetch calls are timed;
* **warm read**: the same prefetch again, nothing dropped. kvtier's backend promotes what
  the cold read brought back into its host tier (``promote_on_read``, its default), so its
  warm read is served from there; with promotion off its ``O_DIRECT`` reads (``direct_io``
  in the result) go to the drive again. HiCacheFile's is served from the page cache.

The ceiling, in the same run and directory: the same bytes as raw page-sized ``O_DIRECT``
transfers, ``batch`` per submission on kvtier's I/O engine (``native.raw_io_bench``), writes
followed by ``os.sync()`` (``raw_*``).

Backups read the first half of the host pool, prefetches land in its zeroed second half,
which is then compared with the first, byte for byte (``verified_pages``). Trial 0 is a
warm-up and is discarded; the median of the rest is kept. Each backend's directory holds one trial's pages when a trial starts: kvtier's disk tier
is sized to one trial (and the spare page), so each trial's backups evict the previous trial's
pages and overwrite their slots (its steady state, timed); HiCacheFile, unbounded at its defaults, is cleared
(untimed) before each trial. kvtier runs with the backend's defaults (``write_through``,
``fsync="batch"``, 1 GiB host tier) except ``codec`` (``"none"`` by default here: HiCacheFile
stores pages as they are). torch runs on one intra-op thread, as in an SGLang GPU server
(``torch_threads``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from .. import native
from ..config import GiB, MiB
from .host import _cpu_name
from .peer_runner import drop_page_cache

DEFAULT_SGLANG_PAGE_SIZES = (256 << 10, 2 << 20)
BACKENDS = ("kvtier", "hicache_file")
MEASURES = ("write", "cold_read", "warm_read")
_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
_KVTIER = {"backend_name": "kvtier", "module_path": "kvtier.integrations.sglang",
           "class_name": "KvtierHiCacheStorage", "interface_v1": 1}
PATHS = {
    "kvtier": "batch_set_v1 / batch_get_v1 with host_indices (interface_v1: the controller's "
              "zero-copy path)",
    "hicache_file": "batch_set of get_data_page(i) / batch_get into get_dummy_flat_data_page(), "
                    "then set_from_flat_data_page (the controller's generic path; HiCacheFile has "
                    "no v1 methods)",
}


@dataclass(frozen=True, slots=True)
class SGLangBenchSettings:
    """What to measure.

    Args:
        directory: where both backends' directories are made (``None``: a temporary directory
            under ``$TMPDIR``, removed afterwards). Put it on the drive to measure.
        page_sizes: SGLang page sizes in bytes (K and V of every layer), each a whole number
            of tokens (``token_bytes``).
        bytes_per_run: page bytes written and read per trial and backend (whole pages).
        trials: measured trials, after one discarded warm-up; the median is kept.
        batch: pages per backup / prefetch call (SGLang's ``STORAGE_BATCH_SIZE``).
        layers, kv_heads, head_dim, dtype: the host pool's geometry (default: Llama-3-8B).
        codec: kvtier's disk codec (``"none"``: pages stored as they are, like HiCacheFile).
        host_capacity: kvtier's host DRAM tier (the backend's default, 1 GiB). Reads never come
            from it (the backend is rebuilt before them); backups pass through it, in calls of at
            most half its slots.
        torch_threads: torch's intra-op threads during the run (restored afterwards; 0: leave
            them). 1 is what an SGLang GPU server runs with: ``ModelRunner.load_model`` calls
            ``torch.set_num_threads(1)`` in the scheduler process, where the cache controller
            and its storage backend live. It matters to HiCacheFile's path, which runs small
            torch ops per page (``torch.zeros``, the copies of ``get_data_page`` and
            ``set_from_flat_data_page``); kvtier's timed path runs none.
    """

    directory: str | None = None
    page_sizes: tuple[int, ...] = DEFAULT_SGLANG_PAGE_SIZES
    bytes_per_run: int = 64 * MiB
    trials: int = 5
    batch: int = 128
    layers: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    dtype: str = "bfloat16"
    codec: str = "none"
    host_capacity: int = 1 * GiB
    torch_threads: int = 1

    def __post_init__(self) -> None:
        for name in ("bytes_per_run", "trials", "batch", "layers", "kv_heads", "head_dim",
                     "host_capacity"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dtype not in _DTYPE_BYTES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPE_BYTES)}, got {self.dtype!r}")
        if not self.page_sizes:
            raise ValueError("page_sizes needs at least one size")
        if self.torch_threads < 0:
            raise ValueError(f"torch_threads must be >= 0, got {self.torch_threads}")
        for size in self.page_sizes:
            if size <= 0 or size % self.token_bytes:
                raise ValueError(f"SGLang page sizes must be positive multiples of one token's KV "
                                 f"({self.token_bytes} bytes: 2 x {self.layers} layers x "
                                 f"{self.kv_heads} heads x {self.head_dim} x {self.dtype}), got {size}")

    @property
    def token_bytes(self) -> int:
        """Bytes of K and V of every layer for one token."""
        return 2 * self.layers * self.kv_heads * self.head_dim * _DTYPE_BYTES[self.dtype]


@dataclass(frozen=True, slots=True)
class SGLangResult:
    """Median bytes/s of page bytes for one page size; ``file_*`` are HiCacheFile's."""

    page_bytes: int
    page_tokens: int        # SGLang's page_size
    pages: int              # pages written and read per trial and backend
    batch: int
    kvtier_write: float     # batch_set_v1 + os.sync()
    kvtier_cold_read: float
    kvtier_warm_read: float
    file_write: float       # batch_set + os.sync()
    file_cold_read: float
    file_warm_read: float
    raw_write: float        # the ceiling: page-sized O_DIRECT writes + os.sync()
    raw_cold_read: float    # page-sized O_DIRECT reads
    verified_pages: dict[str, int] = field(default_factory=dict)  # byte-exact reads, all trials
    trials: dict[str, list[float]] = field(default_factory=dict)  # every measured trial

    def ratio(self, measure: str, to: str = "file") -> float:
        """kvtier / HiCacheFile (``to="file"``) or kvtier / raw O_DIRECT (``to="raw"``; write
        and cold_read only) for ``write``, ``cold_read`` or ``warm_read``."""
        return getattr(self, f"kvtier_{measure}") / getattr(self, f"{to}_{measure}")


@dataclass(frozen=True, slots=True)
class SGLangBenchResult:
    settings: SGLangBenchSettings
    sglang: str             # SGLang's version
    directory: str
    direct_io: bool         # kvtier's disk tier read and wrote with O_DIRECT
    io_engine: str
    native_backend: str     # kvtier's "native" or "python" backend
    paths: dict[str, str]   # the calls each backend was driven through
    cpu: str
    torch_threads: int      # torch's intra-op threads during the run
    load: tuple[float, float]  # 1-minute load average before and after the run
    results: list[SGLangResult] = field(default_factory=list)

    def to_json(self) -> dict:
        doc = asdict(self)
        for row, result in zip(doc["results"], self.results):
            for measure in MEASURES:
                row[f"{measure}_ratio"] = result.ratio(measure)
            for measure in ("write", "cold_read"):
                row[f"{measure}_vs_raw"] = result.ratio(measure, "raw")
        return doc


def sglang_bench_steps(settings: SGLangBenchSettings) -> int:
    """How many times ``run_sglang_bench`` calls ``progress``."""
    return len(settings.page_sizes) * (settings.trials + 1)


def run_sglang_bench(settings: SGLangBenchSettings,
                     progress: Callable[[str], None] = lambda step: None) -> SGLangBenchResult:
    """Measure every page size; see the module docstring. Needs torch and SGLang's storage
    interface (``pip install --no-deps sglang``); raises ImportError without them."""
    import torch

    from ..integrations import _sglang_import

    _sglang_import.hicache_interface()  # ImportError, with what to install, before any work
    if os.environ.get("SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR"):
        raise ValueError("SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR is set: HiCacheFile would write "
                         "there instead of beside kvtier; unset it for this benchmark")
    owned = settings.directory is None
    root = Path(tempfile.mkdtemp(prefix="kvtier-sglang-bench-") if owned else settings.directory)
    root.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    results, direct_io = [], True
    threads = torch.get_num_threads()
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    used_threads = torch.get_num_threads()
    try:
        for page_bytes in settings.page_sizes:
            bench = _PageSizeBench(settings, root, page_bytes)
            try:
                row, used_direct = bench.run(progress)
            finally:
                bench.close()
            direct_io = direct_io and used_direct
            results.append(row)
    finally:
        torch.set_num_threads(threads)
        for name in ("kvtier", "hicache-file", "raw.dat"):
            _remove(root / name)
        if owned:
            shutil.rmtree(root, ignore_errors=True)
    return SGLangBenchResult(settings, metadata.version("sglang"), str(root), direct_io,
                             native.io_engine(), native.backend, dict(PATHS), _cpu_name(),
                             used_threads, (load_before, os.getloadavg()[0]), results)



class _PageSizeBench:
    """Both backends, their directories and the host pool for one page size.

    One pool of ``2 * count`` pages, as SGLang registers one pool per backend: backups read
    pages ``[0, count)`` (the source), prefetches write pages ``[count, 2 * count)`` (the
    target), and the two halves are compared after every read.
    """

    def __init__(self, settings: SGLangBenchSettings, root: Path, page_bytes: int) -> None:
        import torch

        from ..integrations import _sglang_import

        self.torch, self.s = torch, settings
        self.tokens = page_bytes // settings.token_bytes
        self.page_bytes = page_bytes
        self.count = max(1, settings.bytes_per_run // page_bytes)
        self.pool = _sglang_import.host_pool_class("mha")(
            "page_first", page_size=self.tokens, pages=2 * self.count, layers=settings.layers,
            heads=settings.kv_heads, head_dim=settings.head_dim,
            dtype=getattr(torch, settings.dtype), seed=page_bytes)
        n = self.count * self.tokens  # page_first kv_buffer: (K/V, token, layer, head, dim)
        self.source, self.target = self.pool.kv_buffer[:, :n], self.pool.kv_buffer[:, n:]
        self.source_indices = torch.arange(n, dtype=torch.int64)
        self.target_indices = torch.arange(n, 2 * n, dtype=torch.int64)
        self.dirs = {"kvtier": root / "kvtier", "hicache_file": root / "hicache-file",
                     "raw": root / "raw.dat"}
        for path in self.dirs.values():
            _remove(path)
        self._factory = _sglang_import.storage_backend_factory()
        self._file_cls = _sglang_import.hicache_file_class()
        self._config_cls = _sglang_import.hicache_interface().HiCacheStorageConfig
        self.backends: dict[str, Any] = {}
        self.direct_io = True

    # -- one page size ----------------------------------------------------------------------
    def run(self, progress: Callable[[str], None]) -> tuple[Any, bool]:
        s, nbytes = self.s, self.count * self.page_bytes
        runs = {f"{side}_{m}": [] for side in ("kvtier", "file") for m in MEASURES}
        runs.update(raw_write=[], raw_cold_read=[])
        verified = dict.fromkeys(BACKENDS, 0)
        sides = (*BACKENDS, "raw")
        for trial in range(s.trials + 1):  # trial 0: the warm-up, discarded
            keys = _page_hashes(self.page_bytes, trial, self.count + 1)  # + the warm-up page
            for name in sides[trial % 3:] + sides[:trial % 3]:  # each goes first in turn
                if name == "raw":
                    write_s, read_s = self._raw_trial()
                    runs["raw_write"].append(nbytes / write_s)
                    runs["raw_cold_read"].append(nbytes / read_s)
                    continue
                seconds, checked = self._trial(name, keys[:-1], keys[-1])
                verified[name] += checked
                side = "kvtier" if name == "kvtier" else "file"
                for measure, value in zip(MEASURES, seconds):
                    runs[f"{side}_{measure}"].append(nbytes / value)
            progress(f"{self.page_bytes >> 10} KiB pages, trial {trial + 1} of {s.trials + 1}")
        kept = {name: values[1:] for name, values in runs.items()}
        medians = {name: statistics.median(values) for name, values in kept.items()}
        row = SGLangResult(self.page_bytes, self.tokens, self.count, s.batch, **medians,
                           verified_pages=verified, trials=kept)
        return row, self.direct_io

    def _trial(self, name: str, keys: list[str], spare: str) -> tuple[tuple[float, float, float], int]:
        """(durable write, cold read, warm read) seconds of one backend, and pages verified.

        The backend is the one the previous trial read with (as in a running server); it is
        restarted before the reads, so that no process memory holds the pages, and reads one
        page written for that (``spare``, not timed) to start its I/O threads again, as a
        running server has them."""
        backend = self.backends.get(name) or self._open(name)
        if name == "hicache_file":
            backend.clear()  # unbounded at its defaults: keep one trial's pages, like kvtier's tier
        write, read = (self._kvtier_write, self._kvtier_read) if name == "kvtier" else \
            (self._file_write, self._file_read)
        start = time.perf_counter()
        write(backend, keys)
        os.sync()
        write_s = time.perf_counter() - start
        write(backend, [spare])
        backend = self._open(name)  # the restart
        read(backend, [spare])
        os.sync()
        drop_page_cache(*self.dirs.values())
        seconds = [write_s]
        for _ in ("cold", "warm"):
            self.target.zero_()
            start = time.perf_counter()
            read(backend, keys)
            seconds.append(time.perf_counter() - start)
            self._verify(name)
        if name == "kvtier":
            self.direct_io = self.direct_io and bool(backend.store.stats().tier("disk").extra["direct_io"])
        return tuple(seconds), 2 * self.count

    def _raw_trial(self) -> tuple[float, float]:
        """(write + os.sync, read) seconds of the same bytes as raw page-sized O_DIRECT
        transfers, ``batch`` per submission, on a file beside the backends' directories."""
        path, depth = str(self.dirs["raw"]), min(self.s.batch, self.count)
        start = time.perf_counter()
        native.raw_io_bench(path, self.page_bytes, depth, self.count, True)
        os.sync()
        write_s = time.perf_counter() - start
        drop_page_cache(*self.dirs.values())  # a no-op for O_DIRECT, done for symmetry
        return write_s, native.raw_io_bench(path, self.page_bytes, depth, self.count, False)

    def _verify(self, name: str) -> None:
        if not self.torch.equal(self.target, self.source):
            raise RuntimeError(f"sglang bench: {name} read back other bytes than were written")

    # -- the controller's calls -------------------------------------------------------------
    def _batches(self, keys: list[str], indices: Any):
        step, tokens = self.s.batch, self.tokens
        for at in range(0, len(keys), step):
            part = keys[at:at + step]
            yield part, indices[at * tokens:(at + len(part)) * tokens]

    def _kvtier_write(self, backend: Any, keys: list[str]) -> None:
        for part, host_indices in self._batches(keys, self.source_indices):  # _page_set_zero_copy
            if not all(backend.batch_set_v1(part, host_indices)):
                raise RuntimeError("sglang bench: kvtier refused a backup (is the disk full?)")

    def _kvtier_read(self, backend: Any, keys: list[str]) -> None:
        for part, host_indices in self._batches(keys, self.target_indices):  # _page_get_zero_copy
            if not all(backend.batch_get_v1(part, host_indices)):
                raise RuntimeError("sglang bench: kvtier missed pages it had just backed up")

    def _file_write(self, backend: Any, keys: list[str]) -> None:
        pool, tokens = self.pool, self.tokens
        for part, host_indices in self._batches(keys, self.source_indices):  # _generic_page_set
            data = [pool.get_data_page(host_indices[i * tokens]) for i in range(len(part))]
            if not backend.batch_set(part, data):
                raise RuntimeError("sglang bench: HiCacheFile refused a backup (is the disk full?)")

    def _file_read(self, backend: Any, keys: list[str]) -> None:
        pool, tokens = self.pool, self.tokens
        for part, host_indices in self._batches(keys, self.target_indices):  # _generic_page_get
            dummy = [pool.get_dummy_flat_data_page() for _ in part]
            pages = backend.batch_get(part, dummy)
            for i, page in enumerate(pages):
                if page is None:
                    raise RuntimeError("sglang bench: HiCacheFile missed pages it had just backed up")
                pool.set_from_flat_data_page(host_indices[i * tokens], page)

    # -- backends ---------------------------------------------------------------------------
    def _config(self, extra: dict[str, Any]) -> Any:
        return self._config_cls(
            tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=1,
            is_mla_model=False, enable_storage_metrics=False, is_page_first_layout=True,
            model_name="kvtier-bench/llama-3-8b-shape", extra_config=extra)

    def _open(self, name: str) -> Any:
        """A new backend on ``name``'s directory, built as SGLang builds it (the previous one
        closed). kvtier's disk tier holds one trial's pages and the spare one: a backend writes
        no more than that between two restarts, so its host tier never holds more distinct
        pages than its disk tier can take back at close."""
        self._close(name)
        if name == "kvtier":
            extra = {**_KVTIER, "storage_dir": str(self.dirs[name]), "codec": self.s.codec,
                     "disk_capacity": (self.count + 1) * self.page_bytes,
                     "host_capacity": self.s.host_capacity}
            backend = self._factory.create_backend("dynamic", self._config(extra), self.pool)
            backend.register_mem_pool_host(self.pool)
            backend.on_host_pools_registered()
        else:
            backend = self._file_cls(self._config({"file_storage_path": str(self.dirs[name])}))
            backend.register_mem_pool_host(self.pool)
        self.backends[name] = backend
        return backend

    def _close(self, name: str) -> None:
        backend = self.backends.pop(name, None)
        if backend is not None and hasattr(backend, "close"):
            backend.close()

    def close(self) -> None:
        for name in list(self.backends):
            self._close(name)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _page_hashes(page_bytes: int, trial: int, count: int) -> list[str]:
    """SGLang-style page hashes (SHA-256 hex), new for every trial and page size."""
    return [hashlib.sha256(f"{page_bytes}/{trial}/{i}".encode()).hexdigest() for i in range(count)]
