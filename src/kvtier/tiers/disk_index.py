"""The disk tier's durable index: an LMDB environment mapping BlockKey -> where and what.

One record per stored page (fixed 65 bytes, little-endian)::

    slot u64 | raw_len u64 | stored_len u64 | checksum u64 | codec u8 |
    created f64 | last_access f64 | deadline f64 | ttl_s f64

Times are wall-clock seconds (``time.time()``), so they survive a restart; a missing deadline
or ttl is NaN. A ``meta`` sub-database records the tier's geometry and format version, checked
on every open. LMDB commits are atomic, so a process killed at any point leaves either the old
or the new record, never half of one.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import lmdb

from ..errors import ConfigError

_RECORD = struct.Struct("<QQQQBdddd")
RECORD_BYTES = _RECORD.size
KEY_BYTES = 32


@dataclass(slots=True)
class DiskRecord:
    """One page on disk, as the index stores it."""

    slot: int
    raw_len: int
    stored_len: int
    checksum: int
    codec: int
    created: float
    last_access: float
    deadline: float | None  # wall clock
    ttl_s: float | None

    def pack(self) -> bytes:
        return _RECORD.pack(self.slot, self.raw_len, self.stored_len, self.checksum, self.codec,
                            self.created, self.last_access, _nan(self.deadline), _nan(self.ttl_s))

    @classmethod
    def unpack(cls, raw: bytes) -> "DiskRecord":
        """Decode a record; ``ValueError`` if it is not one (a corrupted value)."""
        if len(raw) != RECORD_BYTES:
            raise ValueError(f"record of {len(raw)} bytes, expected {RECORD_BYTES}")
        slot, raw_len, stored_len, checksum, codec, created, last, deadline, ttl = _RECORD.unpack(raw)
        if not all(math.isfinite(t) for t in (created, last)):
            raise ValueError("non-finite timestamps")
        return cls(slot, raw_len, stored_len, checksum, codec, created, last,
                   None if math.isnan(deadline) else deadline, None if math.isnan(ttl) else ttl)


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


class DiskIndex:
    """Thin, typed wrapper over the LMDB environment in ``<dir>/index``."""

    def __init__(self, directory: Path, *, sync: bool, map_size: int) -> None:
        directory.mkdir(mode=0o700, exist_ok=True)
        try:
            self._env = lmdb.open(str(directory), map_size=map_size, max_dbs=2, mode=0o600,
                                  sync=sync, metasync=sync, readahead=False)
        except lmdb.Error as exc:
            raise ConfigError(f"cannot open the disk tier index in {directory}: {exc}; "
                              "move the directory aside or point disk.paths elsewhere") from None
        self._meta = self._env.open_db(b"meta")
        self._entries = self._env.open_db(b"entries")

    # -- meta ------------------------------------------------------------------------------
    def read_meta(self) -> dict | None:
        with self._env.begin(db=self._meta) as txn:
            raw = txn.get(b"meta")
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise ConfigError("the disk tier index has an unreadable meta record; "
                              "move the directory aside or point disk.paths elsewhere") from None

    def write_meta(self, meta: dict) -> None:
        with self._env.begin(db=self._meta, write=True) as txn:
            txn.put(b"meta", json.dumps(meta, sort_keys=True).encode())

    # -- records ---------------------------------------------------------------------------
    def put_many(self, items: list[tuple[bytes, DiskRecord]]) -> None:
        """Commit records in one transaction (atomic: all or none survive a crash)."""
        with self._env.begin(db=self._entries, write=True) as txn:
            for key, record in items:
                txn.put(key, record.pack())

    def delete(self, key: bytes) -> None:
        with self._env.begin(db=self._entries, write=True) as txn:
            txn.delete(key)

    def delete_many(self, keys: list[bytes]) -> None:
        with self._env.begin(db=self._entries, write=True) as txn:
            for key in keys:
                txn.delete(key)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, raw record) pair, in key order (raw: decode with ``DiskRecord.unpack``)."""
        with self._env.begin(db=self._entries, buffers=False) as txn:
            yield from txn.cursor()

    def get(self, key: bytes) -> bytes | None:
        with self._env.begin(db=self._entries) as txn:
            return txn.get(key)

    def __len__(self) -> int:
        with self._env.begin(db=self._entries) as txn:
            return txn.stat(self._entries)["entries"]

    def sync(self) -> None:
        self._env.sync(True)

    def close(self) -> None:
        self._env.close()
