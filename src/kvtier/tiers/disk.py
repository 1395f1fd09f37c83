"""NVMe disk tier: preallocated slot files read and written with O_DIRECT, plus an LMDB index.

Geometry: each directory in ``DiskTierConfig.paths`` holds one file ``slots.dat`` of
fixed-size slots (preallocated with ``fallocate`` where the free-space floor allows, else sparse); global slot ``g`` lives in path ``g % P`` at local slot ``g // P`` (pages are
striped across drives). A slot is one 4096-byte header block (``pageformat``) followed by the
payload rounded up to 4096 bytes, so every transfer is O_DIRECT-aligned. File names come from
nothing but this layout (never from keys); files are created 0600, directories 0700.

Durability order: a page's bytes are written (and, with ``fsync="always"``, flushed) before its
index record is committed; a record is deleted before its slot is reused. A slot written but
never committed (a crash in between) is simply free after a restart.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import math
import os
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Sequence

import lmdb

from .. import native
from ..codec import CODEC_NAMES, CODEC_NONE, CODEC_SHUFFLE_ZSTD, CodecChooser, CodecError
from ..config import DiskTierConfig
from ..errors import ConfigError, TierInUseError
from ..keys import BlockKey
from .base import TierCapabilities
from .disk_index import DiskIndex, DiskRecord
from .staging import SHARED_MAPS, Staging, align_up
from .pageformat import FORMAT_VERSION, HEADER_BLOCK, PageFormat, pack_header, parse_header

DATA_FILE = "slots.dat"
LOCK_FILE = "kvtier.lock"
STRIPE_FILE = "stripe.json"
INDEX_DIR = "index"
_FREE_SPACE_CACHE_S = 0.5
_PIPELINE = 4  # chunks a write batch is cut into, to overlap hashing with I/O


class DiskTier:
    """Pages in slot files on one or more directories. Thread-safe for distinct slots."""

    name = "disk"
    capabilities = TierCapabilities(persistent=True, supports_batch=True)

    def __init__(self, config: DiskTierConfig) -> None:
        self.config = config
        self.slot_bytes = config.slot_bytes
        self.slot_count = config.capacity_bytes // config.slot_bytes
        self.stride = HEADER_BLOCK + align_up(self.slot_bytes)
        self.paths = [Path(p) for p in config.paths]
        self.direct_io = config.direct_io
        self.io_errors = 0
        self.index_errors = 0
        self.enospc = 0
        self.dropped_at_open = 0
        self.preallocated_bytes = 0
        self._counts_lock = threading.Lock()
        self._free_checked_at = -math.inf
        self._has_room = True
        self._fully_preallocated = False
        self._last_sync = time.monotonic()
        self._dirty = False
        self._locks: list[int] = []
        self._fds: list[int] = []
        self._index: DiskIndex | None = None
        self._submit_pool: ThreadPoolExecutor | None = None
        self.codec = CodecChooser(config.codec, element_bytes=config.codec_element_bytes,
                                  level=config.codec_level)
        self._formats: dict[int, PageFormat] = {}  # slot -> format of a compressed page
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    # -- opening -----------------------------------------------------------------------------
    def _open(self) -> None:
        if self.config.io_threads:
            native.set_io_threads(self.config.io_threads)
        for path in self.paths:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._locks.append(_lock_directory(path))
        map_size = max(64 << 20, self.slot_count * 512)
        self._index = DiskIndex(self.paths[0] / INDEX_DIR, sync=self.config.fsync == "always",
                                map_size=map_size)
        self._check_meta()  # before any data file is created or resized
        per_path = [len(range(i, self.slot_count, len(self.paths))) for i in range(len(self.paths))]
        for path, slots in zip(self.paths, per_path):
            self._fds.append(self._open_data_file(path / DATA_FILE, slots * self.stride))
        self._fully_preallocated = self.preallocated_bytes == sum(per_path) * self.stride

    def _open_data_file(self, path: Path, size: int) -> int:
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        fd = -1
        if self.direct_io:
            try:
                fd = os.open(path, flags | os.O_DIRECT, 0o600)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self.direct_io = False  # e.g. tmpfs: buffered I/O, shown in stats()
        if fd < 0:
            fd = os.open(path, flags, 0o600)
        os.fchmod(fd, 0o600)
        if os.fstat(fd).st_size != size:
            os.ftruncate(fd, size)
        if self._preallocate(fd, size):
            self.preallocated_bytes += size
        return fd

    def _preallocate(self, fd: int, size: int) -> bool:
        """Reserve the file's blocks up front (``fallocate``), so slot writes overwrite
        allocated extents (faster O_DIRECT, no ENOSPC later). Skipped, leaving the file
        sparse, where it would cross ``min_free_bytes`` or the filesystem cannot do it."""
        allocated = os.fstat(fd).st_blocks * 512
        needed = size - allocated
        if needed <= 0:
            return True
        st = os.fstatvfs(fd)
        if st.f_bavail * st.f_frsize - needed < self.config.min_free_bytes:
            return False
        return _fallocate(fd, size)

    def _check_meta(self) -> None:
        assert self._index is not None
        wanted = {"format": FORMAT_VERSION, "slot_bytes": self.slot_bytes,
                  "paths": len(self.paths), "namespace": self.config.namespace,
                  "tier_id": uuid.uuid4().hex}
        meta = self._index.read_meta()
        if meta is None:  # a new tier: refuse directories of another one, then claim them
            self._check_stripes(wanted["tier_id"])
            self._index.write_meta(wanted)
            self._write_stripes(wanted["tier_id"])
            return
        where = self.paths[0]
        if meta.get("format") != FORMAT_VERSION:
            raise ConfigError(
                f"{where} holds a kvtier disk tier of format {meta.get('format')}, this kvtier reads "
                f"format {FORMAT_VERSION}: point disk.paths at a new directory (or delete this one)")
        if meta.get("slot_bytes") != self.slot_bytes or meta.get("paths") != len(self.paths):
            raise ConfigError(
                f"{where} was created with slot_bytes={meta.get('slot_bytes')} over "
                f"{meta.get('paths')} path(s); this store asks for slot_bytes={self.slot_bytes} over "
                f"{len(self.paths)}: use the same settings or a new directory")
        theirs, ours = meta.get("namespace", ""), self.config.namespace
        if theirs and ours and theirs != ours:
            raise ConfigError(
                f"{where} caches namespace {theirs!r}, not {ours!r} (another model or tenant): "
                "use a separate directory per namespace")
        if ours and not theirs:
            self._index.write_meta({**meta, "namespace": ours})
        self._check_stripes(meta["tier_id"])
        self._write_stripes(meta["tier_id"])

    def _write_stripes(self, tier_id: str) -> None:
        """Write the stripe markers that are missing (atomically: temp file, then rename)."""
        for number, path in enumerate(self.paths):
            marker = path / STRIPE_FILE
            if not marker.exists():
                temp = path / (STRIPE_FILE + ".tmp")
                _write_private(temp, json.dumps({"tier_id": tier_id, "stripe": number}))
                os.replace(temp, marker)

    def _check_stripes(self, tier_id: str) -> None:
        """Each path carries a marker naming its tier and stripe number, so swapped, missing or
        foreign directories are refused instead of reading every page as corrupt."""
        for number, path in enumerate(self.paths):
            marker = path / STRIPE_FILE
            expected = {"tier_id": tier_id, "stripe": number}
            try:
                found = json.loads(marker.read_text())
            except FileNotFoundError:
                found = None
            except (OSError, ValueError):
                found = "unreadable"
            if found is None and not (path / DATA_FILE).exists():
                continue  # unclaimed: written by _write_stripes (a crash may have cut creation short)
            if found != expected:
                raise ConfigError(
                    f"{path} is not stripe {number} of the disk tier indexed in {self.paths[0]} "
                    f"(its marker {marker.name} says {found}): give disk.paths in their original "
                    "order, or use new directories")

    def restore(self) -> Iterator[tuple[BlockKey, DiskRecord]]:
        """Every valid committed record; invalid ones (undecodable, out of range, duplicate
        slot) are deleted from the index and counted in ``dropped_at_open``."""
        assert self._index is not None
        seen: set[int] = set()
        bad: list[bytes] = []
        for raw_key, raw in self._index.items():
            try:
                record = DiskRecord.unpack(raw)
                key = BlockKey.from_bytes(raw_key)
            except Exception:  # a corrupted record or key: drop it, fail closed
                bad.append(raw_key)
                continue
            if (record.slot >= self.slot_count or record.slot in seen
                    or not 0 < record.raw_len <= self.slot_bytes or not _record_format_valid(record)):
                bad.append(raw_key)
                continue
            seen.add(record.slot)
            if record.codec != CODEC_NONE:
                self._formats[record.slot] = PageFormat(record.codec, record.stored_len)
            yield key, record
        if bad:
            self._index.delete_many(bad)
            self.dropped_at_open += len(bad)

    # -- space -------------------------------------------------------------------------------
    def has_room(self) -> bool:
        """Whether a never-written slot may be taken without crossing the free-space floor."""
        if self._fully_preallocated:
            return True  # its blocks are already reserved
        now = time.monotonic()
        if now - self._free_checked_at > _FREE_SPACE_CACHE_S:
            floor = self.config.min_free_bytes + self.stride
            self._has_room = all(_free_bytes(p) >= floor for p in self.paths)
            self._free_checked_at = now
        return self._has_room

    # -- bytes -------------------------------------------------------------------------------
    def write_many(self, slots: Sequence[int], keys: Sequence[bytes], srcs: Sequence[memoryview],
                   checksums: Sequence[int | None]) -> list[int | None]:
        """Write pages (header block + payload, one transfer each) into their slots; per page,
        the xxh3-64 of its bytes once it is stored, or ``None`` where a write failed (the page
        is then not stored; ENOSPC and I/O errors are counted, never raised). ``checksums[i]``
        may be ``None``: it is computed here. Each page is encoded with the codec the tier's
        ``CodecChooser`` picks for this batch (``stored_format`` says which, per slot).

        The batch is cut into up to ``_PIPELINE`` chunks: while one chunk is on its way to disk
        (on the submit threads, GIL released), this thread hashes and encodes the next, so that
        work hides behind I/O instead of adding to it.
        """
        staging = Staging([s.nbytes for s in srcs], SHARED_MAPS)
        count = len(srcs)
        # A small batch is one chunk written on this thread: handing it to a submit thread
        # costs more (~100 us of wake-ups on a busy 2-vCPU VM) than hashing overlaps.
        step = max(1, count if count < 2 * _PIPELINE else -(-count // _PIPELINE))
        codec = self.codec.pick()
        probe = codec == CODEC_NONE and count > 0 and self.codec.should_probe()
        sums: list[int] = []
        formats: list[PageFormat] = []
        pending = []
        pool = self._submitter()
        for first in range(0, count, step):
            fds, offsets, iovecs, expected = [], [], [], []
            for i in range(first, min(first + step, count)):
                src = srcs[i]
                sums.append(checksums[i] if checksums[i] is not None else native.checksum(src))
                fmt, payload = self._encode(src, codec, probe=probe and i == 0)
                formats.append(fmt)
                pack_header(staging.header(i), keys[i], src.nbytes, fmt.stored_len, sums[i],
                            fmt.codec, fmt.element_bytes)
                iov = staging.payload_iovecs(i, payload, for_write=True)
                fd, offset = self._location(slots[i])
                fds.append(fd)
                offsets.append(offset)
                iovecs.append([staging.header(i), *iov])
                expected.append(HEADER_BLOCK + sum(v.nbytes for v in iov))
            args = (True, fds, offsets, iovecs)
            pending.append((fds, expected, pool.submit(_timed_io, *args) if step < count else args))
        stored: list[int | None] = []
        written_fds: set[int] = set()
        failures: list[int] = []
        spans: list[tuple[float, float]] = []
        for fds, expected, future in pending:
            results, span = future.result() if isinstance(future, Future) else _timed_io(*future)
            spans.append(span)
            for fd, want, got in zip(fds, expected, results):
                i = len(stored)
                if got == want:
                    stored.append(sums[i])
                    written_fds.add(fd)
                    self._set_format(slots[i], formats[i])
                    self.codec.observe_written(srcs[i].nbytes, formats[i].stored_len)
                else:
                    stored.append(None)
                    failures.append(got)
        staging.release()  # every chunk is done
        self.codec.observe_io(True, sum(sum(e) for _, e, _ in pending), _busy_seconds(spans))
        if failures:
            self._count_failures(failures)
        if self.config.fsync == "always":
            for fd in written_fds:
                os.fdatasync(fd)
        return stored

    def _encode(self, src: memoryview, codec: int, *, probe: bool) -> tuple[PageFormat, memoryview]:
        if probe:  # measure the codec on this page, but store it as picked (raw): reads of an
            self.codec.encode(self.codec.candidate, src, probe=True)  # auto tier on `none`
            return PageFormat(CODEC_NONE, src.nbytes), src             # then equal `none`'s
        used, payload = self.codec.encode(codec, src)
        if used == CODEC_NONE:
            return PageFormat(CODEC_NONE, src.nbytes), src
        element = self.codec.element_bytes if used == CODEC_SHUFFLE_ZSTD else 0
        return PageFormat(used, len(payload), element), memoryview(payload)

    def _set_format(self, slot: int, fmt: PageFormat) -> None:
        if fmt.codec == CODEC_NONE:
            self._formats.pop(slot, None)
        else:
            self._formats[slot] = PageFormat(fmt.codec, fmt.stored_len)

    def stored_format(self, slot: int, raw_len: int) -> tuple[int, int]:
        """``(codec id, stored length)`` of the page last written to ``slot`` (for its record)."""
        fmt = self._formats.get(slot)
        return (CODEC_NONE, raw_len) if fmt is None else (fmt.codec, fmt.stored_len)

    def _submitter(self) -> ThreadPoolExecutor:
        """Threads that issue write chunks while the caller hashes the next (started on first use)."""
        with self._counts_lock:
            if self._submit_pool is None:
                self._submit_pool = ThreadPoolExecutor(_PIPELINE, thread_name_prefix="kvtier-disk")
            return self._submit_pool

    def read_many(self, slots: Sequence[int], keys: Sequence[bytes], dsts: Sequence[memoryview],
                  checksums: Sequence[int],
                  also: Sequence[memoryview | None] | None = None) -> list[bool]:
        """Read pages into ``dsts`` (each exactly the stored length), decode them and verify
        header and checksum; ``False`` for any page that is short, unreadable, does not decode
        or does not verify. ``also[i]``, if given, gets a second copy of page ``i`` (a host
        slot it is promoted into), made while the rest of the batch is in flight; it holds
        the page only where the result is ``True``.

        Chunks of the batch are read concurrently on the submit threads. A page stored as it
        is gets hashed by the native I/O engine the moment its read completes (and its bounced
        part, for a buffer not aligned for O_DIRECT, copied into place), so that work overlaps
        the reads still in flight; a compressed page is decoded and hashed as soon as its
        chunk lands. A page that fails may have been written into its ``dst`` regardless.
        """
        staging = Staging([d.nbytes for d in dsts], SHARED_MAPS)
        count = len(dsts)
        step = count if count < 2 * _PIPELINE else -(-count // _PIPELINE)
        formats = [self._formats.get(slot) for slot in slots]
        pending = []
        for first in range(0, count, step):
            chunk = range(first, min(first + step, count))
            fds, offsets, iovecs, expected, ranges, copies = [], [], [], [], [], []
            for i in chunk:
                fd, offset = self._location(slots[i])
                if formats[i] is None:
                    iov = staging.payload_iovecs(i, dsts[i], for_write=False)
                    ranges.append((HEADER_BLOCK, dsts[i].nbytes))  # the page's own bytes
                    copies.append(staging.copy_out(i, dsts[i]))  # a bounced part, if any
                    if also is not None and also[i] is not None:
                        copies[-1].append((HEADER_BLOCK, also[i]))
                else:
                    iov = [staging.scratch(i, formats[i].stored_len)]
                    ranges.append(None)  # hashed after decoding
                    copies.append(None)
                fds.append(fd)
                offsets.append(offset)
                iovecs.append([staging.header(i), *iov])
                expected.append(HEADER_BLOCK + sum(v.nbytes for v in iov))
            args = (False, fds, offsets, iovecs, ranges, copies)
            future = self._submitter().submit(_timed_io, *args) if step < count else None
            pending.append((chunk, expected, future, args))
        ok: list[bool] = []
        failures: list[int] = []
        spans: list[tuple[float, float]] = []
        for chunk, expected, future, args in pending:
            (results, sums), span = future.result() if future is not None else _timed_io(*args)
            spans.append(span)
            for i, got, want, payload_sum in zip(chunk, results, expected, sums):
                good = got == want and self._finish_read(staging, i, keys[i], dsts[i], checksums[i],
                                                         formats[i], payload_sum)
                if good and formats[i] is not None and also is not None and also[i] is not None:
                    native.copy(also[i], dsts[i])  # decoded here, not by the I/O engine
                ok.append(good)
                if got < 0:
                    failures.append(got)
        staging.release()  # every chunk is done
        self.codec.observe_io(False, sum(sum(e) for _, e, _, _ in pending), _busy_seconds(spans))
        if failures:
            self._count_failures(failures)
        return ok

    def _finish_read(self, staging: Staging, i: int, key: bytes, dst: memoryview, checksum: int,
                     expected: PageFormat | None, payload_sum: int | None) -> bool:
        """Check the header against what the index says, decode, verify the checksum (of a
        page stored as it is: ``payload_sum``, hashed by the I/O engine)."""
        fmt = parse_header(staging.header(i), key, dst.nbytes, checksum)
        if fmt is None or (fmt.codec, fmt.stored_len) != ((CODEC_NONE, dst.nbytes) if expected is None
                                                          else (expected.codec, expected.stored_len)):
            return False
        if expected is None:  # hashed, and a bounced part copied into dst, by the I/O engine
            return payload_sum == checksum
        else:
            try:
                self.codec.decode_into(fmt.codec, staging.scratch(i, fmt.stored_len)[:fmt.stored_len],
                                       dst)
            except CodecError:
                return False
        return native.checksum(dst) == checksum

    # -- index -------------------------------------------------------------------------------
    def commit(self, items: list[tuple[bytes, DiskRecord]]) -> bool:
        """Make written pages durable in the index (after their bytes are written); ``False``
        if the index refused (map full, I/O error): the pages are then not stored."""
        assert self._index is not None
        try:
            self._index.put_many(items)
            self._dirty = True
            self._maybe_sync()
        except (lmdb.Error, OSError):
            self.index_errors += 1
            return False
        return True

    def forget(self, key: bytes) -> None:
        """Delete a page's record (before its slot can be reused). A failed delete is counted,
        not raised: the stale record would point at a slot whose header no longer matches, so
        it can only ever read as ``corrupt``."""
        if self._index is not None:
            try:
                self._index.delete(key)
                self._dirty = True
            except lmdb.Error:
                self.index_errors += 1

    def touch_many(self, times: dict[bytes, tuple[float, float | None]]) -> None:
        """Record ``key -> (last access, deadline)`` wall times in one transaction (the store
        calls it at close; after a crash the older times stay)."""
        if self._index is None or not times:
            return
        updates = []
        for key, (last_access, deadline) in times.items():
            raw = self._index.get(key)
            try:
                record = DiskRecord.unpack(raw)
            except (TypeError, ValueError):  # gone, or a damaged record: leave it to restore()
                continue
            record.last_access, record.deadline = last_access, deadline
            updates.append((key, record))
        self._index.put_many(updates)

    def sync(self) -> None:
        """Flush data files and the index to stable storage."""
        for fd in self._fds:
            os.fdatasync(fd)
        if self._index is not None:
            self._index.sync()
        self._dirty = False
        self._last_sync = time.monotonic()

    def _maybe_sync(self) -> None:
        if (self.config.fsync == "batch" and self._dirty
                and time.monotonic() - self._last_sync >= self.config.sync_interval_s):
            self.sync()

    def stats_extra(self) -> dict[str, object]:
        return {"direct_io": self.direct_io, "io_errors": self.io_errors, "enospc": self.enospc,
                "index_errors": self.index_errors, "preallocated_bytes": self.preallocated_bytes,
                "dropped_at_open": self.dropped_at_open, "io_engine": native.io_engine(),
                "paths": [str(p) for p in self.paths], **self.codec.stats()}

    def close(self) -> None:
        if self._submit_pool is not None:
            self._submit_pool.shutdown(wait=True)
            self._submit_pool = None
        if self._index is not None:
            if self.config.fsync != "never":
                try:
                    self.sync()
                except OSError:
                    pass
            self._index.close()
            self._index = None
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        for fd in self._locks:
            os.close(fd)  # releases the flock
        self._locks = []

    # -- internals ---------------------------------------------------------------------------
    def _location(self, slot: int) -> tuple[int, int]:
        count = len(self._fds)
        return self._fds[slot % count], (slot // count) * self.stride

    def _count_failures(self, results: list[int]) -> None:
        with self._counts_lock:
            for result in results:
                if result == -errno.ENOSPC:
                    self.enospc += 1
                    self._free_checked_at = -math.inf  # re-check the floor now
                elif result < 0:
                    self.io_errors += 1


def _timed_io(write: bool, fds: list[int], offsets: list[int], iovecs: list[list[memoryview]],
              checksum_ranges: list[tuple[int, int] | None] | None = None,
              copy_out: list[tuple[int, memoryview] | None] | None = None,
              ) -> tuple[Any, tuple[float, float]]:
    """``native.io_batch`` (with ``checksum_ranges``: its ``(results, checksums)``) plus the
    ``(start, end)`` of the transfer, for bandwidth figures."""
    start = time.perf_counter()
    results = native.io_batch(write, fds, offsets, iovecs, checksum_ranges, copy_out)
    return results, (start, time.perf_counter())


def _busy_seconds(spans: list[tuple[float, float]]) -> float:
    """How long at least one of the (possibly overlapping) transfers was in flight."""
    busy, reach = 0.0, -math.inf
    for start, end in sorted(spans):
        if end > reach:
            busy += end - max(start, reach)
            reach = end
    return busy


def _record_format_valid(record: DiskRecord) -> bool:
    if record.codec == CODEC_NONE:
        return record.stored_len == record.raw_len
    return record.codec in CODEC_NAMES and 0 < record.stored_len < record.raw_len


def _lock_directory(path: Path) -> int:
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise TierInUseError(
            f"{path} is in use by another kvtier store (pid {holder}); one process owns a disk "
            "tier directory at a time: close the other store or give this one its own disk.paths"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def _fallocate(fd: int, size: int) -> bool:
    """``fallocate(fd, 0, 0, size)``; ``False`` if unsupported or out of space. Unlike
    ``posix_fallocate`` it never falls back to writing zeros through the whole file."""
    return _libc.fallocate(fd, 0, 0, size) == 0


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize

