"""Cache-window eviction: earliest deadline first, like providers' 5-minute / 1-hour windows."""

from __future__ import annotations

import heapq
import itertools
from typing import Hashable

_NEVER = float("inf")


class DeadlineHeap:
    """A min-heap of (deadline, key) with lazy deletion; ``None`` deadlines sort last.

    Updating or removing a key is O(1) (the old heap entry goes stale); stale entries are
    dropped when they reach the top, and the heap is rebuilt when they outnumber live ones.
    """

    __slots__ = ("_heap", "_live", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Hashable]] = []
        self._live: dict[Hashable, tuple[int, float]] = {}  # key -> (seq, deadline) of its live entry
        self._seq = itertools.count()

    def set(self, key: Hashable, deadline: float | None) -> None:
        when = _NEVER if deadline is None else deadline
        current = self._live.get(key)
        if current is not None and current[1] == when:
            return
        seq = next(self._seq)
        self._live[key] = (seq, when)
        heapq.heappush(self._heap, (when, seq, key))
        if len(self._heap) > 2 * len(self._live) + 64:
            self._heap = [item for item in self._heap if self._is_live(item)]
            heapq.heapify(self._heap)

    def _is_live(self, item: tuple[float, int, Hashable]) -> bool:
        current = self._live.get(item[2])
        return current is not None and current[0] == item[1]

    def discard(self, key: Hashable) -> None:
        self._live.pop(key, None)

    def peek(self) -> tuple[float, Hashable] | None:
        """The earliest (deadline, key), or ``None`` when empty; ``inf`` means no deadline."""
        heap = self._heap
        while heap:
            if self._is_live(heap[0]):
                return heap[0][0], heap[0][2]
            heapq.heappop(heap)
        return None

    def __contains__(self, key: Hashable) -> bool:
        return key in self._live

    def __len__(self) -> int:
        return len(self._live)


class TTLPolicy:
    """Evicts the block whose cache window closes first; blocks without a deadline go last."""

    __slots__ = ("_heap",)

    def __init__(self) -> None:
        self._heap = DeadlineHeap()

    def admit(self, key: Hashable, deadline: float | None) -> None:
        self._heap.set(key, deadline)

    def touch(self, key: Hashable, deadline: float | None) -> None:
        if key in self._heap:
            self._heap.set(key, deadline)

    def forget(self, key: Hashable) -> None:
        self._heap.discard(key)

    def victim(self) -> Hashable | None:
        top = self._heap.peek()
        return None if top is None else top[1]

    def __len__(self) -> int:
        return len(self._heap)
