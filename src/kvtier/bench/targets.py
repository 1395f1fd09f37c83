"""The showcase targets (issue 10), checked against one ``kvtier bench --all`` run's JSON.

* host tier: ``put``/``get_into`` (one page per call and 16 per call) at ≥ 90 % of memcpy
  measured in the same run, for pages of 256 KiB and up (DESIGN.md; below that a page
  copies in less time than the per-call bookkeeping);
* disk tier: write-back writes and reads at ≥ 85 % of raw O_DIRECT (fio or the native loop),
  every page size and batch;
* peers: kvtier ahead (ratio ≥ 1) on every measured row.

Each target reports its worst cell, so a ``met`` target holds everywhere it was measured.
"""

from __future__ import annotations

from dataclasses import dataclass

HOST_GOAL = 0.90
HOST_FROM_BYTES = 256 << 10
DISK_GOAL = 0.85
PEER_GOAL = 1.0
_HOST_MEASURES = ("put", "get_into", "batch_put", "batch_get_into")


@dataclass(frozen=True)
class Target:
    """One target: the worst measured ratio against its goal, and where that was."""

    name: str
    goal: float
    worst: float | None  # None: nothing measured (the part was skipped)
    where: str
    cells: int  # measured cells
    below: int  # cells under the goal

    @property
    def met(self) -> bool | None:
        return None if self.worst is None else self.worst >= self.goal

    def to_json(self) -> dict:
        return {"name": self.name, "goal": self.goal, "worst": self.worst, "where": self.where,
                "cells": self.cells, "below": self.below, "met": self.met}


def _target(name: str, goal: float, cells: list[tuple[float, str]]) -> Target:
    if not cells:
        return Target(name, goal, None, "not measured", 0, 0)
    worst, where = min(cells, key=lambda cell: cell[0])
    return Target(name, goal, worst, where, len(cells), sum(r < goal for r, _ in cells))


def _size(nbytes: int) -> str:
    return f"{nbytes >> 20} MiB" if nbytes >= 1 << 20 else f"{nbytes >> 10} KiB"


def check_targets(doc: dict) -> list[Target]:
    """The three targets from a ``--all`` document (``micro`` and ``peers`` parts)."""
    micro = doc.get("micro") or {}
    host = [(page[f"{m}_ratio"], f"{m}, {_size(page['page_bytes'])}")
            for page in micro.get("pages", []) if page["page_bytes"] >= HOST_FROM_BYTES
            for m in _HOST_MEASURES]
    disk = [(row[f"{m}_ratio"], f"{m}, {_size(row['page_bytes'])} ×{row['batch']}")
            for row in (micro.get("disk") or {}).get("results", []) for m in ("write", "read")]
    peers = [(ratio, f"{row['peer']}, {measure}, {_size(row['page_bytes'])}")
             for row in (doc.get("peers") or {}).get("rows", []) if not row.get("skipped")
             for measure, ratio in row["ratio"].items() if ratio is not None]
    return [_target("host tier vs memcpy", HOST_GOAL, host),
            _target("disk tier vs raw O_DIRECT", DISK_GOAL, disk),
            _target("kvtier vs peers (kvtier / peer)", PEER_GOAL, peers)]
