"""Peers benchmark (issue 10): the same pages through kvtier and through the stores it replaces.

Three rows per page size, each a peer beside the kvtier tier that does its job:

* **LMCache ``LocalCPUBackend``** (DRAM) beside kvtier's host tier: write = put, warm read =
  get (DRAM has no cold read);
* **LMCache ``LocalDiskBackend``** beside kvtier's disk tier (with its host tier in front, as
  kvtier runs): durable write (until the data is on the drive, ``os.sync()`` included), cold
  read (page cache dropped with ``posix_fadvise(DONTNEED)``), warm read (read again);
* **SGLang ``HiCacheFile``** beside kvtier's SGLang HiCache backend: ``bench/sglang.py``'s
  benchmark, whole (the controller's calls for each; the same three measures).

Every side runs in a process of its own, one at a time (``peer_runner.py``, whose docstring
says exactly what each side's calls are): kvtier's host side, LMCache's CPU side, kvtier's disk
side, LMCache's disk side, then the SGLang benchmark (kvtier's backend and HiCacheFile, trials
interleaved inside it). LMCache runs in the peers virtualenv (``benchmarks/peers/setup.sh``:
torch 2.13.0 CPU + ``lmcache==0.5.6 --no-deps`` and the few packages its storage backends
import); the kvtier sides and the SGLang benchmark run under this interpreter. A peer that
cannot run (no virtualenv, an import that fails, SGLang's storage interface missing) is
skipped with the reason, in the result and the table; the kvtier sides always run.

Pages are Llama-3-8B's KV (32 layers, 8 KV heads, head dim 128, bfloat16: 128 KiB per token),
by default 256 KiB (2 tokens) and 2 MiB (16 tokens), ``bytes_per_run`` of them per trial, the
same random bytes for kvtier and LMCache. LMCache's object size is set to the page size
(``chunk_size`` = tokens per page, ``kv_shape`` = (layers, 2, tokens, heads, head_dim)).
Trial 0 is a warm-up and is discarded; the median of the rest is kept. Every read is compared
byte for byte with what was written (``verified_pages``).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from importlib import util
from pathlib import Path
from typing import Callable

from ..config import MiB
from .host import _cpu_name
from .peer_runner import RESULT_MARK

DEFAULT_PEERS_PAGE_SIZES = (256 << 10, 2 << 20)
PEERS = ("lmcache_cpu", "lmcache_disk", "hicache_file")
MEASURES = ("write", "cold_read", "warm_read")
KVTIER_SIDES = {"lmcache_cpu": "kvtier_host", "lmcache_disk": "kvtier_disk",
                "hicache_file": "kvtier_sglang"}
LABELS = {"lmcache_cpu": "LMCache LocalCPUBackend", "lmcache_disk": "LMCache LocalDiskBackend",
          "hicache_file": "SGLang HiCacheFile", "kvtier_host": "kvtier host tier",
          "kvtier_disk": "kvtier disk tier (host + disk)", "kvtier_sglang": "kvtier SGLang backend"}
_RUNNER = Path(__file__).with_name("peer_runner.py")
SETUP_SCRIPT = "benchmarks/peers/setup.sh"


@dataclass(frozen=True, slots=True)
class PeersBenchSettings:
    """What to measure.

    Args:
        directory: where every side's files go (``None``: a temporary directory under
            ``$TMPDIR``, removed afterwards). Put it on the drive to measure.
        page_sizes: page sizes in bytes, whole tokens of the geometry below (128 KiB each).
        bytes_per_run: page bytes written and read per trial and side.
        trials: measured trials per side, after one discarded warm-up; the median is kept.
        batch: pages per store call.
        peers: which peers to run (``PEERS``).
        peers_python: the interpreter of the peers virtualenv (``None``: ``$KVTIER_PEERS_PYTHON``,
            else ``.venv-peers/bin/python`` in the working directory or the source checkout).
        layers, kv_heads, head_dim: the KV geometry (bfloat16; default Llama-3-8B).
        timeout_s: the most one side's process may take.
        sglang_host_capacity: the host tier of kvtier's SGLang backend (its default, 1 GiB).
    """

    directory: str | None = None
    page_sizes: tuple[int, ...] = DEFAULT_PEERS_PAGE_SIZES
    bytes_per_run: int = 64 * MiB
    trials: int = 5
    batch: int = 128
    peers: tuple[str, ...] = PEERS
    peers_python: str | None = None
    layers: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    timeout_s: float = 1800.0
    sglang_host_capacity: int = 1 << 30

    def __post_init__(self) -> None:
        for name in ("bytes_per_run", "trials", "batch", "layers", "kv_heads", "head_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.page_sizes:
            raise ValueError("page_sizes needs at least one size")
        for size in self.page_sizes:
            if size <= 0 or size % self.token_bytes:
                raise ValueError(f"peer page sizes must be positive multiples of one token's KV "
                                 f"({self.token_bytes} bytes), got {size}")
        unknown = sorted(set(self.peers) - set(PEERS))
        if unknown or not self.peers:
            raise ValueError(f"peers must be some of {', '.join(PEERS)}, got {', '.join(self.peers) or 'none'}")

    @property
    def token_bytes(self) -> int:
        """Bytes of K and V of every layer for one token (bfloat16)."""
        return 2 * self.layers * self.kv_heads * self.head_dim * 2


@dataclass(frozen=True, slots=True)
class PeerRow:
    """One peer at one page size beside its kvtier side: median bytes/s per measure (``None``
    where a side has no such measure, or did not run)."""

    peer: str
    kvtier_side: str
    page_bytes: int
    pages: int
    batch: int
    kvtier: dict[str, float | None]
    peer_rates: dict[str, float | None]
    verified_pages: dict[str, int]              # "kvtier", "peer": byte-exact reads, all trials
    trials: dict[str, dict[str, list]]          # "kvtier"/"peer" -> measure -> measured trials
    skipped: str | None = None                  # why the peer did not run

    def ratio(self, measure: str) -> float | None:
        """kvtier / peer for ``measure`` (above 1: kvtier is faster)."""
        ours, theirs = self.kvtier.get(measure), self.peer_rates.get(measure)
        return None if ours is None or not theirs else ours / theirs


@dataclass(frozen=True, slots=True)
class PeersBenchResult:
    settings: PeersBenchSettings
    directory: str
    cpu: str
    load: list[float]                 # 1-minute load average before, after each side, at the end
    versions: dict[str, str]          # side -> version of what it ran
    pythons: dict[str, str]           # side -> interpreter
    skipped: dict[str, str]           # peer -> why it did not run
    notes: dict[str, dict]            # side -> what it reported (direct_io, chunk_size, ...)
    side_s: dict[str, float]          # side -> wall seconds of its process
    rows: list[PeerRow] = field(default_factory=list)

    def to_json(self) -> dict:
        doc = asdict(self)
        doc["mode"] = "peers"
        for row, result in zip(doc["rows"], self.rows):
            row["ratio"] = {m: result.ratio(m) for m in MEASURES}
        return doc

    @property
    def kvtier_leads(self) -> bool:
        """Whether kvtier is ahead on every measured (peer, page size, measure)."""
        return all(r >= 1 for row in self.rows for m in MEASURES if (r := row.ratio(m)) is not None)


def peers_python(settings: PeersBenchSettings) -> Path | None:
    """The peers virtualenv's interpreter, or ``None`` where there is none."""
    if settings.peers_python:
        return Path(settings.peers_python)
    if os.environ.get("KVTIER_PEERS_PYTHON"):
        return Path(os.environ["KVTIER_PEERS_PYTHON"])
    for root in (Path.cwd(), Path(__file__).resolve().parents[3]):
        candidate = root / ".venv-peers" / "bin" / "python"
        if candidate.exists():
            return candidate
    return None


