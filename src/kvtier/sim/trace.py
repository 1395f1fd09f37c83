"""Serving traces: Mooncake's jsonl and kvtier's own jsonl/CSV (documented in docs/sim.md).

Every format becomes a list of ``Request``s whose ``blocks`` are chained prefix hashes: two
requests share a block id only if they share the whole prefix up to and including it.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Hashable, Iterator

from ..errors import InvalidArgumentError

MOONCAKE_BLOCK_TOKENS = 512
FORMATS = ("auto", "mooncake", "kvtier-jsonl", "kvtier-csv")


@dataclass(frozen=True, slots=True)
class Request:
    timestamp_s: float
    input_tokens: int
    output_tokens: int
    blocks: tuple[Hashable, ...]
    session: str | None = None


@dataclass(frozen=True, slots=True)
class Trace:
    requests: list[Request]
    block_tokens: int
    source: str

    @property
    def block_refs(self) -> int:
        return sum(len(r.blocks) for r in self.requests)


def load_trace(path: str | Path, *, fmt: str = "auto", block_tokens: int | None = None,
               limit: int | None = None) -> Trace:
    """Read a trace file; ``limit`` keeps the first N requests. Requests are ordered by time
    (a stable sort, so equal timestamps keep file order)."""
    path = Path(path)
    if fmt not in FORMATS:
        raise InvalidArgumentError(f"trace format must be one of {FORMATS}, got {fmt!r}")
    if not path.is_file():
        raise InvalidArgumentError(f"trace file {str(path)!r} does not exist")
    if fmt == "auto":
        fmt = _detect(path)
    if fmt == "mooncake":
        if block_tokens not in (None, MOONCAKE_BLOCK_TOKENS):
            raise InvalidArgumentError("Mooncake traces use 512-token blocks; drop --block-tokens")
        block_tokens = MOONCAKE_BLOCK_TOKENS
        rows = (_mooncake(obj, where) for obj, where in _jsonl(path))
    else:
        block_tokens = block_tokens or MOONCAKE_BLOCK_TOKENS
        source = _jsonl(path) if fmt == "kvtier-jsonl" else _csv(path)
        rows = (_kvtier(obj, where) for obj, where in source)
    requests: list[Request] = []
    for request in rows:
        _check_blocks(request, block_tokens)
        requests.append(request)
        if limit is not None and len(requests) >= limit:
            break
    requests.sort(key=lambda r: r.timestamp_s)
    return Trace(requests, block_tokens, str(path))


def _detect(path: Path) -> str:
    if path.suffix.lower() == ".csv":
        return "kvtier-csv"
    for obj, where in _jsonl(path):
        if "hash_ids" in obj:
            return "mooncake"
        if "block_hashes" in obj:
            return "kvtier-jsonl"
        raise InvalidArgumentError(f"{where}: neither Mooncake (hash_ids) nor kvtier (block_hashes) format")
    raise InvalidArgumentError(f"{path}: empty trace")


def _jsonl(path: Path) -> Iterator[tuple[dict, str]]:
    with path.open() as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidArgumentError(f"{path}:{number}: not JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise InvalidArgumentError(f"{path}:{number}: expected a JSON object")
            yield obj, f"{path}:{number}"


def _csv(path: Path) -> Iterator[tuple[dict, str]]:
    with path.open(newline="") as fh:
        for number, row in enumerate(csv.DictReader(fh), 2):
            hashes = (row.get("block_hashes") or "").split()
            yield {**row, "block_hashes": hashes}, f"{path}:{number}"


def _field(obj: dict, name: str, where: str, kind: type = int):
    if name not in obj:
        raise InvalidArgumentError(f"{where}: missing field {name!r}")
    try:
        value = kind(obj[name])
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{where}: field {name!r} must be {kind.__name__}, got {obj[name]!r}") from None
    if value < 0:
        raise InvalidArgumentError(f"{where}: field {name!r} must be >= 0, got {value}")
    return value


def _mooncake(obj: dict, where: str) -> Request:
    hashes = obj.get("hash_ids")
    if not isinstance(hashes, list):
        raise InvalidArgumentError(f"{where}: hash_ids must be a list")
    return Request(_field(obj, "timestamp", where, float) / 1000.0, _field(obj, "input_length", where),
                   _field(obj, "output_length", where), tuple(hashes))


def _kvtier(obj: dict, where: str) -> Request:
    hashes = obj.get("block_hashes")
    if not isinstance(hashes, list):
        raise InvalidArgumentError(f"{where}: block_hashes must be a list")
    session = obj.get("session_id")
    return Request(_field(obj, "timestamp_ms", where, float) / 1000.0, _field(obj, "input_tokens", where),
                   _field(obj, "output_tokens", where), tuple(str(h) for h in hashes),
                   None if session in (None, "") else str(session))


def _check_blocks(request: Request, block_tokens: int) -> None:
    expected = math.ceil(request.input_tokens / block_tokens)
    if len(request.blocks) != expected:
        raise InvalidArgumentError(
            f"request at t={request.timestamp_s:g}s has {len(request.blocks)} blocks but "
            f"{request.input_tokens} input tokens make {expected} blocks of {block_tokens}"
        )
