"""``kvtier inspect``: an fsck of a disk-tier directory, strictly read-only.

The LMDB index is opened ``readonly=True, lock=False`` (no lock file is touched, so it works
beside a running store) and its records are copied out in one short transaction; data files are
opened ``O_RDONLY`` (``O_NOATIME`` where allowed). Nothing is ever written. ``--verify`` checks
every page exactly as ``DiskTier.read_many`` does before serving it. Facts and JSON keys:
docs/inspect.md.
"""

from __future__ import annotations

import errno
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List

import lmdb
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .. import native
from ..codec import CODEC_NAMES, CODEC_NONE, CodecError, decode_into
from ..tiers.disk import DATA_FILE, INDEX_DIR, LOCK_FILE, align_up
from ..tiers.disk_index import KEY_BYTES, DiskRecord
from ..tiers.pageformat import FORMAT_VERSION, HEADER_BLOCK, MAGIC, format_valid, read_header
from .inspect_report import print_report, short_key

err = Console(stderr=True)

# Problem names (stable: they are the ``problem`` field of the JSON, see docs/inspect.md).
UNDECODABLE = "undecodable record"
INVALID = "invalid record"
OUT_OF_RANGE = "slot out of range"
DUPLICATE = "duplicate slot"
MISSING_FILE = "missing data file"
SHORT_READ = "short read"
READ_ERROR = "read error"
BAD_HEADER = "bad header"
KEY_MISMATCH = "header key mismatch"
HEADER_MISMATCH = "header mismatch"
CHECKSUM_MISMATCH = "checksum mismatch"


@dataclass(slots=True)
class Problem:
    """One record the store would not serve, and why."""

    problem: str
    detail: str
    key: bytes
    slot: int | None = None
    seen: bytes = b""  # the raw record this verdict is about (re-read before reporting)

    def to_json(self) -> dict:
        return {"key": self.key.hex(), "slot": self.slot, "problem": self.problem,
                "detail": self.detail}


@dataclass(frozen=True, slots=True)
class DataFile:
    """One stripe's ``slots.dat`` as found on disk."""

    path: Path
    exists: bool
    apparent_bytes: int
    allocated_bytes: int
    slots: int

    def to_json(self) -> dict:
        return {"path": str(self.path), "exists": self.exists, "apparent_bytes": self.apparent_bytes,
                "allocated_bytes": self.allocated_bytes, "slots": self.slots}


