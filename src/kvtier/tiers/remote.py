"""The shared remote tier: pages as Redis string values, one pipelined round trip per batch.

A value is ``header | window | payload``: the kvtier page header (``pageformat``: magic,
codec, lengths, xxh3 of the raw page, the full 32-byte block key, its own checksum), then the
page's cache window in milliseconds (u64, 0 = none, used to extend it on a read), then the
payload as the codec stored it. A reader accepts a value only if the header is intact, names
exactly the key asked for, the lengths agree with the value's size and the decoded page
matches the checksum: a corrupt, truncated or foreign value is a miss, never wrong bytes.

Every call goes through a circuit breaker and runs under the configured socket deadlines with
no retries, so a dead or paused server costs a caller at most about one deadline, and nothing
once the breaker is open. Errors never escape: they come back as ``UNAVAILABLE``.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from typing import Any, Callable, Sequence

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.connection import Encoder, PythonRespSerializer
from redis.retry import Retry

from .. import native
from ..codec import CODEC_NONE, CODEC_SHUFFLE_ZSTD, CodecChooser, CodecError
from ..config import RemoteTierConfig
from ..errors import RemoteAuthError
from ..keys import BlockKey
from .base import TierCapabilities
from .breaker import OPEN, CircuitBreaker
from .pageformat import HEADER_BYTES, format_valid, pack_header, read_header
from .resp_reader import BulkReader, read_bulk

log = logging.getLogger("kvtier.remote")

HIT, ABSENT, CORRUPT, UNAVAILABLE = "hit", "absent", "corrupt", "unavailable"
WRONG_SIZE = "wrong_size"  # a valid page whose size differs from the caller's buffer
_WINDOW = struct.Struct("<Q")
VALUE_PREFIX = HEADER_BYTES + _WINDOW.size  # bytes before the payload in a Redis value
_MAX_WINDOW_MS = 10 * 365 * 86400 * 1000     # a window longer than ten years is not ours
_USED_SAMPLE_S = 1.0                          # how often used_memory is read from INFO
_POOL_BYTES = 80 << 20                        # value buffers kept: a 16 × 4 MiB batch and its headers
_BUFFER_CUTOFF = 6000                         # redis-py's: larger arguments are sent as they are
_READ_CHUNK = 128 << 10                       # socket reads (redis-py's default: 32 KiB)


class ValueParts:
    """A Redis value sent as its parts without joining them: the header and window (a small
    buffer), then the payload (the caller's page itself when no codec applies). Only
    ``RemoteTier``'s command packer understands it; ``len()`` is the value's size."""

    __slots__ = ("head", "body", "nbytes")

    def __init__(self, head: bytearray, body: memoryview) -> None:
        self.head, self.body, self.nbytes = head, body, len(head) + body.nbytes

    def __len__(self) -> int:
        return self.nbytes


class _PartsPacker(PythonRespSerializer):
    """redis-py's pure-Python packer, which also sends a ``ValueParts`` argument as one bulk
    string made of its buffers (its payload goes to the socket as it is, never copied)."""

    def pack(self, *args: Any) -> list[Any]:
        if not any(type(arg) is ValueParts for arg in args):
            return super().pack(*args)
        output: list[Any] = []
        buff = b"*%d\r\n" % len(args)
        for arg in args:
            if type(arg) is ValueParts:
                output.append(b"%s$%d\r\n%s" % (buff, arg.nbytes, arg.head))
                output.append(arg.body)
                buff = b"\r\n"
            else:
                data = self.encode(arg)
                buff = b"%s$%d\r\n%s\r\n" % (buff, len(data), data)
        output.append(buff)
        return output


def command_packer() -> PythonRespSerializer:
    """The tier's command packer. redis-py's pure-Python packer sends a large value as it is;
    hiredis's copies every value into one new string first (a 4 MiB page: +3 ms, the slowest
    step of a SET)."""
    return _PartsPacker(_BUFFER_CUTOFF, Encoder("utf-8", "strict", False).encode)


class RemoteRead:
    """What one key of ``get_many`` gave: ``status`` (HIT, ABSENT, CORRUPT, UNAVAILABLE,
    WRONG_SIZE), the page on a hit, its window (seconds or None), its remaining time to live
    in Redis (seconds, None for no expiry) and the page's size."""

    __slots__ = ("status", "page", "window_s", "ttl_left_s", "nbytes")

    def __init__(self, status: str, page: memoryview | None = None, window_s: float | None = None,
                 ttl_left_s: float | None = None, nbytes: int = 0) -> None:
        self.status, self.page, self.window_s, self.ttl_left_s = status, page, window_s, ttl_left_s
        self.nbytes = nbytes


