"""Where a block stays: ``evict()`` (out of every tier, the shared one too), ``pin()`` and
``unpin()``. A mixin of ``TieredStore`` (same lock, tiers and ghosts), split out of store.py by
concept."""

from __future__ import annotations

from .keys import BlockKey
from .metrics import MissReason

KeyLike = BlockKey | bytes


class StoreResidency:
    """``evict``, ``pin`` and ``unpin`` of ``TieredStore``."""

    def evict(self, key: KeyLike) -> bool:
        """Drop ``key`` from every tier, the shared one too (pinned or not); ``True`` if any
        tier held it."""
        key = self._key(key)
        with self._lock:
            self._check_open()
            now, removed = self._clock(), False
            for _, index in self._tiers:
                if index.find(key, now) is not None:  # an expired copy is dropped as expired
                    removed = index.remove(key, MissReason.EVICTED) or removed
            self._forget_device(key)
        if self._remote is not None:
            self._drain_remote()  # a queued write must not bring it back
            if self._remote.delete([key]):
                with self._lock:
                    self._ghosts.record(key, MissReason.EVICTED, "remote")
                removed = True
        return removed

    def pin(self, key: KeyLike) -> bool:
        """Keep ``key`` where it is until ``unpin``; ``False`` if absent or the pin budget is spent."""
        key = self._key(key)
        with self._lock:
            self._check_open()
            found = self._locate(key, self._clock())
            return found is not None and found[1].pin(found[0])

    def unpin(self, key: KeyLike) -> bool:
        """Make ``key`` evictable again; ``False`` if it is not stored."""
        key = self._key(key)
        with self._lock:
            self._check_open()
            found = self._locate(key, self._clock())
            if found is None:
                return False
            found[1].unpin(found[0])
            return True
