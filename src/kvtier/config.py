"""Typed configuration: dataclasses with validation, ``from_env`` (``KVTIER_*``) and ``from_file``.

Every knob is listed with its default and environment variable in docs/configuration.md.
Environment names are ``KVTIER_<FIELD>`` for store fields and ``KVTIER_<TIER>_<FIELD>`` for a
tier's fields (e.g. ``KVTIER_HOST_CAPACITY_BYTES=8GiB``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError
from .units import GiB, MiB, format_size, parse_duration, parse_size  # also kvtier.config's

POLICIES = ("lru", "ttl")
REFRESH_MODES = ("write", "read")
FSYNC_MODES = ("always", "batch", "never")
WRITE_MODES = ("write_back", "write_through")
# KVTIER_* variables that are not settings: read by the native module, the build (setup.py)
# or the repo's scripts. StoreConfig.from_env accepts them; any other unknown one is an error.
OTHER_ENV = frozenset({"KVTIER_NATIVE", "KVTIER_IO_ENGINE", "KVTIER_CHECKSUM_ISA", "KVTIER_NO_CUDA",
                       "KVTIER_REQUIRE_CUDA", "KVTIER_CUDA_ARCHS", "KVTIER_VLLM_VENV"})


@dataclass(frozen=True, slots=True)
class HostTierConfig:
    """The host DRAM tier: one preallocated page-aligned arena carved into fixed-size slots.

    Args:
        capacity_bytes: arena size; rounded down to a whole number of slots.
        slot_bytes: size of one slot = the largest page this tier stores. A page smaller than a
            slot still occupies a whole slot, so set it to your page size (``kvtier size``).
        prefault: touch every arena page at start so later puts never page-fault and RSS is
            flat from the start (costs ~0.1 s per GiB at open).
        verify_checksums: store an xxh3-64 checksum per page and verify it on every read; a
            mismatch is a miss with reason ``corrupt``. Off by default: DRAM is ECC-protected
            and hashing costs bandwidth; persistent tiers always verify.
        cuda_pin: page-lock the arena with ``cudaHostRegister`` when a CUDA device is usable,
            so copies to and from GPUs are DMA at full PCIe speed (no effect without one;
            failure to pin is reported in ``stats()``, never an error).
    """

    capacity_bytes: int = 1 * GiB
    slot_bytes: int = 1 * MiB
    prefault: bool = True
    verify_checksums: bool = False
    cuda_pin: bool = True

    def __post_init__(self) -> None:
        _set_sizes(self, ("capacity_bytes", "slot_bytes"))
        if self.slot_bytes <= 0:
            raise ConfigError(f"host.slot_bytes must be > 0, got {self.slot_bytes}")
        if self.capacity_bytes < self.slot_bytes:
            raise ConfigError(
                f"host.capacity_bytes ({format_size(self.capacity_bytes)}) must hold at least one "
                f"slot of host.slot_bytes ({format_size(self.slot_bytes)})"
            )

    @property
    def slot_count(self) -> int:
        return self.capacity_bytes // self.slot_bytes


@dataclass(frozen=True, slots=True)
class DiskTierConfig:
    """The NVMe disk tier: fixed-size slot files plus a durable LMDB index (see docs/ARCHITECTURE.md).

    Args:
        paths: one or more directories (one per drive); slots are striped across them. The
            first also holds the LMDB index. Created if missing. Strings or a comma-separated
            string (``"/nvme0/kv,/nvme1/kv"``).
        capacity_bytes: total page capacity across all paths, rounded down to whole slots.
            Files are preallocated when that leaves ``min_free_bytes`` free, else sparse.
        slot_bytes: the largest page the tier stores; ``0`` (default) means the host tier's.
        min_free_bytes: free-space floor per filesystem; the tier stops taking new slots (and
            evicts by policy instead) when a write would leave less free space than this.
        direct_io: read and write with ``O_DIRECT`` (no page cache). Filesystems that refuse it
            (tmpfs) fall back to buffered I/O, shown in ``stats()`` as ``direct_io=False``.
        fsync: ``"always"``: every put/batch is on stable storage (data ``fdatasync``, then a
            synced index commit) before it returns; ``"batch"``: data is written before its index
            entry is committed, and both are flushed to stable storage every ``sync_interval_s``
            and at close (a killed *process* loses nothing; a power cut loses at most that
            interval, and a page written but not flushed then reads as ``corrupt``, never as
            wrong bytes); ``"never"``: no flushes at all (scratch directories, tests).
        sync_interval_s: the flush period of ``fsync="batch"``.
        io_threads: threads for concurrent disk I/O (0: automatic).
        write_mode: ``"write_back"``: a page reaches disk when the host tier evicts it;
            ``"write_through"``: every put is also written to disk before it returns.
        promote_on_read: a disk hit is also copied into the host tier (the disk copy stays, so
            evicting it again costs no write).
        flush_on_close: ``close()`` first writes every page that is only in the host tier to
            disk, so a clean shutdown and restart lose nothing.
        namespace: a label of what this directory caches (e.g. ``Namespace(...).digest.hex()``
            or ``"llama-3-8b@rev1"``); a directory created with one label refuses to open with
            another. Empty: not checked.
        codec: how pages are stored on this tier: ``"none"``, ``"zstd"``, ``"shuffle-zstd"``
            (byte planes, then zstd: the best ratio on KV pages), or ``"auto"`` (default:
            ``shuffle-zstd`` only while the measured codec speed and ratio make the tier faster
            end to end than ``none`` does, else ``none``; see ``kvtier.codec``). Lossless
            always; each page records its codec, so the setting may change between runs.
        codec_level: the zstd level (1 is fastest; higher trades speed for a little ratio).
        codec_element_bytes: element size of the pages' numbers for ``shuffle-zstd``: 2 for
            fp16/bf16 (default), 1 for fp8 (bit planes), 4 for fp32. A wrong value costs ratio,
            never correctness.
    """

    paths: tuple[str, ...] = ()
    capacity_bytes: int = 64 * GiB
    slot_bytes: int = 0
    min_free_bytes: int = 1 * GiB
    direct_io: bool = True
    fsync: str = "batch"
    sync_interval_s: float = 1.0
    io_threads: int = 0
    write_mode: str = "write_back"
    promote_on_read: bool = True
    flush_on_close: bool = True
    namespace: str = ""
    codec: str = "auto"
    codec_level: int = 1
    codec_element_bytes: int = 2

    def __post_init__(self) -> None:
        _set_sizes(self, ("capacity_bytes", "slot_bytes", "min_free_bytes"))
        paths = self.paths
        if isinstance(paths, (str, os.PathLike)):
            paths = [p for p in str(paths).split(",") if p.strip()]
        paths = tuple(str(Path(p).expanduser()) for p in paths)
        object.__setattr__(self, "paths", paths)
        if not paths:
            raise ConfigError("disk.paths must name at least one directory")
        if len(set(paths)) != len(paths):
            raise ConfigError(f"disk.paths has duplicates: {list(paths)}")
        if self.slot_bytes < 0 or self.min_free_bytes < 0 or self.io_threads < 0:
            raise ConfigError("disk.slot_bytes, disk.min_free_bytes and disk.io_threads must be >= 0")
        if self.fsync not in FSYNC_MODES:
            raise ConfigError(f"disk.fsync must be one of {FSYNC_MODES}, got {self.fsync!r}")
        if self.write_mode not in WRITE_MODES:
            raise ConfigError(f"disk.write_mode must be one of {WRITE_MODES}, got {self.write_mode!r}")
        if not self.sync_interval_s > 0:
            raise ConfigError(f"disk.sync_interval_s must be > 0, got {self.sync_interval_s!r}")
        if self.capacity_bytes <= 0:
            raise ConfigError(f"disk.capacity_bytes must be > 0, got {self.capacity_bytes}")
        _check_codec("disk", self.codec, self.codec_level, self.codec_element_bytes)


@dataclass(frozen=True, slots=True)
class DeviceTierConfig:
    """The device tier: a write-through cache of pages in GPU memory (HBM), in front of the host
    tier (see docs/gpu.md). Needs a usable CUDA device; off unless configured.

    A ``put`` of a CUDA tensor on ``device`` also copies the page into an HBM slot (device to
    device); a ``get_into`` a CUDA tensor that finds it there is one device-to-device copy, with
    no host traffic. The host tier still receives every page, so dropping an HBM copy loses
    nothing and costs no write.

    Args:
        capacity_bytes: HBM set aside for pages, one allocation at start, in whole slots.
        slot_bytes: one slot, the largest page this tier caches; ``0`` (default) means the host
            tier's ``slot_bytes``. At most ``host.slot_bytes``: every page here is in the host
            tier too.
        device: the GPU, ``"cuda"`` (the current device) or ``"cuda:N"``. CUDA tensors on
            other GPUs bypass the tier.
        promote_on_read: a page read from the host or disk tier into a CUDA tensor on
            ``device`` is also copied into HBM.
    """

    capacity_bytes: int = 1 * GiB
    slot_bytes: int = 0
    device: str = "cuda"
    promote_on_read: bool = True

    def __post_init__(self) -> None:
        _set_sizes(self, ("capacity_bytes", "slot_bytes"))
        if self.slot_bytes < 0:
            raise ConfigError(f"device.slot_bytes must be >= 0 (0: host.slot_bytes), got {self.slot_bytes}")
        if self.capacity_bytes <= 0:
            raise ConfigError(f"device.capacity_bytes must be > 0, got {self.capacity_bytes}")
        if self.slot_bytes and self.capacity_bytes < self.slot_bytes:
            raise ConfigError(
                f"device.capacity_bytes ({format_size(self.capacity_bytes)}) must hold at least one "
                f"slot of device.slot_bytes ({format_size(self.slot_bytes)})")
        if not isinstance(self.device, str) or not re.fullmatch(r"cuda(:\d+)?", self.device):
            raise ConfigError(f"device.device must be 'cuda' or 'cuda:N', got {self.device!r}")


REMOTE_WRITE_MODES = ("async", "sync")


@dataclass(frozen=True, slots=True)
class RemoteTierConfig:
    """The shared remote tier on Redis or Redis Cluster (see docs/remote.md).

    Every put is also written to Redis (``write_mode``), so other stores with the same
    namespace (other processes, other hosts) see the page; a read that misses every local
    tier asks Redis. Redis keys are ``key_prefix`` + the hex of the 32-byte block key (a
    namespace digest and a chained prefix digest): no user text, and tenants with different
    ``Namespace.tenant_salt`` never share a key.

    Args:
        url: ``redis://host:port/db`` or ``rediss://...`` (TLS). Credentials may be given here
            too, but ``username``/``password`` (``KVTIER_REMOTE_PASSWORD``) keep them out of logs.
        cluster: talk to a Redis Cluster (``url`` names any node).
        username / password: AUTH/ACL credentials (``""``: none).
        tls_ca_certs: CA bundle that signed the server's certificate (``""``: system CAs).
        tls_certfile / tls_keyfile: client certificate and key, for servers that require them.
        tls_verify: check the server's certificate and host name (turn off only for tests).
        capacity_bytes: stop writing while Redis reports more than this in ``used_memory``
            (sampled at most once a second; ``0``: no limit of kvtier's own). Evicting is
            Redis's job: set ``maxmemory`` and ``maxmemory-policy allkeys-lru`` (or
            ``volatile-ttl``) on the server.
        ttl_s: the cache window of pages in Redis (``PX`` expiry); ``None``: each page's own
            window (``StoreConfig.ttl_s`` or the put's ``ttl_s``), no expiry if it has none.
            With ``StoreConfig.ttl_refresh="read"`` a remote hit extends it again.
        connect_timeout_s: deadline for opening a connection.
        timeout_s: deadline of each socket read or write. A down or paused server costs a
            call at most about this much before it counts as ``tier_unavailable``.
        max_connections: connections in the pool; a caller waits at most ``connect_timeout_s``
            for a free one.
        key_prefix: prepended to every key (e.g. per deployment or per model fleet).
        allow_insecure: allow a non-loopback server without credentials (refused otherwise:
            anyone on the network could read or plant KV pages).
        write_mode: ``"async"`` (default): a put returns once the page is in the host tier and
            a transfer-engine worker writes it to Redis in pipelined batches (``flush()`` waits
            for them); ``"sync"``: a put returns after the Redis write (bounded by the deadlines).
        max_pending_bytes: async writes waiting for Redis at most; a put beyond it skips its
            Redis copy (counted as ``writes_dropped``) instead of growing memory or blocking.
        promote_on_read: a remote hit is also copied into the host tier.
        breaker_failures: consecutive failed calls that open the circuit breaker; while open,
            remote reads are ``tier_unavailable`` misses at no cost and writes are skipped.
        breaker_backoff_s / breaker_max_backoff_s: how long the breaker stays open before one
            trial call (half-open); the wait doubles after each failed trial, up to the maximum.
        codec / codec_level / codec_element_bytes: as for the disk tier; ``auto`` compresses
            only when the measured network bandwidth makes that faster end to end.
    """

    url: str = ""
    cluster: bool = False
    username: str = ""
    password: str = field(default="", repr=False)
    tls_ca_certs: str = ""
    tls_certfile: str = ""
    tls_keyfile: str = ""
    tls_verify: bool = True
    capacity_bytes: int = 0
    ttl_s: float | None = None
    connect_timeout_s: float = 0.5
    timeout_s: float = 1.0
    max_connections: int = 16
    key_prefix: str = "kvtier:"
    allow_insecure: bool = False
    write_mode: str = "async"
    max_pending_bytes: int = 256 * MiB
    promote_on_read: bool = True
    breaker_failures: int = 3
    breaker_backoff_s: float = 0.5
    breaker_max_backoff_s: float = 30.0
    codec: str = "none"
    codec_level: int = 1
    codec_element_bytes: int = 2

    def __post_init__(self) -> None:
        _set_sizes(self, ("capacity_bytes", "max_pending_bytes"))
        if not isinstance(self.url, str) or not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"remote.url must be redis://host:port, rediss://... or unix://path, got {self.url!r}")
        if self.write_mode not in REMOTE_WRITE_MODES:
            raise ConfigError(f"remote.write_mode must be one of {REMOTE_WRITE_MODES}, got {self.write_mode!r}")
        if self.ttl_s is not None:
            object.__setattr__(self, "ttl_s", parse_duration(self.ttl_s))
        for name in ("connect_timeout_s", "timeout_s", "breaker_backoff_s", "breaker_max_backoff_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"remote.{name} must be > 0 seconds, got {value!r}")
        for name in ("max_connections", "breaker_failures"):
            if isinstance(getattr(self, name), bool) or getattr(self, name) < 1:
                raise ConfigError(f"remote.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.capacity_bytes < 0 or self.max_pending_bytes < 0:
            raise ConfigError("remote.capacity_bytes and remote.max_pending_bytes must be >= 0")
        if bool(self.tls_certfile) != bool(self.tls_keyfile):
            raise ConfigError("remote.tls_certfile and remote.tls_keyfile go together: set both or neither")
        _check_codec("remote", self.codec, self.codec_level, self.codec_element_bytes)
        if not self.allow_insecure and not self.authenticated and not self.loopback:
            raise ConfigError(
                f"remote.url {self.redacted_url} is not a loopback address and no credentials are "
                "set: anyone who can reach it could read or plant KV pages. Set remote.password "
                "(and remote.username for an ACL user) or a TLS client certificate, or "
                "allow_insecure=True if the network is trusted")

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                          if f.name not in ("url", "password"))
        return f"RemoteTierConfig(url={self.redacted_url!r}, {shown})"

    @property
    def authenticated(self) -> bool:
        """Whether kvtier presents credentials (a password or a TLS client certificate)."""
        from urllib.parse import urlsplit

        return bool(self.password or urlsplit(self.url).password or self.tls_certfile)

    @property
    def loopback(self) -> bool:
        """Whether ``url`` names this machine only (a unix socket, localhost or 127.0.0.0/8, ::1)."""
        import ipaddress
        from urllib.parse import urlsplit

        if self.url.startswith("unix://"):
            return True
        host = urlsplit(self.url).hostname or ""
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    @property
    def redacted_url(self) -> str:
        """``url`` without any password in it (for messages and logs)."""
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Configuration of a ``TieredStore``.

    Args:
        host: the host DRAM tier (every put lands in it).
        disk: the NVMe tier behind it (``None``: no disk tier).
        remote: the shared Redis tier behind the local ones (``None``: no remote tier).
        device: a write-through cache of pages in GPU memory in front of the host tier
            (``None``: none; needs CUDA).
        policy: eviction order within a tier: ``"lru"`` (least recently used first) or ``"ttl"``
            (earliest deadline first, like providers' cache windows).
        ttl_s: default cache window in seconds for every put (``None``: no expiry). A put's own
            ``ttl_s`` overrides it. Expired blocks are misses with reason ``expired``.
        ttl_refresh: ``"write"``: only a put extends a block's deadline; ``"read"``: every hit
            extends it too.
        max_pinned_fraction: at most this fraction of a tier's capacity may be pinned; pins
            beyond it are refused (``pin`` returns False, ``put(pin=True)`` returns False).
        ghost_entries: how many recently evicted/expired/corrupt keys are remembered so a later
            miss reports why (``evicted``/``expired``/``corrupt`` instead of ``never_stored``).
        async_workers: threads serving ``put_async``/``get_async`` (started on first use).
        copy_threads: threads of the native copy for large pages (0: automatic).
        transfer_queue_depth: jobs each transfer-engine route (``"disk->host"``, ...) queues
            before a submitter blocks (backpressure; see ``kvtier.transfer``).
        block_tokens: tokens per page, for ``plan()`` (load vs recompute); a call may override it.
        metrics_port: serve the store's metrics to Prometheus on this port (``None``: no
            exporter; ``0``: any free port). ``TieredStore(metrics_port=...)`` overrides it.
            Stores of one process with the same port share one exporter (docs/metrics.md).
        metrics_addr: the address the exporter listens on; loopback by default, so set it
            (e.g. ``"0.0.0.0"``) for a Prometheus server on another host.
        metrics_name: the ``store`` label of this store's metrics; unique per process.
    """

    host: HostTierConfig = field(default_factory=HostTierConfig)
    disk: DiskTierConfig | None = None
    remote: RemoteTierConfig | None = None
    device: DeviceTierConfig | None = None
    policy: str = "lru"
    ttl_s: float | None = None
    ttl_refresh: str = "write"
    max_pinned_fraction: float = 0.5
    ghost_entries: int = 65536
    async_workers: int = 4
    copy_threads: int = 0
    transfer_queue_depth: int = 256
    block_tokens: int = 256
    metrics_port: int | None = None
    metrics_addr: str = "127.0.0.1"
    metrics_name: str = "default"

    def __post_init__(self) -> None:
        if not isinstance(self.host, HostTierConfig):
            raise ConfigError(f"host must be a HostTierConfig, got {type(self.host).__name__}")
        if self.disk is not None:
            if not isinstance(self.disk, DiskTierConfig):
                raise ConfigError(f"disk must be a DiskTierConfig or None, got {type(self.disk).__name__}")
            if self.disk.slot_bytes == 0:
                object.__setattr__(self, "disk", dataclasses.replace(self.disk, slot_bytes=self.host.slot_bytes))
            if self.disk.slot_bytes < self.host.slot_bytes:
                raise ConfigError(
                    f"disk.slot_bytes ({self.disk.slot_bytes}) must be >= host.slot_bytes "
                    f"({self.host.slot_bytes}): every host page must fit a disk slot")
            if self.disk.capacity_bytes < self.disk.slot_bytes:
                raise ConfigError("disk.capacity_bytes must hold at least one slot")
        if self.device is not None:
            if not isinstance(self.device, DeviceTierConfig):
                raise ConfigError(f"device must be a DeviceTierConfig or None, got {type(self.device).__name__}")
            if self.device.slot_bytes == 0:
                object.__setattr__(self, "device", dataclasses.replace(self.device, slot_bytes=self.host.slot_bytes))
            if self.device.slot_bytes > self.host.slot_bytes:
                raise ConfigError(
                    f"device.slot_bytes ({self.device.slot_bytes}) must be <= host.slot_bytes "
                    f"({self.host.slot_bytes}): every page in HBM is in the host tier too")
            if self.device.capacity_bytes < self.device.slot_bytes:
                raise ConfigError(
                    f"device.capacity_bytes ({format_size(self.device.capacity_bytes)}) must hold at "
                    f"least one slot of {format_size(self.device.slot_bytes)}")
        if self.remote is not None and not isinstance(self.remote, RemoteTierConfig):
            raise ConfigError(f"remote must be a RemoteTierConfig or None, got {type(self.remote).__name__}")
        if self.policy not in POLICIES:
            raise ConfigError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        if self.ttl_refresh not in REFRESH_MODES:
            raise ConfigError(f"ttl_refresh must be one of {REFRESH_MODES}, got {self.ttl_refresh!r}")
        if self.ttl_s is not None and not (isinstance(self.ttl_s, (int, float)) and self.ttl_s > 0):
            raise ConfigError(f"ttl_s must be a positive number of seconds or None, got {self.ttl_s!r}")
        if not (0.0 <= self.max_pinned_fraction <= 1.0):
            raise ConfigError(f"max_pinned_fraction must be in [0, 1], got {self.max_pinned_fraction}")
        for name in ("ghost_entries", "copy_threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("async_workers", "transfer_queue_depth", "block_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        port = self.metrics_port
        if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535):
            raise ConfigError(f"metrics_port must be a port number from 0 to 65535 (0: any free "
                              f"port) or None, got {port!r}")
        for name in ("metrics_addr", "metrics_name"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(f"{name} must be a non-empty string, got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "StoreConfig":
        """Build from a nested mapping (``{"policy": "ttl", "host": {"capacity_bytes": "8GiB"}}``).

        Unknown keys raise ``ConfigError`` naming the accepted ones.
        """
        values = dict(values)
        tiers = TIER_SECTIONS
        kwargs: dict[str, Any] = {}
        for name, tier_cls in tiers.items():
            if name in values:
                section = values.pop(name)
                if not isinstance(section, Mapping):
                    raise ConfigError(f"[{name}] must be a table of settings, got {section!r}")
                kwargs[name] = _build(tier_cls, section, prefix=f"{name}.")
        kwargs.update(_coerce_fields(cls, values, prefix="", skip=set(tiers)))
        return cls(**kwargs)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> "StoreConfig":
        """Read a TOML file with the same structure as ``from_dict``."""
        with Path(path).open("rb") as fh:
            try:
                return cls.from_dict(tomllib.load(fh))
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{path}: not valid TOML: {exc}") from None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "StoreConfig":
        """Read ``KVTIER_*`` variables; unset ones keep their defaults, unknown ones raise."""
        environ = os.environ if environ is None else environ
        nested: dict[str, Any] = {}
        known: set[str] = set(OTHER_ENV)
        sections = TIER_SECTIONS
        for f in dataclasses.fields(cls):
            if f.name in sections:
                continue
            known.add(env_name(f.name))
            if env_name(f.name) in environ:
                nested[f.name] = environ[env_name(f.name)]
        for section, tier_cls in sections.items():
            for f in dataclasses.fields(tier_cls):
                var = env_name(f.name, section)
                known.add(var)
                if var in environ:
                    nested.setdefault(section, {})[f.name] = environ[var]
        unknown = sorted(k for k in environ if k.startswith("KVTIER_") and k not in known)
        if unknown:
            raise ConfigError(f"unknown environment variables {unknown}; known: {sorted(known)}")
        return cls.from_dict(nested)


# The tier sections of a StoreConfig: a [name] table, KVTIER_<NAME>_* variables.
TIER_SECTIONS = {"host": HostTierConfig, "disk": DiskTierConfig, "remote": RemoteTierConfig,
             "device": DeviceTierConfig}


def env_name(field_name: str, section: str | None = None) -> str:
    """The environment variable of a config field (``KVTIER_HOST_SLOT_BYTES``)."""
    parts = ["KVTIER", section, field_name] if section else ["KVTIER", field_name]
    return "_".join(parts).upper()


def _build(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    return cls(**_coerce_fields(cls, values, prefix))


def _coerce_fields(cls: type, values: Mapping[str, Any], prefix: str, skip: set[str] = frozenset()) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init} - skip
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown setting(s) {[prefix + u for u in unknown]}; known: {sorted(prefix + n for n in names)}")
    return {name: _coerce(prefix + name, hints[name], raw) for name, raw in values.items()}


def _coerce(name: str, hint: Any, raw: Any) -> Any:
    """Convert a string/TOML value to the field's type, with an error that names the field."""
    if typing.get_origin(hint) is tuple and isinstance(raw, (list, tuple)):
        return tuple(raw)  # a TOML array; a string is split by the field's own validation
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if optional and (raw is None or (isinstance(raw, str) and raw.strip().lower() in ("", "none"))):
        return None
    try:
        if base is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true/false")
        if base is int:
            return parse_size(raw) if name.endswith("_bytes") else int(raw)
        if base is float:  # seconds fields also take "500ms", "5m", "1h"
            return parse_duration(raw) if name.endswith("_s") and isinstance(raw, str) else float(raw)
        if base is str:
            return str(raw)
    except (ValueError, ConfigError) as exc:
        raise ConfigError(f"{name}: cannot use {raw!r}: {exc}") from None
    return raw


def _set_sizes(obj: Any, names: tuple[str, ...]) -> None:
    """Accept ``"64MiB"`` strings for size fields of a frozen dataclass; reject non-ints."""
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, str):
            object.__setattr__(obj, name, parse_size(value))
        elif not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{name} must be an int number of bytes or a size string, got {value!r}")


def _check_codec(tier: str, codec: str, level: int, element_bytes: int) -> None:
    from .codec import CODEC_CHOICES, ELEMENT_BYTES

    if codec not in CODEC_CHOICES:
        raise ConfigError(f"{tier}.codec must be one of {CODEC_CHOICES}, got {codec!r}")
    if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 19:
        raise ConfigError(f"{tier}.codec_level must be an int from 1 to 19, got {level!r}")
    if element_bytes not in ELEMENT_BYTES:
        raise ConfigError(f"{tier}.codec_element_bytes must be one of {ELEMENT_BYTES}, got {element_bytes!r}")
