"""Least-recently-used eviction."""

from __future__ import annotations

from collections import OrderedDict
from typing import Hashable


class LRUPolicy:
    """Evicts the block read or written least recently. O(1) for every operation."""

    __slots__ = ("_order",)

    def __init__(self) -> None:
        self._order: OrderedDict[Hashable, None] = OrderedDict()

    def admit(self, key: Hashable, deadline: float | None) -> None:
        if key in self._order:
            self._order.move_to_end(key)
        else:
            self._order[key] = None

    def touch(self, key: Hashable, deadline: float | None) -> None:
        if key in self._order:
            self._order.move_to_end(key)

    def forget(self, key: Hashable) -> None:
        self._order.pop(key, None)

    def victim(self) -> Hashable | None:
        return next(iter(self._order), None)

    def __len__(self) -> int:
        return len(self._order)
