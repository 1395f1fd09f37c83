"""How pages move between the host tier and the disk tier: write-back demotion, write-through,
inclusive promotion, and the bookkeeping that keeps a disk copy equal to the host's version.

A mixin of ``TieredStore`` (same lock, counters and tier indexes); split out of store.py by
concept. Every method here is called with the store's lock *not* held unless it says so.
"""

from __future__ import annotations

import mmap
import time
from concurrent.futures import Future
from typing import Any, Sequence

from .index import Entry, Reservation
from .keys import BlockKey
from .errors import InvalidArgumentError, StoreClosedError
from .tiers.device import DEVICE_TO_HOST, HOST_TO_DEVICE
from .tiers.disk import DiskTier
from .transfer import TransferEngine
from .tiers.disk_index import DiskRecord


REMOTE_WRITES = "host->remote"  # async write-through batches and read-refresh expiry updates
REMOTE_READS = "remote->host"   # remote hits (measured inline)
HOST_READS = "host->caller"   # hits copied out of the host tier (measured, never queued)
DISK_WRITES = "host->disk"    # write-back, write-through and flush batches
DISK_READS = "disk->host"     # disk hits, promotions, and the queued prefetches


def make_engine(queue_depth: int) -> TransferEngine:
    """The store's transfer engine: one route per direction between its tiers."""
    # one host->remote worker: writes of one key must reach Redis in put order
    # device->host / host->device: CUDA copies on their own streams, measured with events
    return TransferEngine({HOST_READS: 1, DISK_WRITES: 1, DISK_READS: 2, REMOTE_WRITES: 1,
                           REMOTE_READS: 1, DEVICE_TO_HOST: 1, HOST_TO_DEVICE: 1},
                          queue_depth=queue_depth)


