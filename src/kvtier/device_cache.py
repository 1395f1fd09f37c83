"""The device tier's bookkeeping: which pages have a copy in HBM, in which slot, which to drop.

The device tier is a **write-through cache** in front of the host tier: every page it holds
is also in the host or the disk tier, as the same version. So dropping an HBM copy is
free (no demotion), and a crash loses nothing the host tier would not. The store keeps that
invariant with three rules, all applied under its lock:

* a put publishes its HBM copy together with the host copy, and a put of a key without an
  HBM copy (a CPU value, a full device tier) drops the older one (``publish``/``invalidate``);
* when a key leaves both the host and the disk tier (evicted, expired, removed, corrupt), its
  HBM copy goes too (``invalidate``);
* a promotion (a page read from a lower tier into a CUDA tensor, then copied into HBM) is
  published only if nothing invalidated its key since the read located it (``begin_fill`` /
  ``end_fill``).

No CUDA and no I/O here: ``tiers/device.py`` (``DeviceArena``) moves the bytes and
``device_moves.py`` wires both into the store, so this is tested with plain objects. Slots,
LRU order and readers are a ``TierIndex`` of their own (no pins, no deadlines: a device hit
checks the page's window in the host or disk index). Not thread-safe: the store calls it
under its lock.
"""

from __future__ import annotations

from typing import Hashable

from .index import Entry, GhostList, Reservation, SlotAllocator, TierIndex
from .metrics import TierStats
from .policy import LRUPolicy

__all__ = ["DeviceCache", "Fill"]


class Fill:
    """A promotion in flight: ``valid`` until its key is invalidated."""

    __slots__ = ("key", "valid")

    def __init__(self, key: Hashable) -> None:
        self.key = key
        self.valid = True


class DeviceCache:
    """Which keys have an HBM copy, in which slot; LRU eviction within ``slot_count`` slots.

    Args:
        slot_count: slots of the device arena.
        slot_bytes: size of one slot; larger pages are never cached.
        promote_on_read: whether ``begin_fill`` registers promotions (``DeviceTierConfig``).
    """

    name = "device"

    def __init__(self, slot_count: int, slot_bytes: int, *, promote_on_read: bool = True) -> None:
        self.index = TierIndex("device", SlotAllocator(slot_count, slot_bytes), LRUPolicy(),
                               GhostList(0),  # dropping an HBM copy is never a miss reason
                               max_pinned_bytes=0, refresh_on_read=False)
        self.promote_on_read = promote_on_read
        self._fills: dict[Hashable, list[Fill]] = {}
        self.invalidations = 0   # copies dropped because their key changed or left the store
        self.fills_dropped = 0   # promotions not published: their key changed meanwhile

    @property
    def slot_bytes(self) -> int:
        return self.index.allocator.slot_bytes

    def fits(self, nbytes: int) -> bool:
        return 0 < nbytes <= self.slot_bytes

    def __contains__(self, key: Hashable) -> bool:
        return key in self.index.entries

    def __len__(self) -> int:
        return len(self.index.entries)

    # -- reads -------------------------------------------------------------------------------
    def lookup(self, key: Hashable) -> Entry | None:
        """The HBM copy of ``key``, or ``None`` (no side effects)."""
        return self.index.entries.get(key)

    def begin_read(self, entry: Entry) -> None:
        """A hit: its slot is not reused until ``end_read``; refreshes the LRU order."""
        self.index.begin_read(entry, 0.0)

    def end_read(self, entry: Entry, ok: bool | None) -> None:
        """``ok``: the copy was queued (counted as a hit); ``None``: it was not."""
        self.index.end_read(entry, True if ok else None)

    # -- a put's copy ------------------------------------------------------------------------
    def reserve(self, key: Hashable, nbytes: int) -> Reservation | None:
        """A slot for a new copy of ``key``, evicting the least recently used copies not being
        read; ``None`` when the page does not fit a slot or every slot is being read."""
        if not self.fits(nbytes):
            return None
        return self.index.reserve(key, nbytes, 0.0, False)

    def publish(self, key: Hashable, reservation: Reservation, nbytes: int) -> None:
        """Make a written copy visible, replacing any older copy (and promotions) of ``key``."""
        self._cancel_fills(key)
        self.index.publish(key, reservation, nbytes, None, None, None)

    def abort(self, reservation: Reservation) -> None:
        self.index.abort(reservation)

    def invalidate(self, key: Hashable) -> bool:
        """``key`` changed or left the store: drop its copy and cancel its promotions.
        Returns whether a copy was dropped (its slot is reused once its readers are done)."""
        self._cancel_fills(key)
        if self.index.remove(key, None):
            self.invalidations += 1
            return True
        return False

    # -- promotions --------------------------------------------------------------------------
    def begin_fill(self, key: Hashable, nbytes: int) -> Fill | None:
        """Register a promotion of ``key`` before its read locates the version it copies;
        ``None`` when promotions are off or the page does not fit a slot."""
        if not self.promote_on_read or not self.fits(nbytes):
            return None
        fill = Fill(key)
        self._fills.setdefault(key, []).append(fill)
        return fill

    def reserve_fill(self, fill: Fill, nbytes: int) -> Reservation | None:
        """A slot for a promotion whose read succeeded; ``None`` if it is stale, already
        cached by someone else, or there is no room."""
        if not fill.valid or fill.key in self.index.entries:
            return None
        return self.reserve(fill.key, nbytes)

    def end_fill(self, fill: Fill, reservation: Reservation | None, nbytes: int) -> bool:
        """Finish a promotion: publish its copy if its key was not invalidated meanwhile (and
        nobody cached it first), else give the slot back. Returns whether it was published."""
        self._forget_fill(fill)
        if reservation is None:
            return False
        if fill.valid and fill.key not in self.index.entries:
            self.index.publish(fill.key, reservation, nbytes, None, None, None)
            return True
        self.index.abort(reservation)
        self.fills_dropped += 1
        return False

    def pending_fills(self) -> int:
        return sum(len(fills) for fills in self._fills.values())

    # -- reporting ---------------------------------------------------------------------------
    def stats(self, extra: dict[str, object]) -> TierStats:
        index, alloc = self.index, self.index.allocator
        return TierStats(
            name=self.name, hits=index.hits, bytes_in=index.bytes_in, bytes_out=index.bytes_out,
            used_bytes=index.used_bytes, capacity_bytes=alloc.capacity_bytes,
            slots_used=alloc.used, slots_total=alloc.slot_count, entries=len(index.entries),
            pinned_bytes=0, evictions=index.evictions, expirations=0,
            extra={"promote_on_read": self.promote_on_read, "invalidations": self.invalidations,
                   "fills_dropped": self.fills_dropped, **extra})

    # -- internals ---------------------------------------------------------------------------
    def _cancel_fills(self, key: Hashable) -> None:
        fills = self._fills.pop(key, None)
        if fills:
            for fill in fills:
                fill.valid = False

    def _forget_fill(self, fill: Fill) -> None:
        fills = self._fills.get(fill.key)
        if fills is None:
            return
        try:
            fills.remove(fill)
        except ValueError:
            return
        if not fills:
            del self._fills[fill.key]
