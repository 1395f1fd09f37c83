"""The I/O-free manager of one tier: which blocks it holds, where, pins, deadlines, eviction.

Nothing here touches bytes, files, sockets or the clock: callers pass ``now`` in, and tiers
(``tiers/``) move the bytes. That keeps this module testable with plain objects and lets the
simulator drive the very same code. Not thread-safe: the store calls it under its lock.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Hashable

from .metrics import MissReason
from .policy import EvictionPolicy
from .policy.ttl import DeadlineHeap


class SlotAllocator:
    """Fixed-size slots numbered ``0..slot_count-1``; every block takes one whole slot.

    Memory is O(slots ever freed), not O(slot_count): untouched slots are handed out in order
    from a counter, so a simulated multi-TiB tier costs nothing up front.
    """

    __slots__ = ("slot_bytes", "slot_count", "can_grow", "_free", "_next")

    def __init__(self, slot_count: int, slot_bytes: int,
                 can_grow: Callable[[], bool] | None = None) -> None:
        """``can_grow()`` is asked before a never-used slot is handed out (a disk tier's
        free-space floor); reused slots need no new space."""
        self.slot_count = slot_count
        self.slot_bytes = slot_bytes
        self.can_grow = can_grow
        self._free: list[int] = []
        self._next = 0  # slots below this were handed out at least once

    def restore(self, used: set[int]) -> None:
        """Start from a set of occupied slots (a reopened persistent tier)."""
        self._next = max(used) + 1 if used else 0
        self._free = [slot for slot in range(self._next - 1, -1, -1) if slot not in used]

    def charge(self, nbytes: int) -> int:
        """Capacity a block of ``nbytes`` consumes."""
        return self.slot_bytes

    def allocate(self, nbytes: int) -> int | None:
        if self._free:
            return self._free.pop()
        if self._next < self.slot_count and (self.can_grow is None or self.can_grow()):
            self._next += 1
            return self._next - 1
        return None

    def free(self, slot: int) -> None:
        self._free.append(slot)

    @property
    def capacity_bytes(self) -> int:
        return self.slot_count * self.slot_bytes

    @property
    def used(self) -> int:
        return self._next - len(self._free)

    @property
    def free_slots(self) -> int:
        """Slots a reservation could take without evicting (ignoring ``can_grow``)."""
        return self.slot_count - self.used


class GhostList:
    """Remembers why, and from which tier, recently dropped keys left (bounded, oldest first out)."""

    __slots__ = ("_reasons", "_limit")

    def __init__(self, limit: int) -> None:
        self._reasons: OrderedDict[Hashable, tuple[MissReason, str]] = OrderedDict()
        self._limit = limit

    def record(self, key: Hashable, reason: MissReason, tier: str) -> None:
        if self._limit == 0:
            return
        self._reasons[key] = (reason, tier)
        self._reasons.move_to_end(key)
        if len(self._reasons) > self._limit:
            self._reasons.popitem(last=False)

    def discard(self, key: Hashable) -> None:
        self._reasons.pop(key, None)

    def reason(self, key: Hashable) -> MissReason:
        found = self._reasons.get(key)
        return MissReason.NEVER_STORED if found is None else found[0]

    def detail(self, key: Hashable) -> tuple[MissReason, str | None]:
        """(reason, tier that dropped it); the tier is ``None`` for ``never_stored``."""
        return self._reasons.get(key, (MissReason.NEVER_STORED, None))


class Entry:
    """One block in one tier. ``readers`` > 0 while bytes are being copied out of its location."""

    __slots__ = ("key", "location", "nbytes", "charge", "deadline", "ttl_s", "pinned",
                 "readers", "checksum", "live")

    def __init__(self, key: Hashable, location: object, nbytes: int, charge: int,
                 deadline: float | None, ttl_s: float | None, pinned: bool,
                 checksum: int | None) -> None:
        self.key = key
        self.location = location
        self.nbytes = nbytes
        self.charge = charge
        self.deadline = deadline
        self.ttl_s = ttl_s
        self.pinned = pinned
        self.readers = 0
        self.checksum = checksum
        self.live = True


class Reservation:
    """Space set aside for a block whose bytes are being written (between reserve and publish)."""

    __slots__ = ("location", "charge", "pinned")

    def __init__(self, location: object, charge: int, pinned: bool) -> None:
        self.location = location
        self.charge = charge
        self.pinned = pinned


class TierIndex:
    """Bookkeeping of one tier.

    Invariants: the allocator's used capacity never exceeds its capacity; pinned (and
    pin-reserved) capacity never exceeds ``max_pinned_bytes``; pinned blocks are neither
    evicted nor expired; a location is reused only after its last reader released it.
    """

    def __init__(self, name: str, allocator: SlotAllocator, policy: EvictionPolicy,
                 ghosts: GhostList, *, max_pinned_bytes: int, refresh_on_read: bool,
                 on_drop: Callable[[Entry, MissReason], None] | None = None,
                 on_remove: Callable[[Entry], None] | None = None,
                 can_evict: Callable[[Entry], bool] | None = None) -> None:
        """``on_drop(entry, reason)`` runs when an entry is evicted or expires (not when it is
        replaced, removed on request or found corrupt): the hook a multi-tier owner uses to
        demote the block to the next tier. ``on_remove(entry)`` runs for every entry that
        leaves the index for any reason (a persistent tier deletes its record there). Both run
        before the entry's location is freed. ``can_evict(entry)`` lets ``reserve`` skip
        entries it must not drop on its own (a write-back tier's pages not yet copied down)."""
        self.name = name
        self.can_evict = can_evict
        self.on_drop = on_drop
        self.on_remove = on_remove
        self.allocator = allocator
        self.policy = policy
        self.ghosts = ghosts
        self.max_pinned_bytes = max_pinned_bytes
        self.refresh_on_read = refresh_on_read
        self.entries: dict[Hashable, Entry] = {}
        self._expiry = DeadlineHeap()  # unpinned entries that have a deadline
        self.used_bytes = 0
        self.pinned_bytes = 0
        self.hits = self.bytes_in = self.bytes_out = 0
        self.evictions = self.expirations = 0

    # -- lookups ---------------------------------------------------------------------------
    def find(self, key: Hashable, now: float) -> Entry | None:
        """The live entry of ``key``, or ``None`` (an expired one is dropped as ``expired``)."""
        entry = self.entries.get(key)
        if entry is not None and entry.deadline is not None and entry.deadline <= now and not entry.pinned:
            self._expire(entry)
            return None
        return entry

    def begin_read(self, entry: Entry, now: float, refresh: bool = True) -> None:
        """A hit: protect the location while bytes are copied out, refresh LRU and (unless
        ``refresh`` is false: a prefetch, not a read) the TTL window."""
        entry.readers += 1
        if refresh and self.refresh_on_read and entry.ttl_s is not None:
            entry.deadline = now + entry.ttl_s
            if not entry.pinned:
                self._expiry.set(entry.key, entry.deadline)
        if not entry.pinned:
            self.policy.touch(entry.key, entry.deadline)

    def end_read(self, entry: Entry, ok: bool | None) -> None:
        """The copy is over: ``True`` verified, ``False`` failed verification (the block is
        dropped: fail closed), ``None`` aborted by an error that says nothing about the bytes."""
        entry.readers -= 1
        if ok:
            self.hits += 1
            self.bytes_out += entry.nbytes
        elif ok is False and entry.live:
            self._drop(entry, MissReason.CORRUPT)  # frees the location once readers == 0
            return
        if not entry.live and entry.readers == 0:
            self.allocator.free(entry.location)

    # -- writes ----------------------------------------------------------------------------
    def reserve(self, key: Hashable, nbytes: int, now: float, pin: bool) -> Reservation | None:
        """Find room for a block, evicting (expired first, then by policy); ``None`` if full."""
        charge = self.allocator.charge(nbytes)
        old = self.entries.get(key)
        pin = pin or (old is not None and old.pinned)
        if pin:
            credit = old.charge if old is not None and old.pinned else 0
            if self.pinned_bytes - credit + charge > self.max_pinned_bytes:
                return None
        if self._expiry:
            self.reclaim_expired(now)
        location = self.allocator.allocate(nbytes)
        busy: list[Entry] = []
        while location is None:
            victim_key = self.policy.victim()
            if victim_key is None:
                break
            victim = self.entries[victim_key]
            if victim.readers or (self.can_evict is not None and not self.can_evict(victim)):
                # being copied out right now, or not ours to drop: skip it this time
                self.policy.forget(victim_key)
                busy.append(victim)
                continue
            if self.on_drop is not None:
                self.on_drop(victim, MissReason.EVICTED)
            self._drop(victim, MissReason.EVICTED)
            self.evictions += 1
            location = self.allocator.allocate(nbytes)
        for entry in busy:
            self.policy.admit(entry.key, entry.deadline)
        if location is None:
            return None
        if pin:
            self.pinned_bytes += charge
        return Reservation(location, charge, pin)

    def publish(self, key: Hashable, reservation: Reservation, nbytes: int,
                deadline: float | None, ttl_s: float | None, checksum: int | None) -> None:
        """Make a written block visible, replacing any older version of ``key``."""
        old = self.entries.get(key)
        if old is not None:
            self._drop(old, None)
        entry = Entry(key, reservation.location, nbytes, reservation.charge, deadline, ttl_s,
                      reservation.pinned, checksum)
        self.entries[key] = entry
        self.used_bytes += nbytes
        self.bytes_in += nbytes
        if not entry.pinned:
            self.policy.admit(key, deadline)
            if deadline is not None:
                self._expiry.set(key, deadline)
        self.ghosts.discard(key)

    def restore(self, entries: list[Entry]) -> None:
        """Load the entries of a reopened persistent tier, least recently used first."""
        for entry in entries:
            self.entries[entry.key] = entry
            self.used_bytes += entry.nbytes
            self.policy.admit(entry.key, entry.deadline)
            if entry.deadline is not None:
                self._expiry.set(entry.key, entry.deadline)
        self.allocator.restore({entry.location for entry in entries})

    def take_victims(self, count: int) -> list[Entry]:
        """Up to ``count`` entries that ``reserve`` would evict next, held for demotion.

        Each returned entry stays live and readable but leaves the policy and gains a reader
        (so its location cannot be reused); finish with ``release_victim``.
        """
        taken: list[Entry] = []
        skipped: list[Entry] = []
        while len(taken) < count:
            key = self.policy.victim()
            if key is None:
                break
            entry = self.entries[key]
            self.policy.forget(key)
            (skipped if entry.readers else taken).append(entry)
        for entry in skipped:
            self.policy.admit(entry.key, entry.deadline)
        for entry in taken:
            entry.readers += 1
        return taken

    def release_victim(self, entry: Entry, demoted: bool) -> None:
        """End a ``take_victims`` hold by evicting the entry: silently if it was copied to the
        next tier (it still exists there), as ``evicted`` if that tier refused it (full or
        failing: the page is lost, the tier keeps working). Pinned meanwhile: it stays."""
        if entry.live and not entry.pinned:
            self._drop(entry, None if demoted else MissReason.EVICTED)
            self.evictions += 1
        self.end_read(entry, None)

    def abort(self, reservation: Reservation) -> None:
        """Give back a reservation whose write failed."""
        self.allocator.free(reservation.location)
        if reservation.pinned:
            self.pinned_bytes -= reservation.charge

    def remove(self, key: Hashable, reason: MissReason) -> bool:
        entry = self.entries.get(key)
        if entry is None:
            return False
        self._drop(entry, reason)
        return True

    # -- pins and expiry ---------------------------------------------------------------------
    def pin(self, entry: Entry) -> bool:
        if entry.pinned:
            return True
        if self.pinned_bytes + entry.charge > self.max_pinned_bytes:
            return False
        entry.pinned = True
        self.pinned_bytes += entry.charge
        self.policy.forget(entry.key)
        self._expiry.discard(entry.key)
        return True

    def unpin(self, entry: Entry) -> None:
        if not entry.pinned:
            return
        entry.pinned = False
        self.pinned_bytes -= entry.charge
        self.policy.admit(entry.key, entry.deadline)
        if entry.deadline is not None:
            self._expiry.set(entry.key, entry.deadline)

    def set_deadline(self, entry: Entry, deadline: float | None) -> None:
        """Move an entry's deadline (a copy in another tier was refreshed)."""
        entry.deadline = deadline
        if entry.pinned:
            return
        self.policy.touch(entry.key, deadline)
        if deadline is None:
            self._expiry.discard(entry.key)
        else:
            self._expiry.set(entry.key, deadline)

    def reclaim_expired(self, now: float) -> int:
        """Drop every unpinned block whose deadline has passed; returns how many."""
        count = 0
        while (top := self._expiry.peek()) is not None and top[0] <= now:
            self._expire(self.entries[top[1]])
            count += 1
        return count

    # -- internals ---------------------------------------------------------------------------
    def _expire(self, entry: Entry) -> None:
        if self.on_drop is not None:
            self.on_drop(entry, MissReason.EXPIRED)
        self._drop(entry, MissReason.EXPIRED)
        self.expirations += 1

    def _drop(self, entry: Entry, reason: MissReason | None) -> None:
        """Forget an entry; its location is freed now, or by the last reader's ``end_read``."""
        if self.on_remove is not None:
            self.on_remove(entry)
        del self.entries[entry.key]
        entry.live = False
        self.used_bytes -= entry.nbytes
        if entry.pinned:
            self.pinned_bytes -= entry.charge
        self.policy.forget(entry.key)
        self._expiry.discard(entry.key)
        if reason is not None:
            self.ghosts.record(entry.key, reason, self.name)
        if entry.readers == 0:
            self.allocator.free(entry.location)