def peers_bench_steps(settings: PeersBenchSettings) -> int:
    """How many times ``run_peers_bench`` calls ``progress`` (once per side's process)."""
    return len(_plan(settings))


def _plan(settings: PeersBenchSettings) -> list[str]:
    order = []
    for peer in PEERS:
        if peer not in settings.peers:
            continue
        if peer != "hicache_file":
            order.append(KVTIER_SIDES[peer])
        order.append(peer)
    return order


def run_peers_bench(settings: PeersBenchSettings,
                    progress: Callable[[str], None] = lambda step: None) -> PeersBenchResult:
    """Run every side in turn; see the module docstring."""
    owned = settings.directory is None
    root = Path(tempfile.mkdtemp(prefix="kvtier-peers-bench-") if owned else settings.directory)
    root.mkdir(parents=True, exist_ok=True)
    load = [os.getloadavg()[0]]
    docs: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    pythons: dict[str, str] = {}
    side_s: dict[str, float] = {}
    try:
        for side in _plan(settings):
            python, why = _interpreter(side, settings)
            if python is None:
                skipped[side] = why
                progress(f"{side}: skipped")
                continue
            pythons[side] = str(python)
            start = time.perf_counter()
            try:
                docs[side] = _run_side(side, python, settings, root)
            except _PeerFailed as exc:
                if side in PEERS:
                    skipped[side] = str(exc)
                else:
                    raise RuntimeError(f"peers bench: {side} failed: {exc}") from None
            side_s[side] = time.perf_counter() - start
            load.append(os.getloadavg()[0])
            progress(f"{side} done" if side in docs else f"{side}: skipped")
    finally:
        if owned:
            shutil.rmtree(root, ignore_errors=True)
    rows = _rows(settings, docs, skipped)
    versions = {side: doc.get("version", "") for side, doc in docs.items()}
    notes = {side: {"torch_threads": doc.get("torch_threads"), **_row_notes(doc["results"]),
                    **doc.get("notes", {})} for side, doc in docs.items()}
    return PeersBenchResult(settings, str(root), _cpu_name(), load, versions, pythons, skipped,
                            notes, side_s, rows)