@dataclass(slots=True)
class Layout:
    """Where a global slot lives: path ``slot % P`` at offset ``(slot // P) * stride``."""

    slot_bytes: int
    files: list[DataFile]

    @property
    def stride(self) -> int:
        return HEADER_BLOCK + align_up(self.slot_bytes)

    def locate(self, slot: int) -> tuple[DataFile, int]:
        return self.files[slot % len(self.files)], (slot // len(self.files)) * self.stride


@dataclass(slots=True)
class Scan:
    """What the index says, and which records fail the checks that need no data reads."""

    records: list[tuple[bytes, DiskRecord]] = field(default_factory=list)  # valid, key order
    problems: list[Problem] = field(default_factory=list)
    total: int = 0
    referenced: set[int] = field(default_factory=set)  # slots any decodable record names


def inspect(
    path: str = typer.Argument(..., help="The disk tier's first directory (the one holding index/)."),
    extra: List[str] = typer.Option([], "--path", help="Another stripe directory, in disk.paths order; repeat."),
    verify: bool = typer.Option(False, "--verify", help="Read every page and check header and checksum."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    limit: int = typer.Option(20, min=0, help="List the first N entries (key order)."),
) -> None:
    """Check a disk-tier directory read-only (an fsck): index, data files, optionally every page.

    Exit status: 0 all good, 1 some entry is corrupt (each is named, with why), 2 usage error
    (e.g. not a kvtier directory). Safe while a store has the directory open (docs/inspect.md).
    """
    first = Path(path).expanduser()
    index_dir = _check_directory(first)
    now = time.time()
    env = _open_index(index_dir)
    try:
        meta = _read_meta(env, index_dir)
        paths = _stripe_paths(first, [Path(p).expanduser() for p in extra], meta)
        layout = Layout(meta["slot_bytes"], [_data_file(p / DATA_FILE, meta["slot_bytes"]) for p in paths])
        raw_records = _read_records(env)
        scan = _scan(raw_records, layout)
        doc = _facts(first, meta, layout, scan, now, limit)
        orphans: int | None = None
        if verify:
            with Progress(TextColumn("[bold]verify"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("{task.description}"), TimeElapsedColumn(),
                          console=err, transient=True) as bar:
                task = bar.add_task("pages", total=len(scan.records))
                failed = _verify(scan.records, layout, lambda: bar.advance(task))
                bar.update(task, description="slots for orphans", completed=0,
                           total=sum(f.slots for f in layout.files))
                orphans = _count_orphans(layout, scan.referenced, lambda n: bar.advance(task, n))
            scan.problems.extend(failed)
        problems, changed = _drop_changed(env, scan.problems)
    finally:
        env.close()
    problems.sort(key=lambda p: (p.key, p.problem))
    doc.update(verified=verify, orphan_slots=orphans, changed_during_scan=changed,
               problems=[p.to_json() for p in problems], ok=not problems)
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
    else:
        print_report(doc, now)
    if problems:
        raise typer.Exit(1)


# -- opening -----------------------------------------------------------------------------------
def _check_directory(first: Path) -> Path:
    if not first.exists():
        raise typer.BadParameter(f"{first} does not exist")
    if not first.is_dir():
        raise typer.BadParameter(f"{first} is not a directory; give the disk tier's first directory")
    index_dir = first / INDEX_DIR
    if not (index_dir / "data.mdb").is_file():
        what = f"no {INDEX_DIR}/ directory" if not index_dir.is_dir() else f"no {INDEX_DIR}/data.mdb"
        hint = (f" (it has {DATA_FILE}: a later stripe? give the first of disk.paths, which holds "
                f"{INDEX_DIR}/)" if (first / DATA_FILE).exists() else "")
        raise typer.BadParameter(
            f"{first} is not a kvtier disk tier directory: {what}, the LMDB index that the first "
            f"of disk.paths holds{hint}")
    return index_dir


_DAMAGED_LMDB = (lmdb.InvalidError, lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.VersionMismatchError)


def _corrupt(message: str) -> typer.Exit:
    """Damage that leaves nothing else checkable: said on stderr, exit status 1."""
    err.print(f"[red]corrupt:[/] {escape(message)}", soft_wrap=True)
    return typer.Exit(1)


def _open_index(index_dir: Path) -> lmdb.Environment:
    try:
        return lmdb.open(str(index_dir), readonly=True, lock=False, max_dbs=2, readahead=False)
    except _DAMAGED_LMDB as exc:
        raise _corrupt(f"{index_dir / 'data.mdb'} is not a readable LMDB file: {exc}") from None
    except lmdb.Error as exc:
        raise typer.BadParameter(f"cannot open the LMDB index in {index_dir} read-only: {exc}") from None


def _read_meta(env: lmdb.Environment, index_dir: Path) -> dict:
    try:
        with env.begin() as txn:
            raw = txn.get(b"meta", db=env.open_db(b"meta", txn=txn, create=False))
    except lmdb.NotFoundError:
        raw = None
    except _DAMAGED_LMDB as exc:
        raise _corrupt(f"the LMDB index in {index_dir} cannot be read: {exc}") from None
    if raw is None:
        raise typer.BadParameter(f"{index_dir} is an LMDB index without kvtier's meta record: "
                                 "not a kvtier disk tier")
    try:
        meta = json.loads(raw)
        ok = (isinstance(meta, dict) and isinstance(meta.get("slot_bytes"), int)
              and meta["slot_bytes"] > 0 and isinstance(meta.get("paths"), int) and meta["paths"] > 0)
    except ValueError:
        ok = False
    if not ok:
        raise _corrupt(f"the meta record in {index_dir} is unreadable ({bytes(raw[:80])!r}): "
                       "the geometry is unknown, nothing else can be checked")
    if meta.get("format") != FORMAT_VERSION:
        raise typer.BadParameter(f"{index_dir.parent} holds a kvtier disk tier of format "
                                 f"{meta.get('format')}; this kvtier reads format {FORMAT_VERSION}")
    return meta


def _stripe_paths(first: Path, extra: list[Path], meta: dict) -> list[Path]:
    paths = [first, *extra]
    if len(paths) != meta["paths"]:
        raise typer.BadParameter(
            f"{first} was created over {meta['paths']} path(s) but inspect got {len(paths)}: give "
            "the first of disk.paths as PATH and each other one with --path, in disk.paths order")
    resolved = [p.resolve() for p in paths]
    if len(set(resolved)) != len(resolved):
        raise typer.BadParameter(f"--path names a directory twice: {[str(p) for p in paths]}")
    for p in extra:
        if not p.is_dir():
            raise typer.BadParameter(f"--path {p}: not a directory")
    return paths


def _data_file(path: Path, slot_bytes: int) -> DataFile:
    try:
        st = path.stat()
    except FileNotFoundError:
        return DataFile(path, False, 0, 0, 0)
    return DataFile(path, True, st.st_size, st.st_blocks * 512,
                    st.st_size // (HEADER_BLOCK + align_up(slot_bytes)))


def _read_records(env: lmdb.Environment) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of the ``entries`` database, copied out in one short transaction (with
    ``lock=False`` a long read beside a writing store could see reused pages)."""
    try:
        with env.begin() as txn:
            return list(txn.cursor(db=env.open_db(b"entries", txn=txn, create=False)))
    except lmdb.NotFoundError:
        return []  # a tier that never committed a page
    except _DAMAGED_LMDB as exc:
        raise _corrupt(f"the LMDB index cannot be read to the end: {exc}") from None


# -- checks without data reads -----------------------------------------------------------------
def _scan(raw_records: list[tuple[bytes, bytes]], layout: Layout) -> Scan:
    """Decode every record and apply ``DiskTier.restore``'s checks (first claim of a slot wins,
    in key order) plus the data files' geometry."""
    scan = Scan(total=len(raw_records))
    owner: dict[int, bytes] = {}
    for key, raw in raw_records:
        try:
            if len(key) != KEY_BYTES:
                raise ValueError(f"key of {len(key)} bytes, expected {KEY_BYTES}")
            record = DiskRecord.unpack(raw)
        except ValueError as exc:
            scan.problems.append(Problem(UNDECODABLE, str(exc), key, seen=raw))
            continue
        scan.referenced.add(record.slot)
        problem = _record_problem(record, layout)
        if problem is None and record.slot in owner:
            problem = (DUPLICATE, f"slot {record.slot} is also claimed by {short_key(owner[record.slot])}")
        if problem is not None:
            scan.problems.append(Problem(*problem, key, record.slot, seen=raw))
            continue
        owner[record.slot] = key
        scan.records.append((key, record))
    return scan


def _record_problem(record: DiskRecord, layout: Layout) -> tuple[str, str] | None:
    if record.codec not in CODEC_NAMES:
        return INVALID, f"codec {record.codec}, this kvtier reads {sorted(CODEC_NAMES)}"
    if not 0 < record.raw_len <= layout.slot_bytes:
        return INVALID, f"raw_len {record.raw_len} not in 1..slot_bytes ({layout.slot_bytes})"
    if record.codec == CODEC_NONE and record.stored_len != record.raw_len:
        return INVALID, f"stored_len {record.stored_len} != raw_len {record.raw_len} (codec none)"
    if record.codec != CODEC_NONE and not 0 < record.stored_len < record.raw_len:
        return INVALID, (f"stored_len {record.stored_len} not in 1..raw_len-1 ({record.raw_len - 1}) "
                         f"(codec {CODEC_NAMES[record.codec]})")
    data, offset = layout.locate(record.slot)
    if not data.exists:
        return MISSING_FILE, f"{data.path} does not exist"
    need = HEADER_BLOCK + align_up(record.stored_len)
    if offset >= data.apparent_bytes:
        return OUT_OF_RANGE, (f"slot {record.slot} starts at byte {offset}, past the end of "
                              f"{data.path} ({data.apparent_bytes} bytes, {data.slots} slots): "
                              "truncated, or the store's capacity shrank")
    if offset + need > data.apparent_bytes:
        return SHORT_READ, (f"{data.path} ends at byte {data.apparent_bytes}, inside slot "
                            f"{record.slot} (bytes {offset}..{offset + need})")
    return None


# -- checks that read data ---------------------------------------------------------------------
def _open_read_only(path: Path) -> int:
    flags = os.O_RDONLY | os.O_CLOEXEC
    try:
        return os.open(path, flags | getattr(os, "O_NOATIME", 0))
    except PermissionError:  # O_NOATIME needs the file's owner
        return os.open(path, flags)


def _verify(records: list[tuple[bytes, DiskRecord]], layout: Layout,
            advance: Callable[[], None]) -> list[Problem]:
    """Read every record's slot (in file order) and check it as ``DiskTier.read_many`` does."""
    problems: list[Problem] = []
    fds: dict[Path, int] = {}
    buf = bytearray(HEADER_BLOCK + align_up(layout.slot_bytes))
    view = memoryview(buf)
    try:
        order = sorted(records, key=lambda kr: (kr[1].slot % len(layout.files), kr[1].slot))
        for key, record in order:
            data, offset = layout.locate(record.slot)
            need = HEADER_BLOCK + align_up(record.stored_len)
            try:
                if data.path not in fds:
                    fds[data.path] = _open_read_only(data.path)
                fd = fds[data.path]
                got = os.preadv(fd, [view[:need]], offset)
                if hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(fd, offset, need, os.POSIX_FADV_DONTNEED)
            except FileNotFoundError:
                problems.append(Problem(MISSING_FILE, f"{data.path} disappeared", key, record.slot,
                                        seen=record.pack()))
            except OSError as exc:
                problems.append(Problem(READ_ERROR, f"{data.path} at byte {offset}: {exc}", key,
                                        record.slot, seen=record.pack()))
            else:
                why = (_page_problem(view[:need], key, record) if got == need else
                       (SHORT_READ, f"{got} of {need} bytes at byte {offset} of {data.path}"))
                if why is not None:
                    problems.append(Problem(*why, key, record.slot, seen=record.pack()))
            advance()
    finally:
        for fd in fds.values():
            os.close(fd)
    return problems


def _page_problem(page: memoryview, key: bytes, record: DiskRecord) -> tuple[str, str] | None:
    """Why ``DiskTier.read_many`` would refuse this page (``header_matches`` + checksum), or None."""
    header = read_header(page[:HEADER_BLOCK])
    if header is None:
        head = bytes(page[:4])
        if not any(page[:HEADER_BLOCK]):
            return BAD_HEADER, "the header block is all zeros (slot never written)"
        if head != MAGIC:
            return BAD_HEADER, f"magic {head!r}, expected {MAGIC!r}"
        return BAD_HEADER, "the header's own checksum does not match (header bytes damaged)"
    if header["key"] != key:
        return KEY_MISMATCH, f"the slot holds the page of {short_key(header['key'])}"
    if header["version"] != FORMAT_VERSION or header["codec"] != record.codec:
        return HEADER_MISMATCH, (f"header format {header['version']} codec {header['codec']}, "
                                 f"record codec {record.codec}")
    if header["raw_len"] != record.raw_len or header["stored_len"] != record.stored_len:
        return HEADER_MISMATCH, (f"header lengths raw {header['raw_len']} stored {header['stored_len']}, "
                                 f"record raw {record.raw_len} stored {record.stored_len}")
    if header["checksum"] != record.checksum:
        return HEADER_MISMATCH, (f"header checksum {header['checksum']:#018x}, "
                                 f"record {record.checksum:#018x} (another version of the page)")
    if not format_valid(header["codec"], header["raw_len"], header["stored_len"], header["element_bytes"]):
        return HEADER_MISMATCH, f"header flags {header['element_bytes']} invalid for codec {header['codec']}"
    raw = memoryview(bytearray(record.raw_len))
    try:
        decode_into(record.codec, page[HEADER_BLOCK:HEADER_BLOCK + record.stored_len], raw,
                    element_bytes=header["element_bytes"])
    except CodecError as exc:
        return CHECKSUM_MISMATCH, f"payload does not decode ({CODEC_NAMES[record.codec]}): {exc}"
    actual = native.checksum(raw)
    if actual != record.checksum:
        return CHECKSUM_MISMATCH, f"payload xxh3-64 {actual:#018x}, record {record.checksum:#018x}"
    return None


def _count_orphans(layout: Layout, referenced: set[int], advance: Callable[[int], None]) -> int:
    """Slots no record names whose header is intact: harmless (free space), counted as info.
    Holes of the sparse files are skipped with ``SEEK_DATA`` where the filesystem has it."""
    count = 0
    stride, files = layout.stride, len(layout.files)
    for i, data in enumerate(layout.files):
        if not data.exists or not data.slots:
            continue
        try:
            fd = _open_read_only(data.path)
        except OSError:
            advance(data.slots)
            continue
        try:
            seek = hasattr(os, "SEEK_DATA")
            local = 0
            while local < data.slots:
                start = local * stride
                if seek:
                    try:
                        start = os.lseek(fd, start, os.SEEK_DATA)
                    except OSError as exc:
                        if exc.errno == errno.ENXIO:  # only holes from here on
                            break
                        seek = False  # the filesystem has no SEEK_DATA: read every header
                skip = min(start // stride, data.slots) - local
                advance(skip)
                local += skip
                if local >= data.slots:
                    break
                if start % stride < HEADER_BLOCK and local * files + i not in referenced:
                    head = os.pread(fd, HEADER_BLOCK, local * stride)
                    count += read_header(memoryview(head)) is not None
                local += 1
                advance(1)
            advance(data.slots - local)
        finally:
            os.close(fd)
    return count


def _drop_changed(env: lmdb.Environment, problems: list[Problem]) -> tuple[list[Problem], int]:
    """Re-read the record behind each problem in a fresh transaction: a live store may have
    replaced or dropped it (and reused its slot) since the snapshot, and a ``lock=False`` reader
    can even see a page the writer recycled; neither is corruption. Returns (kept, changed)."""
    if not problems:
        return problems, 0
    kept: list[Problem] = []
    try:
        with env.begin() as txn:
            db = env.open_db(b"entries", txn=txn, create=False)
            for problem in problems:
                if _same_record(problem.seen, txn.get(problem.key, db=db)):
                    kept.append(problem)
    except lmdb.Error:
        return problems, 0  # cannot re-read: report what was seen
    return kept, len(problems) - len(kept)


def _same_record(seen: bytes, now: bytes | None) -> bool:
    """Whether ``now`` still describes the page ``seen`` did (access times may move)."""
    if now is None:
        return False
    if now == seen:
        return True
    try:
        a, b = DiskRecord.unpack(seen), DiskRecord.unpack(now)
    except ValueError:
        return False
    return (a.slot, a.raw_len, a.stored_len, a.checksum, a.codec) == (
        b.slot, b.raw_len, b.stored_len, b.checksum, b.codec)


# -- facts -------------------------------------------------------------------------------------
def _facts(first: Path, meta: dict, layout: Layout, scan: Scan, now: float, limit: int) -> dict:
    records = [r for _, r in scan.records]
    sizes = sorted(r.raw_len for r in records)
    namespaces: dict[str, int] = {}
    for key, _ in scan.records:
        ns = key[:KEY_BYTES // 2].hex()
        namespaces[ns] = namespaces.get(ns, 0) + 1
    deadlines = [r.deadline for r in records if r.deadline is not None]
    histogram: dict[int, int] = {}
    for n in sizes:
        top = 1 << (n - 1).bit_length()
        histogram[top] = histogram.get(top, 0) + 1
    return {
        "path": str(first),
        "paths": [str(f.path.parent) for f in layout.files],
        "format": meta["format"],
        "slot_bytes": layout.slot_bytes,
        "stride": layout.stride,
        "namespace": meta.get("namespace", ""),
        "in_use_by_pid": _lock_holder(first / LOCK_FILE),
        "checked_at": now,
        "entries": scan.total,
        "valid_entries": len(records),
        "payload_bytes": sum(sizes),
        "data_files": [f.to_json() for f in layout.files],
        "slots": {"total": sum(f.slots for f in layout.files), "used": len(records)},
        "times": {
            "oldest_created": min((r.created for r in records), default=None),
            "newest_created": max((r.created for r in records), default=None),
            "oldest_access": min((r.last_access for r in records), default=None),
            "newest_access": max((r.last_access for r in records), default=None),
        },
        "ttl": {"with_deadline": len(deadlines), "expired": sum(d <= now for d in deadlines)},
        "sizes": {
            "min": sizes[0] if sizes else None,
            "median": statistics.median_low(sizes) if sizes else None,
            "max": sizes[-1] if sizes else None,
            "histogram": [{"up_to": top, "count": histogram[top]} for top in sorted(histogram)],
        },
        "key_namespaces": namespaces,
        "listed": [{"key": key.hex(), "slot": r.slot, "size": r.raw_len, "checksum": r.checksum,
                    "created": r.created, "last_access": r.last_access, "deadline": r.deadline,
                    "ttl_s": r.ttl_s} for key, r in scan.records[:limit]],
    }


def _lock_holder(lock_file: Path) -> int | None:
    """The pid holding ``kvtier.lock`` (from /proc/locks, without taking any lock), or None."""
    try:
        st = lock_file.stat()
        wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        with open("/proc/locks") as fh:
            for line in fh:
                fields = line.split()
                if "FLOCK" in fields and wanted in fields:
                    return int(fields[fields.index(wanted) - 1])
    except (OSError, ValueError):
        pass
    return None


# -- text report -------------------------------------------------------------------------------