class TierMoves:
    """The host <-> disk paths of ``TieredStore`` (see docs/ARCHITECTURE.md, "Disk tier")."""

    def flush(self, *, batch_pages: int = 64) -> int:
        """Write every page that is only in the host tier to disk (a checkpoint: a restart then
        serves them), ``batch_pages`` per I/O batch; returns how many pages were written.
        ``0`` without a disk tier. Each page is written at most once per call: when the disk
        tier is smaller than what the host tier holds, it keeps what its policy keeps."""
        if isinstance(batch_pages, bool) or not isinstance(batch_pages, int) or batch_pages < 1:
            raise InvalidArgumentError(f"batch_pages must be an int >= 1, got {batch_pages!r}")
        self._drain_remote()
        if self._disk is None:
            return 0
        written = 0
        tried: set[BlockKey] = set()  # each page once: a disk smaller than the host tier evicts
        while True:                   # pages written earlier in this flush, which must not loop
            with self._lock:          # one scan per pass, not per batch (pages put meanwhile:
                self._check_open()    # the next pass)
                on_disk = self._disk_index.entries
                todo = [key for key in self._first_index.entries
                        if key not in on_disk and key not in tried]
            if not todo:
                return written
            for first in range(0, len(todo), batch_pages):
                with self._lock:
                    self._check_open()
                    self._first_index.reclaim_expired(self._clock())  # no use writing those
                    held = []
                    for key in todo[first:first + batch_pages]:
                        entry = self._first_index.entries.get(key)
                        tried.add(key)
                        if entry is not None and key not in self._disk_index.entries:
                            entry.readers += 1
                            held.append(entry)
                if not held:
                    continue
                stored = self._copy_down(held, demote=False)
                written += stored
                if stored == 0:  # the disk admits nothing more (full of pins, or failing)
                    return written

    def prefetch(self, keys: Sequence[Any], *, deadline_s: float | None = None) -> "Future[int]":
        """Warm the host tier with whichever of ``keys`` are only on disk, on the transfer
        engine's ``disk->host`` workers (prefetches queued together become one batched read);
        the future gives how many pages were brought up. Not counted as reads in ``stats``,
        and opens no TTL window. A prefetch not started within ``deadline_s`` seconds never
        runs, and its future fails with ``DeadlineExceeded`` at the deadline either way."""
        checked = [self._key(k) for k in keys]
        with self._lock:
            self._check_open()
        try:
            return self._engine.submit_item(DISK_READS, self._prefetch_batch, checked, deadline_s=deadline_s)
        except StoreClosedError:
            raise StoreClosedError("this TieredStore is closed; open a new one") from None

    def _prefetch_batch(self, requests: list[list[BlockKey]]) -> list[int]:
        """One batched read for several prefetch requests; pages brought up, per request."""
        brought = self._prefetch([key for keys in requests for key in keys])
        return [sum(key in brought for key in dict.fromkeys(keys)) for keys in requests]

    def _prefetch(self, keys: list[BlockKey]) -> set[BlockKey]:
        if self._disk is None and self._remote is None:
            return set()
        with self._lock:
            if self._closed:
                return set()
            host = self._first_index.entries
            disk = {} if self._disk is None else self._disk_index.entries
            lower = [k for k in dict.fromkeys(keys)
                     if k not in host and (k in disk or self._remote is not None)]
        if not lower:
            return set()
        got = self._get_many(lower, None, count=False, promote=True)
        return {key for key, view in zip(lower, got) if view is not None}

    def _refresh_disk_copy(self, entry: Entry) -> None:
        """A host hit refreshed ``entry``'s window: the disk copy (if any) keeps the same
        deadline, so it neither expires under a live page nor comes back stale after a restart.
        Caller holds the lock."""
        if self._disk_index is None or not self._first_index.refresh_on_read:
            return
        on_disk = self._disk_index.entries.get(entry.key)
        if on_disk is not None and on_disk.deadline != entry.deadline:
            self._disk_index.set_deadline(on_disk, entry.deadline)
            self._disk_reads[entry.key] = time.time()  # persisted at close

    def _read_disk(self, positions: list[int], found: list, outs: list[memoryview] | None,
                   outcomes: list[bool | None], results: list[memoryview | None], *,
                   promote: bool) -> None:
        """Read the disk hits at ``positions`` in one batch (into aligned fresh buffers when
        the caller gave none, so O_DIRECT lands in them without a bounce). With ``promote``,
        host slots are reserved first and the I/O engine copies each page into its slot as
        the page's read completes, so promotion overlaps the rest of the batch; the slots are
        published once the pages verify."""
        entries = [found[i][0] for i in positions]
        dsts = [outs[i] if outs is not None else aligned_buffer(e.nbytes)
                for i, e in zip(positions, entries)]
        slots = self._reserve_promotions(entries) if promote else {}
        ok: list[bool] = []
        try:
            ok = self._engine.run(
                DISK_READS, sum(e.nbytes for e in entries), self._disk.read_many,
                [e.location for e in entries], [e.key for e in entries], dsts,
                [e.checksum for e in entries],
                [slots[id(e)][1] if id(e) in slots else None for e in entries] if slots else None)
        finally:
            if slots:
                self._settle_promotions(entries, ok, slots)
        wall = time.time()
        for i, entry, dst, good in zip(positions, entries, dsts, ok):
            outcomes[i] = good
            if good:
                results[i] = dst
                self._disk_reads[entry.key] = wall

    def _reserve_promotions(self, entries: list[Entry]) -> dict[int, tuple[Reservation, memoryview]]:
        """Host slots for the disk ``entries`` about to be read, by ``id(entry)``: a page
        already in the host tier (a newer version) or with no room left gets none."""
        host, hindex = self._first_tier, self._first_index
        try:
            self._make_room(len(entries))  # write-back: demote host victims first
        except StoreClosedError:
            return {}
        slots: dict[int, tuple[Reservation, memoryview]] = {}
        with self._lock:
            if self._closed:
                return {}
            now = self._clock()
            for entry in entries:
                if entry.key in hindex.entries or id(entry) in slots:
                    continue
                reservation = hindex.reserve(entry.key, entry.nbytes, now, False)
                if reservation is not None:
                    slots[id(entry)] = (reservation, host.slot_view(reservation.location, entry.nbytes))
        return slots

    def _settle_promotions(self, entries: list[Entry], ok: list[bool],
                           slots: dict[int, tuple[Reservation, memoryview]]) -> None:
        """Publish the promoted copies of pages that read back intact; free the other slots.
        The disk copy stays (inclusive), so evicting the page again writes nothing."""
        hindex = self._first_index
        verify = self._first_tier.verify
        with self._lock:
            for i, entry in enumerate(entries):
                held = slots.pop(id(entry), None)
                if held is None:
                    continue
                reservation, _ = held
                if i < len(ok) and ok[i] and entry.live and entry.key not in hindex.entries:
                    hindex.publish(entry.key, reservation, entry.nbytes, entry.deadline,
                                   entry.ttl_s, entry.checksum if verify else None)
                else:
                    hindex.abort(reservation)

    def _forget_disk_page(self, entry: Entry) -> None:
        """A page left the disk tier: delete its index record (before the slot is reused)."""
        self._disk.forget(entry.key)
        self._disk_reads.pop(entry.key, None)

    def _restored_entries(self, tier: DiskTier) -> list[Entry]:
        """The disk tier's committed pages as index entries, least recently used first."""
        mono, wall = self._clock(), time.time()
        entries = []
        for key, record in sorted(tier.restore(), key=lambda item: item[1].last_access):
            deadline = None if record.deadline is None else mono + (record.deadline - wall)
            entries.append(Entry(key, record.slot, record.raw_len, tier.slot_bytes, deadline,
                                 record.ttl_s, False, record.checksum))
        return entries

    def _after_publish(self, keys: list[BlockKey]) -> list[Entry]:
        """After new versions of ``keys`` landed in the host tier (lock held): drop their
        older disk copies, and hold the host entries that ``write_through`` must copy down."""
        if self._disk_index is None:
            return []
        disk = self._disk_index
        for key in keys:
            if key in disk.entries:
                disk.remove(key, None)
        if self.config.disk.write_mode != "write_through":
            return []
        held = []
        for key in keys:
            entry = self._first_index.entries.get(key)
            if entry is not None:
                entry.readers += 1
                held.append(entry)
        return held

    def _make_room(self, count: int) -> None:
        """Write-back: demote host victims to disk until ``count`` host slots are free."""
        with self._lock:
            self._check_open()
            index = self._first_index
            index.reclaim_expired(self._clock())
            victims = index.take_victims(count - index.allocator.free_slots)
        if victims:
            self._copy_down(victims, demote=True)

    def _copy_down(self, held: list[Entry], *, demote: bool) -> int:
        """Write held host entries to disk: data first, index record after. ``demote`` entries
        came from ``take_victims`` and leave the host tier once stored (or go back to its policy
        if the disk refused them); others stay and just lose their hold. Returns how many pages
        the disk now holds (written, or already there)."""
        host, hindex = self._first_tier, self._first_index
        disk, dindex = self._disk, self._disk_index
        with self._lock:
            now = self._clock()
            plan: list[tuple[Entry, Reservation | None]] = []
            for entry in held:
                on_disk = dindex.entries.get(entry.key)
                if on_disk is not None:  # clean: the disk already has this version
                    if on_disk.deadline != entry.deadline:  # refreshed by reads in host
                        dindex.set_deadline(on_disk, entry.deadline)
                        self._disk_reads[entry.key] = time.time()  # persisted at close
                    plan.append((entry, None))
                else:
                    plan.append((entry, dindex.reserve(entry.key, entry.nbytes, now, False)))
            self._inflight += 1
        todo = [(e, r) for e, r in plan if r is not None]
        checksums: list[int | None] = []
        try:
            if todo:
                checksums = self._engine.run(
                    DISK_WRITES, sum(e.nbytes for e, _ in todo), disk.write_many,
                    [r.location for _, r in todo], [e.key for e, _ in todo],
                    [host.slot_view(e.location, e.nbytes) for e, _ in todo],
                    [e.checksum for e, _ in todo])
        finally:
            with self._lock:
                now, wall = self._clock(), time.time()
                stored = {id(e) for e, r in plan if r is None and e.key in dindex.entries}
                records, published = [], []
                for i, (entry, reservation) in enumerate(todo):
                    if i < len(checksums) and checksums[i] is not None and entry.live:
                        dindex.publish(entry.key, reservation, entry.nbytes, entry.deadline,
                                       entry.ttl_s, checksums[i])
                        records.append((bytes(entry.key), _record(
                            reservation.location, entry.nbytes, checksums[i], entry.deadline,
                            entry.ttl_s, now, wall,
                            disk.stored_format(reservation.location, entry.nbytes))))
                        published.append(entry)
                    else:
                        dindex.abort(reservation)
                if records and disk.commit(records):
                    stored.update(id(e) for e in published)
                else:  # the index refused: these pages are not on disk after all
                    for entry in published:
                        dindex.remove(entry.key, None)
                for entry in held:
                    if demote:
                        hindex.release_victim(entry, id(entry) in stored)
                    else:
                        hindex.end_read(entry, None)
                self._end_copy()
        return len(stored)

    def _promote(self, items: list[tuple[BlockKey, memoryview, Entry | None, float | None, float | None]]) -> None:
        """Copy pages just read from a lower tier into the host tier; each item is (key, page,
        the disk entry it came from or None, deadline, ttl_s). The lower copy stays."""
        if not items:
            return
        host, hindex = self._first_tier, self._first_index
        try:
            if self._disk is not None:  # without a disk, reserve() evicts by policy itself
                self._make_room(len(items))
        except StoreClosedError:
            return
        with self._lock:
            if self._closed:
                return
            now = self._clock()
            plan = []
            for key, view, source, deadline, ttl_s in items:
                if key in hindex.entries or (source is not None and not source.live):
                    continue  # a newer version arrived meanwhile, or the disk copy is gone
                reservation = hindex.reserve(key, view.nbytes, now, False)
                if reservation is not None:
                    plan.append((key, view, source, deadline, ttl_s, reservation))
            if not plan:
                return
            self._inflight += 1
        checksums: list[int | None] = []
        try:
            checksums = [host.write(item[-1].location, item[1]) for item in plan]
        finally:
            with self._lock:
                for i, (key, view, source, deadline, ttl_s, reservation) in enumerate(plan):
                    if (i >= len(checksums) or key in hindex.entries
                            or (source is not None and not source.live)):
                        hindex.abort(reservation)
                    else:
                        hindex.publish(key, reservation, view.nbytes, deadline, ttl_s, checksums[i])
                self._end_copy()

    def _save_disk_access_times(self) -> None:
        """Persist last-access times and (read-refreshed) deadlines of disk pages read."""
        mono, wall = self._clock(), time.time()
        entries = self._disk_index.entries
        times = {}
        for key, last in self._disk_reads.items():
            entry = entries.get(key)
            if entry is not None:
                deadline = None if entry.deadline is None else wall + (entry.deadline - mono)
                times[bytes(key)] = (last, deadline)
        try:
            self._disk.touch_many(times)
        except Exception:  # best effort: the older times stay valid
            pass


def _record(slot: int, nbytes: int, checksum: int, deadline: float | None, ttl_s: float | None,
            now: float, wall: float, stored: tuple[int, int]) -> DiskRecord:
    """The durable index record of a page written to ``slot`` as ``stored`` = (codec,
    payload length), its deadline converted to wall time."""
    codec, stored_len = stored
    return DiskRecord(slot, nbytes, stored_len, checksum, codec, wall, wall,
                      None if deadline is None else wall + (deadline - now), ttl_s)


def aligned_buffer(nbytes: int) -> memoryview:
    """A fresh, caller-owned, page-aligned buffer (O_DIRECT reads land in it directly)."""
    return memoryview(mmap.mmap(-1, nbytes))
