"""The eviction-policy protocol."""

from __future__ import annotations

from typing import Hashable, Protocol


class EvictionPolicy(Protocol):
    """Orders a tier's *evictable* blocks; the tier index asks it for the next victim.

    Pinned blocks are not in the policy (the index removes them on pin and re-adds them on
    unpin), so ``victim()`` never has to skip them. ``deadline`` is the block's absolute expiry
    time in the index's clock, or ``None`` for no expiry.
    """

    def admit(self, key: Hashable, deadline: float | None) -> None:
        """A block became evictable (stored, or unpinned)."""

    def touch(self, key: Hashable, deadline: float | None) -> None:
        """A block was read or rewritten; ``deadline`` is its (possibly extended) expiry."""

    def forget(self, key: Hashable) -> None:
        """A block left the policy (evicted, expired, deleted or pinned). Unknown keys are ignored."""

    def victim(self) -> Hashable | None:
        """The block to evict next, without removing it; ``None`` when nothing is evictable."""

    def __len__(self) -> int: ...
