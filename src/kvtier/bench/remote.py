"""Remote-tier benchmark: the Redis tier's MB/s beside a raw redis-py loop on the same server.

Per page size, same run, same server, same batch size, in MB/s of raw page bytes:

* **kvtier**: ``RemoteTier.put_many`` (``codec="none"``, ``write_mode="sync"``: header and
  checksum, the page itself sent after the header, one pipelined round trip of SETs) and ``get_many`` into preallocated caller
  buffers (one round trip of GETs, header and checksum checks, copy out; pages stored with a
  window, none here, would add one round trip of PTTLs);
* **ceiling** (``raw``): a plain ``redis.Redis`` configured as the tier's client (socket
  options, packer, socket read size), pipelined (``transaction=False``) SET / GET of the same
  prebuilt ``bytes`` in batches of the same size: same library, same client settings, same
  round trips, nothing of kvtier around them;
* **context**: the same loop on a client with redis-py's defaults (``default``: hiredis packer,
  32 KiB reads), and ``redis-benchmark -c 1 -P batch -d size -t set,get`` (one connection too)
  once per page size for as many requests as the measured trials; skipped, with the reason,
  when not on PATH, for TLS URLs, or when its fixed key ``key:__rand_int__`` already exists.

Trials rotate which loop goes first; a warm-up trial (which also checks that the tier read
back every page as a HIT with the bytes written) is discarded and the median of the rest kept.
Keys live under a prefix unique to the run and are deleted at the end. A password reaches
redis-benchmark as ``-a`` (visible in the process list while it runs).
"""

from __future__ import annotations

import csv
import dataclasses
import os
import secrets
import shutil
import statistics
import subprocess
import time
from importlib import metadata
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.utils import HIREDIS_AVAILABLE

from .. import native
from ..config import MiB, RemoteTierConfig
from ..keys import BlockKey, Namespace
from ..tiers.remote import _READ_CHUNK, HIT, RemoteTier, command_packer
from .host import _cpu_name

DEFAULT_REMOTE_PAGE_SIZES = (256 << 10, 1 << 20, 4 << 20)
BENCH_NAMESPACE = Namespace(model="kvtier-remote-bench")
BENCHMARK_KEY = b"key:__rand_int__"  # the key redis-benchmark's SET and GET tests use