def _row_notes(results: list[dict]) -> dict:
    """Per-page-size notes of one side: a value when every page size agrees, else the list in
    page-size order (e.g. LMCache's ``chunk_size``)."""
    keys = dict.fromkeys(k for row in results for k in row.get("notes", {}))
    merged = {}
    for key in keys:
        values = [row.get("notes", {}).get(key) for row in results]
        merged[key] = values[0] if all(v == values[0] for v in values) else values
    return merged


class _PeerFailed(Exception):
    pass


def _interpreter(side: str, settings: PeersBenchSettings) -> tuple[Path | None, str]:
    """The interpreter that runs ``side``, or ``None`` and why not."""
    if side.startswith("lmcache"):
        python = peers_python(settings)
        if python is None or not python.exists():
            return None, (f"no peers virtualenv ({python or '.venv-peers/bin/python'} missing): "
                          f"run {SETUP_SCRIPT}")
        unavailable = python.parent.parent / "UNAVAILABLE"
        if unavailable.exists():
            return None, f"{SETUP_SCRIPT} could not install it: {unavailable.read_text().strip()}"
        return python, ""
    if side == "hicache_file" and util.find_spec("sglang") is None:
        return None, ("SGLang's storage interface is not installed next to kvtier "
                      "(pip install torch==2.13.0 && pip install --no-deps sglang==0.5.23)")
    return Path(sys.executable), ""


def _run_side(side: str, python: Path, settings: PeersBenchSettings, root: Path) -> dict:
    spec = {"side": side, "directory": str(root), "page_sizes": list(settings.page_sizes),
            "bytes_per_run": settings.bytes_per_run, "trials": settings.trials,
            "batch": settings.batch, "layers": settings.layers, "kv_heads": settings.kv_heads,
            "head_dim": settings.head_dim, "torch_threads": 1,
            "sglang_host_capacity": settings.sglang_host_capacity}
    env = dict(os.environ, LMCACHE_LOG_LEVEL="ERROR", LMCACHE_TRACK_USAGE="false")
    if not side.startswith("lmcache"):  # the kvtier this process runs, wherever it is installed
        kvtier_parent = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (kvtier_parent, env.get("PYTHONPATH")) if p)
    try:
        done = subprocess.run([str(python), str(_RUNNER)], input=json.dumps(spec), text=True,
                              capture_output=True, env=env, timeout=settings.timeout_s)
    except subprocess.TimeoutExpired:
        raise _PeerFailed(f"timed out after {settings.timeout_s:.0f} s") from None
    except OSError as exc:
        raise _PeerFailed(f"could not start {python}: {exc}") from None
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_MARK) and done.returncode == 0:
            return json.loads(line[len(RESULT_MARK):])
    tail = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()]
    raise _PeerFailed(f"exit status {done.returncode}: {tail[-1] if tail else 'no output'}")


def _median(values: list) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None


def _rows(settings: PeersBenchSettings, docs: dict[str, dict], skipped: dict[str, str]) -> list[PeerRow]:
    rows = []
    for peer in (p for p in PEERS if p in settings.peers):
        ours = KVTIER_SIDES[peer]
        for index, page_bytes in enumerate(settings.page_sizes):
            sides: dict[str, dict | None] = {"kvtier": None, "peer": None}
            meta = None
            if peer == "hicache_file":
                if peer in docs:
                    meta = docs[peer]["results"][index]
                    sides = {"kvtier": meta["kvtier"], "peer": meta["peer"]}
            else:
                for name, side in (("kvtier", ours), ("peer", peer)):
                    if side in docs:
                        meta = docs[side]["results"][index]
                        sides[name] = meta["side"]
            if meta is None:
                count = max(1, settings.bytes_per_run // page_bytes)
                meta = {"pages": count, "batch": min(settings.batch, count), "warmup_included": True}
            medians, trials, verified = {}, {}, {}
            for name, got in sides.items():
                runs = {m: [] for m in MEASURES} if got is None else got["runs"]
                if meta.get("warmup_included", True):
                    runs = {m: values[1:] for m, values in runs.items()}
                trials[name] = runs
                medians[name] = {m: _median(runs[m]) for m in MEASURES}
                verified[name] = 0 if got is None else got["verified_pages"]
            rows.append(PeerRow(peer, ours, page_bytes, meta["pages"], meta["batch"],
                                medians["kvtier"], medians["peer"], verified, trials,
                                skipped.get(peer)))
    return rows