class RemoteTier:
    """Pages in Redis or Redis Cluster under ``key_prefix + key.hex()``.

    Construction checks the server once: refused credentials raise ``RemoteAuthError``; an
    unreachable server does not raise (the tier starts with its breaker open and reconnects by
    itself). Thread-safe; the connection pool holds at most ``max_connections``.
    """

    name = "remote"
    capabilities = TierCapabilities(persistent=True, shared=True, supports_batch=True)

    def __init__(self, config: RemoteTierConfig) -> None:
        self.config = config
        self.breaker = CircuitBreaker(config.breaker_failures, config.breaker_backoff_s,
                                      config.breaker_max_backoff_s)
        self.codec = CodecChooser(config.codec, element_bytes=config.codec_element_bytes,
                                  level=config.codec_level)
        self._prefix = config.key_prefix.encode()
        self._lock = threading.Lock()
        self._client: Any = None
        self._closed = False
        self.hits = self.bytes_in = self.bytes_out = 0
        self.errors = self.timeouts = self.corrupt = self.writes_failed = self.writes_skipped_full = 0
        self.round_trips = 0
        self._used = (float("-inf"), 0, 0)  # (sampled at, used_memory, maxmemory)
        self._spare: dict[int, list[bytearray]] = {}  # value buffers by size, for reuse
        self._spare_bytes = 0
        self._check_server()

    # -- connection --------------------------------------------------------------------------
    def _connect(self) -> Any:
        c = self.config
        options: dict[str, Any] = dict(socket_connect_timeout=c.connect_timeout_s,
                                       socket_timeout=c.timeout_s, retry=Retry(NoBackoff(), 0),
                                       health_check_interval=0, command_packer=command_packer(),
                                       socket_read_size=_READ_CHUNK)
        if c.username:
            options["username"] = c.username
        if c.password:
            options["password"] = c.password
        if c.url.startswith("rediss://"):
            options.update(ssl_ca_certs=c.tls_ca_certs or None, ssl_certfile=c.tls_certfile or None,
                           ssl_keyfile=c.tls_keyfile or None, ssl_check_hostname=c.tls_verify,
                           ssl_cert_reqs="required" if c.tls_verify else "none")
        if c.cluster:
            return RedisCluster.from_url(c.url, max_connections=c.max_connections,
                                         require_full_coverage=False, **options)
        pool = redis.BlockingConnectionPool.from_url(
            c.url, max_connections=c.max_connections, timeout=c.connect_timeout_s, **options)
        return redis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))

    def _redis(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._connect()
            return self._client

    def _check_server(self) -> None:
        """PING once: wrong or missing credentials raise; an unreachable server opens the breaker."""
        try:
            self._redis().ping()
        except redis.AuthenticationError as exc:
            self.close()
            raise RemoteAuthError(self._auth_message(exc)) from None
        except redis.ResponseError as exc:
            if _is_auth_error(exc):
                self.close()
                raise RemoteAuthError(self._auth_message(exc)) from None
            raise
        except (redis.RedisError, OSError) as exc:
            log.warning("remote tier %s unreachable at start (%s); serving from local tiers "
                        "until it answers", self.config.redacted_url, exc)
            for _ in range(self.config.breaker_failures):
                self.breaker.failed()

    def _auth_message(self, exc: Exception) -> str:
        who = f"user {self.config.username!r}" if self.config.username else "the default user"
        given = "a password" if self.config.authenticated else "no password"
        return (f"Redis at {self.config.redacted_url} refused kvtier ({who}, {given}): {exc}. "
                "Set remote.password (KVTIER_REMOTE_PASSWORD) and, for an ACL user, remote.username")

    def _call(self, fn: Callable[[Any], Any]) -> Any:
        """``fn(client)`` through the breaker; ``UNAVAILABLE`` on any failure (never raises)."""
        if self._closed or not self.breaker.allow():
            return UNAVAILABLE
        try:
            result = fn(self._redis())
        except Exception as exc:  # redis, socket, TLS or cluster errors: the tier is unavailable
            self.breaker.failed()
            with self._lock:
                self.errors += 1
                self.timeouts += isinstance(exc, (redis.TimeoutError, TimeoutError))
            log.debug("remote tier call failed: %r", exc)
            return UNAVAILABLE
        self.breaker.succeeded()
        with self._lock:
            self.round_trips += 1
        return result

    def _pipeline(self, commands: Callable[[Any], None]) -> list[Any] | str:
        """Queue ``commands(pipe)`` and run them in one round trip (per node in a cluster);
        per-command errors come back as exception objects in the list."""
        def run(client: Any) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            commands(pipe)
            return pipe.execute(raise_on_error=False)
        return self._call(run)

    @property
    def available(self) -> bool:
        """False while the breaker is open (calls would be refused without trying)."""
        return not self._closed and self.breaker.state != OPEN

    def redis_key(self, key: BlockKey) -> bytes:
        return self._prefix + key.hex().encode()

    # -- writes ------------------------------------------------------------------------------
    def encode(self, key: BlockKey, page: memoryview, window_s: float | None, *,
               copy: bool = True) -> bytearray | ValueParts:
        """The Redis value for ``page`` (header, window, codec payload): one owned buffer, or
        with ``copy=False`` a ``ValueParts`` that refers to ``page`` itself (no copy; valid only
        while the caller keeps the page unchanged, until ``write`` returns)."""
        codec = self.codec.pick()
        if codec == CODEC_NONE and self.codec.should_probe():
            self.codec.encode(self.codec.candidate, page, probe=True)
        used, payload = self.codec.encode(codec, page)
        payload = memoryview(payload).cast("B")
        checksum = native.checksum(page)
        value = self._buffer(VALUE_PREFIX + payload.nbytes) if copy else bytearray(VALUE_PREFIX)
        view = memoryview(value)
        element = self.codec.element_bytes if used == CODEC_SHUFFLE_ZSTD else 0
        pack_header(view, bytes(key), page.nbytes, payload.nbytes, checksum, used, element)
        _WINDOW.pack_into(view, HEADER_BYTES, 0 if window_s is None else int(window_s * 1000))
        self.codec.observe_written(page.nbytes, payload.nbytes)
        if not copy:
            return ValueParts(value, payload)
        native.copy(view[VALUE_PREFIX:], payload)
        return value

    def write(self, items: Sequence[tuple[BlockKey, Any, float | None]]) -> list[bool]:
        """SET every ``(key, value from encode(), window_s)`` in one pipelined round trip, with
        ``PX`` = the window; ``True`` per value Redis took. Takes ownership of the values
        (owned buffers are reused by later ``encode`` calls)."""
        if not items:
            return []
        if self._full():
            with self._lock:
                self.writes_skipped_full += len(items)
            return [False] * len(items)

        def commands(pipe: Any) -> None:
            for key, value, window_s in items:
                pipe.set(self.redis_key(key), value, px=None if window_s is None else max(1, int(window_s * 1000)))
        nbytes = sum(len(value) for _, value, _ in items)
        start = time.perf_counter()
        replies = self._pipeline(commands)
        if replies is UNAVAILABLE:
            with self._lock:
                self.writes_failed += len(items)
            self._recycle([value for _, value, _ in items])
            return [False] * len(items)
        self.codec.observe_io(True, nbytes, time.perf_counter() - start)
        ok = [reply is True for reply in replies]
        with self._lock:
            self.bytes_in += sum(len(v) - VALUE_PREFIX for (_, v, _), good in zip(items, ok) if good)
            self.writes_failed += ok.count(False)
        self._recycle([value for _, value, _ in items])
        return ok

    def _buffer(self, nbytes: int) -> bytearray:
        """A value buffer: a recycled one of this size (no page faults) or a new one."""
        with self._lock:
            spare = self._spare.get(nbytes)
            if spare:
                self._spare_bytes -= nbytes
                return spare.pop()
        return native.alloc_bytearray(nbytes)

    def _recycle(self, values: Sequence[Any]) -> None:
        """Keep written value buffers for the next encode (the caller drops its references)."""
        with self._lock:
            for value in values:
                if type(value) is bytearray and self._spare_bytes + len(value) <= _POOL_BYTES:
                    self._spare.setdefault(len(value), []).append(value)
                    self._spare_bytes += len(value)

    def put_many(self, keys: Sequence[BlockKey], pages: Sequence[memoryview],
                 window_s: float | None) -> list[bool]:
        """Encode and write pages (the synchronous path; ``write`` for prepared values). The
        pages go to the socket as they are: they must not change until this returns."""
        return self.write([(k, self.encode(k, p, window_s, copy=False), window_s)
                           for k, p in zip(keys, pages)])

    def _full(self) -> bool:
        limit = self.config.capacity_bytes
        return bool(limit) and self.used_memory()[0] >= limit

    def used_memory(self) -> tuple[int, int]:
        """Redis's ``used_memory`` and ``maxmemory`` (sampled at most once a second; zeros
        until the server has answered)."""
        sampled, used, maximum = self._used
        now = time.monotonic()
        if now - sampled >= _USED_SAMPLE_S and self.available:
            self._used = (now, used, maximum)  # one sampler at a time
            info = self._call(lambda client: _memory_info(client))
            if info is not UNAVAILABLE:
                used, maximum = info
                self._used = (now, used, maximum)
        return used, maximum

    # -- reads -------------------------------------------------------------------------------
    def get_many(self, keys: Sequence[BlockKey], outs: Sequence[memoryview | None] | None = None
                 ) -> list[RemoteRead]:
        """GET every key in one pipelined round trip, verify, and decode into ``outs[i]`` when
        given (a page of another size is ``WRONG_SIZE``, not copied) or into a fresh buffer.
        Pages stored with a window get their time left (``PTTL``) in a second round trip, so
        pages without one cost a single round trip; a page whose ``PTTL`` cannot be read gets
        ``ttl_left_s=0`` (a local copy of it expires at once)."""
        if not keys:
            return []
        names = [self.redis_key(key) for key in keys]
        start = time.perf_counter()
        replies = self._fetch(keys, names, outs)
        if replies is UNAVAILABLE:
            return [RemoteRead(UNAVAILABLE) for _ in keys]
        fetched = sum(r[0].nbytes + r[1].nbytes for r in replies if isinstance(r, tuple))
        self.codec.observe_io(False, fetched, time.perf_counter() - start)
        reads = []
        for i, (key, value) in enumerate(zip(keys, replies)):
            if isinstance(value, Exception):
                reads.append(RemoteRead(UNAVAILABLE))
            elif value is None:
                reads.append(RemoteRead(ABSENT))
            else:
                reads.append(self._decode(key, *value, None if outs is None else outs[i]))
        bad = [key for key, r in zip(keys, reads) if r.status == CORRUPT]
        if bad:  # fail closed, and do not make the next reader pay for the same bad value
            self.delete(bad)
        self._time_left([(names[i], read) for i, read in enumerate(reads)
                         if read.status == HIT and read.window_s is not None])
        return reads

    def _fetch(self, keys: Sequence[BlockKey], names: list[bytes],
               outs: Sequence[memoryview | None] | None) -> list[Any] | str:
        """GET ``names`` in one round trip; per name ``None`` (absent), an exception, or the
        value as ``(head, payload)``. On a single server a payload that is exactly the
        caller's page is read from the socket straight into ``outs[i]`` (``resp_reader``);
        a cluster goes through redis-py's pipeline."""
        if self.config.cluster:
            def commands(pipe: Any) -> None:
                for name in names:
                    pipe.get(name)
            replies = self._pipeline(commands)
            if replies is UNAVAILABLE:
                return UNAVAILABLE
            return [(memoryview(r)[:VALUE_PREFIX], memoryview(r)[VALUE_PREFIX:])
                    if isinstance(r, bytes) else r for r in replies]

        def in_place(key: BlockKey, out: memoryview | None) -> Callable[[memoryview], memoryview | None]:
            def target(head: memoryview) -> memoryview | None:
                header = read_header(head) if out is not None and head.nbytes == VALUE_PREFIX else None
                fits = (header is not None and header["codec"] == CODEC_NONE and header["key"] == bytes(key)
                        and header["raw_len"] == header["stored_len"] == out.nbytes)
                return out if fits else None
            return target

        def run(client: Any) -> list[Any]:
            pool = client.connection_pool
            conn = pool.get_connection()
            try:
                conn.send_packed_command(conn.pack_commands([("GET", name) for name in names]))
                reader = BulkReader(conn._get_socket())
                return [read_bulk(reader, VALUE_PREFIX, in_place(key, None if outs is None else outs[i]))
                        for i, key in enumerate(keys)]
            except BaseException:
                conn.disconnect()  # replies may be left unread on the socket
                raise
            finally:
                pool.release(conn)
        return self._call(run)

    def _time_left(self, windowed: list[tuple[bytes, RemoteRead]]) -> None:
        """Set ``ttl_left_s`` of windowed hits from Redis's ``PTTL`` (0 where it cannot)."""
        if not windowed:
            return
        replies = self._pipeline(lambda pipe: [pipe.pttl(name) for name, _ in windowed])
        for i, (_, read) in enumerate(windowed):
            ttl_ms = None if replies is UNAVAILABLE else replies[i]
            if isinstance(ttl_ms, int) and ttl_ms >= 0:
                read.ttl_left_s = ttl_ms / 1000
            elif ttl_ms == -1:  # no expiry in Redis (written without PX)
                read.ttl_left_s = None
            else:  # gone since the GET (-2), or unknown: keep no local copy past now
                read.ttl_left_s = 0.0

    def _decode(self, key: BlockKey, prefix: memoryview, payload: memoryview,
                out: memoryview | None) -> RemoteRead:
        """Check a value (``prefix``: its first ``VALUE_PREFIX`` bytes, ``payload``: the rest)
        and decode its page into ``out`` (or a new buffer). A payload already read into
        ``out`` is verified in place: a bad one leaves ``out`` holding its bytes."""
        head = read_header(prefix) if prefix.nbytes >= VALUE_PREFIX else None
        if (head is None or head["key"] != bytes(key)
                or not format_valid(head["codec"], head["raw_len"], head["stored_len"], head["element_bytes"])
                or payload.nbytes != head["stored_len"]):
            return self._corrupt()
        (window_ms,) = _WINDOW.unpack_from(prefix, HEADER_BYTES)
        if window_ms > _MAX_WINDOW_MS:
            return self._corrupt()
        raw_len = head["raw_len"]
        if out is not None and out.nbytes != raw_len:
            return RemoteRead(WRONG_SIZE, nbytes=raw_len)
        if head["codec"] == CODEC_NONE:  # verify the received bytes (still in cache), then copy
            if native.checksum(payload) != head["checksum"]:
                return self._corrupt()
            if out is None and not payload.readonly:
                page = payload  # a buffer of its own, read for this call
            elif out is None:  # a cluster reply (bytes): callers get a writable page
                page = memoryview(native.alloc_bytearray(raw_len))
                native.copy(page, payload)
            else:
                page = out
                if payload is not out:
                    native.copy(page, payload)
        else:
            page = out if out is not None else memoryview(native.alloc_bytearray(raw_len))
            try:
                self.codec.decode_into(head["codec"], payload, page)
            except CodecError:
                return self._corrupt()
            if native.checksum(page) != head["checksum"]:
                return self._corrupt()
        with self._lock:
            self.hits += 1
            self.bytes_out += raw_len
        return RemoteRead(HIT, page, window_ms / 1000 if window_ms else None, None, raw_len)

    def _corrupt(self) -> RemoteRead:
        with self._lock:
            self.corrupt += 1
        return RemoteRead(CORRUPT)

    def exists(self, keys: Sequence[BlockKey]) -> list[bool] | None:
        """Which keys Redis holds, in one round trip; ``None`` if it cannot be asked."""
        if not keys:
            return []
        replies = self._pipeline(lambda pipe: [pipe.exists(self.redis_key(k)) for k in keys])
        if replies is UNAVAILABLE:
            return None
        return [reply == 1 for reply in replies]

    def sizes(self, keys: Sequence[BlockKey]) -> list[int] | None:
        """Bytes each key's value moves (0 if absent), in one round trip; ``None`` if unavailable."""
        replies = self._pipeline(lambda pipe: [pipe.strlen(self.redis_key(k)) for k in keys])
        if replies is UNAVAILABLE:
            return None
        return [reply if isinstance(reply, int) else 0 for reply in replies]

    def touch(self, items: Sequence[tuple[BlockKey, float]]) -> int:
        """Extend each key's expiry to its window (``PEXPIRE``); how many were still there."""
        if not items:
            return 0
        replies = self._pipeline(
            lambda pipe: [pipe.pexpire(self.redis_key(k), max(1, int(w * 1000))) for k, w in items])
        return 0 if replies is UNAVAILABLE else sum(reply is True for reply in replies)

    def delete(self, keys: Sequence[BlockKey]) -> int:
        """DEL keys; how many existed (0 if unavailable)."""
        if not keys:
            return 0
        replies = self._pipeline(lambda pipe: [pipe.delete(self.redis_key(k)) for k in keys])
        return 0 if replies is UNAVAILABLE else sum(r for r in replies if isinstance(r, int))

    # -- reporting ---------------------------------------------------------------------------
    def stats_extra(self) -> dict[str, object]:
        used, maximum = self.used_memory()
        with self._lock:
            counts = {"round_trips": self.round_trips, "errors": self.errors, "timeouts": self.timeouts,
                      "corrupt": self.corrupt, "writes_failed": self.writes_failed,
                      "writes_skipped_full": self.writes_skipped_full}
        return {"url": self.config.redacted_url, "cluster": self.config.cluster,
                "redis_used_memory": used, "redis_maxmemory": maximum,
                **counts, **self.breaker.stats(), **self.codec.stats()}

    def close(self) -> None:
        """Close the connection pool. Idempotent."""
        with self._lock:
            client, self._client, self._closed = self._client, None, True
        if client is not None:
            try:
                client.close()
            except Exception:
                pass


def _memory_info(client: Any) -> tuple[int, int]:
    info = client.info("memory")
    if isinstance(info, dict) and "used_memory" not in info:  # a cluster: one dict per node
        nodes = [v for v in info.values() if isinstance(v, dict)]
        return (sum(n.get("used_memory", 0) for n in nodes), sum(n.get("maxmemory", 0) for n in nodes))
    return int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))


def _is_auth_error(exc: Exception) -> bool:
    text = str(exc).upper()
    return any(word in text for word in ("NOAUTH", "WRONGPASS", "NOPERM", "AUTHENTICATION"))