@dataclass(frozen=True, slots=True)
class RemoteBenchSettings:
    """What to measure.

    Args:
        url: ``redis://host:port/db``, ``rediss://...`` or ``unix://path`` of the server.
        password: AUTH password (``""``: none, or the one in ``url``).
        page_sizes: page sizes in bytes, each measured separately.
        batch: pages per pipelined call (kvtier and the ceiling alike).
        trials: measured trials (after one discarded warm-up); the median is kept.
        bytes_per_run: page bytes per trial and side, in whole batches (Redis holds 2x that).
        use_redis_benchmark: also run redis-benchmark when it is on PATH.
    """

    url: str
    password: str = field(default="", repr=False)
    page_sizes: tuple[int, ...] = DEFAULT_REMOTE_PAGE_SIZES
    batch: int = 16
    trials: int = 5
    bytes_per_run: int = 64 * MiB
    use_redis_benchmark: bool = True

    def __post_init__(self) -> None:
        for name in ("batch", "trials", "bytes_per_run"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.page_sizes or min(self.page_sizes) <= 0:
            raise ValueError(f"page sizes must be positive, got {self.page_sizes}")


@dataclass(frozen=True, slots=True)
class RemoteResult:
    """Median bytes/s for one page size; ``bench_*`` is redis-benchmark's (None if not run)."""

    page_bytes: int
    batch: int
    pages: int            # pages written and read per trial and side
    write: float          # kvtier put_many
    read: float           # kvtier get_many into caller buffers
    raw_write: float      # redis-py pipelined SET, the tier's client settings
    raw_read: float       # redis-py pipelined GET, the tier's client settings
    default_write: float  # the same on a client with redis-py's defaults (context)
    default_read: float
    bench_write: float | None
    bench_read: float | None
    verified_pages: int   # pages the warm-up read back from the tier as HITs with equal bytes
    trials: dict[str, list[float]] = field(default_factory=dict)  # every measured trial

    def vs(self, ceiling: str = "raw") -> tuple[float | None, float | None]:
        """kvtier's (write, read) over those of ``ceiling``: raw, default or bench (None: not run)."""
        theirs = getattr(self, f"{ceiling}_write"), getattr(self, f"{ceiling}_read")
        return tuple(None if x is None else mine / x for mine, x in zip((self.write, self.read), theirs))


@dataclass(frozen=True, slots=True)
class RemoteBenchResult:
    settings: RemoteBenchSettings
    url: str                      # without any password
    server: str                   # e.g. "redis 7.0.15"
    client: str                   # redis-py and hiredis versions
    redis_benchmark: str | None   # its --version (it runs with -c 1 -P batch), None when not run
    redis_benchmark_note: str     # why it was not run ("" when it was)
    cpu: str
    results: list[RemoteResult] = field(default_factory=list)

    def to_json(self) -> dict:
        doc = asdict(self)
        doc["settings"].pop("password")
        doc["settings"]["url"] = self.url
        for row, result in zip(doc["results"], self.results):
            for name, prefix in (("raw", ""), ("default", "default_"), ("bench", "bench_")):
                row[f"{prefix}write_ratio"], row[f"{prefix}read_ratio"] = result.vs(name)
        return doc


def run_remote_bench(settings: RemoteBenchSettings,
                     progress: Callable[[str], None] = lambda step: None) -> RemoteBenchResult:
    """Measure every page size (``progress`` once per trial, ``remote_bench_steps`` in all)."""
    prefix = f"kvtier-bench:{secrets.token_hex(6)}:"
    config = RemoteTierConfig(url=settings.url, password=settings.password, codec="none",
                              write_mode="sync", key_prefix=prefix,
                              allow_insecure=True)  # only the bench's own random pages, deleted after
    client, default = raw_client(config), raw_client(config, like_tier=False)
    client.ping()  # an unreachable server or refused credentials raise here, with redis-py's message
    tier = RemoteTier(config)
    if not tier.available:
        raise ConnectionError(f"remote bench: the tier could not reach {config.redacted_url}")
    tool = shutil.which("redis-benchmark") if settings.use_redis_benchmark else None
    bench_args, note = _redis_benchmark_args(config, tool, client)
    results = []
    try:
        version = client.info("server").get("redis_version", "?")
        for page_bytes in settings.page_sizes:
            row = _page_size(tier, (client, default), prefix, page_bytes, settings, progress)
            if bench_args is not None:
                try:
                    bench = _redis_benchmark(client, bench_args, page_bytes, settings.batch,
                                             row.pages * settings.trials)
                except (subprocess.SubprocessError, RuntimeError) as exc:
                    text = (getattr(exc, "stderr", None) or str(exc)).strip() or repr(exc)
                    bench_args, note = None, f"redis-benchmark failed: {text.splitlines()[-1]}"
                else:
                    row = dataclasses.replace(row, bench_write=bench[0], bench_read=bench[1])
            results.append(row)
    finally:
        for closable in (tier, client, default):
            closable.close()
    tool_text = None if bench_args is None else subprocess.run(
        [bench_args[0], "--version"], capture_output=True, text=True).stdout.strip()
    return RemoteBenchResult(settings, config.redacted_url, f"redis {version}", _client_versions(),
                             tool_text, note, _cpu_name(), results)


def remote_bench_steps(settings: RemoteBenchSettings) -> int:
    """How many times ``run_remote_bench`` calls ``progress``."""
    return len(settings.page_sizes) * (settings.trials + 1)


def raw_client(config: RemoteTierConfig, *, like_tier: bool = True) -> redis.Redis:
    """A plain redis-py client with the tier's socket, retry and TLS options, and with
    ``like_tier`` its packer and socket read size too (else redis-py's defaults for those)."""
    options: dict[str, Any] = dict(socket_connect_timeout=config.connect_timeout_s,
                                   socket_timeout=config.timeout_s, retry=Retry(NoBackoff(), 0),
                                   health_check_interval=0)
    if like_tier:  # as RemoteTier._connect (tests/test_bench_remote.py checks they agree)
        options.update(command_packer=command_packer(), socket_read_size=_READ_CHUNK)
    options.update({name: getattr(config, name) for name in ("username", "password") if getattr(config, name)})
    if config.url.startswith("rediss://"):
        options.update(ssl_ca_certs=config.tls_ca_certs or None, ssl_certfile=config.tls_certfile or None,
                       ssl_keyfile=config.tls_keyfile or None, ssl_check_hostname=config.tls_verify,
                       ssl_cert_reqs="required" if config.tls_verify else "none")
    return redis.Redis.from_url(config.url, **options)


def _page_size(tier: RemoteTier, clients: tuple[redis.Redis, redis.Redis], prefix: str,
               page_bytes: int, s: RemoteBenchSettings, progress: Callable[[str], None]) -> RemoteResult:
    count = max(s.batch, s.bytes_per_run // page_bytes)
    count -= count % s.batch
    pages = [os.urandom(page_bytes) for _ in range(s.batch)]
    keys = [BENCH_NAMESPACE.key_for_bytes(i.to_bytes(8, "little")) for i in range(count)]
    names = [f"{prefix}raw:{i}".encode() for i in range(count)]
    outs = [memoryview(native.alloc_bytearray(page_bytes)) for _ in range(s.batch)]
    sides: dict[str, Callable[[bool], tuple[float, float, int]]] = {
        "": lambda check: _kvtier_trial(tier, keys, pages, outs, s.batch, check),
        "raw_": lambda check: _raw_trial(clients[0], names, pages, s.batch, check),
        "default_": lambda check: _raw_trial(clients[1], names, pages, s.batch, check)}
    runs: dict[str, list[float]] = {f"{side}{op}": [] for side in sides for op in ("write", "read")}
    verified = 0
    try:
        for trial in range(s.trials + 1):  # trial 0: the warm-up, which also checks the bytes
            for side in [*sides][trial % 3:] + [*sides][:trial % 3]:
                write_s, read_s, checked = sides[side](trial == 0)
                verified += checked
                runs[f"{side}write"].append(count * page_bytes / write_s)
                runs[f"{side}read"].append(count * page_bytes / read_s)
            progress(f"{page_bytes >> 10} KiB pages, trial {trial + 1} of {s.trials + 1}")
    finally:
        tier.delete(keys)
        clients[0].delete(*names)
    kept = {name: values[1:] for name, values in runs.items()}  # the warm-up is discarded
    medians = {name: statistics.median(values) for name, values in kept.items()}
    return RemoteResult(page_bytes, s.batch, count, **medians, bench_write=None, bench_read=None,
                        verified_pages=verified, trials=kept)


def _kvtier_trial(tier: RemoteTier, keys: Sequence[BlockKey], pages: Sequence[bytes],
                  outs: Sequence[memoryview], batch: int, check: bool) -> tuple[float, float, int]:
    """(write seconds, read seconds, pages verified) of every key through the tier."""
    views = [memoryview(page) for page in pages]
    start = time.perf_counter()
    for i in range(0, len(keys), batch):
        if not all(tier.put_many(keys[i:i + batch], views, window_s=None)):
            raise RuntimeError(f"remote bench: the tier refused a write ({tier.stats_extra()})")
    write_s = time.perf_counter() - start
    verified = 0
    start = time.perf_counter()
    for i in range(0, len(keys), batch):
        reads = tier.get_many(keys[i:i + batch], outs)
        if not all(read.status == HIT for read in reads):
            raise RuntimeError(f"remote bench: the tier missed pages it had just written: {reads[0].status}")
        if check and any(out != page for out, page in zip(outs, pages)):
            raise RuntimeError("remote bench: the tier read back other bytes than it wrote")
        verified += len(reads) if check else 0
    return write_s, time.perf_counter() - start, verified


def _raw_trial(client: redis.Redis, names: Sequence[bytes], pages: Sequence[bytes], batch: int,
               check: bool) -> tuple[float, float, int]:
    """(write seconds, read seconds, 0) of pipelined SETs then GETs of every name."""
    start = time.perf_counter()
    for i in range(0, len(names), batch):
        pipe = client.pipeline(transaction=False)
        for name, page in zip(names[i:i + batch], pages):
            pipe.set(name, page)
        if not all(reply is True for reply in pipe.execute()):
            raise RuntimeError("remote bench: Redis refused a raw SET")
    write_s = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(0, len(names), batch):
        pipe = client.pipeline(transaction=False)
        for name in names[i:i + batch]:
            pipe.get(name)
        values = pipe.execute()
        if any(value is None for value in values) or (check and values != list(pages)):
            raise RuntimeError("remote bench: a raw GET did not return what was SET")
    return write_s, time.perf_counter() - start, 0


def _redis_benchmark_args(config: RemoteTierConfig, tool: str | None,
                          client: redis.Redis) -> tuple[list[str] | None, str]:
    """redis-benchmark's arguments for the server, db and credentials ``client`` resolved from
    the URL (redis-py's own parse), or None and why it is not run."""
    kw = client.connection_pool.connection_kwargs
    reason = ("not on PATH (or turned off)" if tool is None
              else "TLS URL (its --tls options are not wired up here)" if config.url.startswith("rediss://")
              else f"the key {BENCHMARK_KEY.decode()} it writes already exists"
              if client.exists(BENCHMARK_KEY) else "")
    if reason:
        return None, f"redis-benchmark not run: {reason}"
    args = [str(tool), *(["-s", kw["path"]] if "path" in kw else ["-h", kw["host"], "-p", f"{kw['port']}"])]
    args += ["--dbnum", str(kw["db"])] if kw.get("db") else []
    if kw.get("password"):
        args += [*(["--user", kw["username"]] if kw.get("username") else []), "-a", kw["password"]]
    return args, ""


def _redis_benchmark(client: redis.Redis, args: list[str], page_bytes: int, batch: int,
                     requests: int) -> tuple[float | None, float | None]:
    """(SET, GET) bytes/s from ``redis-benchmark -c 1 -P batch -d page_bytes -t set,get``."""
    command = [*args, "-t", "set,get", "-c", "1", "-P", f"{batch}", "-d", f"{page_bytes}", "-n", f"{requests}"]
    try:
        out = subprocess.run([*command, "--csv"], capture_output=True, text=True, check=True,
                             timeout=600).stdout
    finally:
        client.delete(BENCHMARK_KEY)
    rps = {row["test"]: float(row["rps"]) for row in csv.DictReader(out.splitlines()) if "rps" in row}
    if "SET" not in rps or "GET" not in rps:
        raise RuntimeError(f"redis-benchmark printed no SET/GET figures: {out!r}")
    return rps["SET"] * page_bytes, rps["GET"] * page_bytes


def _client_versions() -> str:
    hiredis = f" + hiredis {metadata.version('hiredis')}" if HIREDIS_AVAILABLE else " (no hiredis)"
    return f"redis-py {redis.__version__}{hiredis}"
