"""Crash safety of the disk tier with real processes: writers killed with SIGKILL at random
moments and before each of their file-system calls, then the directory reopened and checked
page by page; and one owner per directory.

The writer is a forked child that logs every operation it starts and finishes (one 16-byte
``write`` per record: it survives the kill). From that log the parent knows, for every key,
which versions may legitimately be on disk and which one must be (a ``write_through`` put
that returned, or a ``write_back`` put followed by a completed ``flush``/``close``). After each
kill the parent reopens the directory and reads every key: a committed page must come back
byte-exact, and whatever comes back must be a version that may be there (never wrong bytes,
never a stale version a finished put or evict replaced). Set ``KVTIER_CRASH_SEED`` to replay
a run's choices (the kill moments still vary).
"""

from __future__ import annotations

import os
import random
import signal
import struct
import subprocess
import sys
import textwrap
import time
import traceback
from pathlib import Path

import pytest

import kvtier
from kvtier import HostTierConfig, StoreConfig, TieredStore
from kvtier import native
from kvtier.codec import decode_into
from kvtier.config import DiskTierConfig
from kvtier.errors import TierInUseError
from kvtier.tiers.disk import DATA_FILE, INDEX_DIR
from kvtier.tiers.staging import ALIGN
from kvtier.tiers.disk_index import DiskIndex, DiskRecord
from kvtier.tiers.pageformat import FORMAT_VERSION, HEADER_BLOCK, parse_header

SLOT = 8192
DISK_SLOTS = 256
SMALL_DISK_SLOTS = 40  # the "small-disk" layout: the disk tier evicts by capacity all the time
KEYS = 96  # < DISK_SLOTS: a big disk never evicts, so a committed page can only go by a put/evict
SIZES = (SLOT, 4096, 5000, 8, 13, 4097, SLOT - 1, 4088, 700)  # aligned and odd sizes
ROUNDS_PER_LAYOUT = 110  # three layouts: 330 kills in all
MAX_KILL_DELAY_S = 0.030

# Log records: op, key id, version (16 bytes, one os.write each: atomic for a killed process).
_REC = struct.Struct("<BxxxIQ")
PUT_BEGIN, PUT_END, PUT_REFUSED, EVICT_BEGIN, EVICT_END, FLUSH_END, OPENED = range(1, 8)


def key_of(key_id: int) -> bytes:
    return b"crash-key-%d" % key_id


def value_of(version: int) -> bytes:
    """The page of ``version`` (versions are unique across keys): every 8-byte word is the
    version, so a torn page or a page of another put shows."""
    nbytes = SIZES[(version * 2654435761 >> 7) % len(SIZES)]
    word = version.to_bytes(8, "little")
    return (word * (nbytes // 8 + 1))[:nbytes]


def store_config(paths: list[Path], *, host_slots: int = 2, disk_slots: int = DISK_SLOTS,
                 **disk) -> StoreConfig:
    disk.setdefault("fsync", "never")
    return StoreConfig(
        host=HostTierConfig(capacity_bytes=host_slots * SLOT, slot_bytes=SLOT, prefault=False),
        disk=DiskTierConfig(paths=[str(p) for p in paths], capacity_bytes=disk_slots * SLOT,
                            min_free_bytes=0, **disk))


# -- the child: a writer that is killed at a random moment ---------------------------------
def _writer(cfg: StoreConfig, log_path: Path, err_path: Path, seed: int, first_version: int) -> None:
    """Runs in the forked child until SIGKILL. Never returns (``os._exit``)."""
    try:
        rng = random.Random(seed)
        log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

        def note(op: int, key_id: int = 0, version: int = 0) -> None:
            os.write(log, _REC.pack(op, key_id, version))

        version = first_version
        store = TieredStore(cfg)
        note(OPENED)
        for _ in range(100_000):  # killed long before the end
            roll = rng.random()
            if roll < 0.70:
                version += 1
                key_id = rng.randrange(KEYS)
                note(PUT_BEGIN, key_id, version)
                note(PUT_END if store.put(key_of(key_id), value_of(version)) else PUT_REFUSED,
                     key_id, version)
            elif roll < 0.85:  # a batch, sometimes naming a key twice
                batch = [(rng.randrange(KEYS), version + 1 + i) for i in range(rng.randint(2, 5))]
                version += len(batch)
                for key_id, v in batch:
                    note(PUT_BEGIN, key_id, v)
                admitted = store.batch_put([key_of(k) for k, _ in batch], [value_of(v) for _, v in batch])
                for (key_id, v), ok in zip(batch, admitted):
                    note(PUT_END if ok else PUT_REFUSED, key_id, v)
            elif roll < 0.92:
                key_id = rng.randrange(KEYS)
                note(EVICT_BEGIN, key_id)
                store.evict(key_of(key_id))
                note(EVICT_END, key_id)
            elif roll < 0.97:
                store.get(key_of(rng.randrange(KEYS)))  # disk hits promote: more host churn
            elif roll < 0.99:
                store.flush()
                note(FLUSH_END)
            else:  # a clean restart inside the round (close flushes host-only pages)
                store.close()
                note(FLUSH_END)
                store = TieredStore(cfg)
                note(OPENED)
        signal.pause()
    except BaseException:
        err_path.write_text(traceback.format_exc())
    finally:
        os._exit(0)


# -- the parent's model of what may be on disk -----------------------------------------------
class Expected:
    """Per key: the versions that may be served after a crash, and the one that must be
    (``lossy``: none must, the disk tier may have evicted any page to make room)."""

    def __init__(self, lossy: bool = False) -> None:
        self.lossy = lossy
        self.allowed: dict[int, set[int]] = {k: set() for k in range(KEYS)}
        self.required: dict[int, int | None] = {k: None for k in range(KEYS)}
        self.owner: dict[int, int] = {}  # version -> key id

    def replay(self, records: list[tuple[int, int, int]], write_through: bool) -> None:
        host_only: dict[int, int] = {}  # write-back puts that returned, not yet flushed
        for op, key_id, version in records:
            if op == PUT_BEGIN:
                self.owner[version] = key_id
                self.allowed[key_id].add(version)
                self.required[key_id] = None  # an overwrite in flight may have dropped the old copy
                host_only.pop(key_id, None)
            elif op == PUT_END:
                self.allowed[key_id] = {version}  # the older disk copy was deleted before put returned
                if write_through:
                    self.required[key_id] = version
                else:
                    host_only[key_id] = version
            elif op == EVICT_BEGIN:
                self.required[key_id] = None
                host_only.pop(key_id, None)
            elif op == EVICT_END:
                self.allowed[key_id] = set()
            elif op == FLUSH_END:
                for k, v in host_only.items():
                    self.required[k] = v
                host_only.clear()

    def check(self, key_id: int, got: bytes | None, context: str) -> None:
        """Raise if ``got`` is not a legitimate answer for ``key_id``; then tighten the model
        to what was found (a reopened directory shows exactly what it holds)."""
        if got is None:
            assert self.lossy or self.required[key_id] is None, (
                f"{context}: key {key_id} lost its committed version {self.required[key_id]}")
            self.allowed[key_id] = set()
            return
        version = int.from_bytes(got[:8], "little")
        assert got == value_of(version), f"{context}: key {key_id} served a torn or foreign page"
        assert self.owner.get(version) == key_id, (
            f"{context}: key {key_id} served the page of key {self.owner.get(version)} (v{version})")
        assert version in self.allowed[key_id], (
            f"{context}: key {key_id} served v{version}; only {sorted(self.allowed[key_id])} may be there")
        required = self.required[key_id]
        assert self.lossy or required in (None, version), (
            f"{context}: key {key_id} served v{version}, but v{required} was committed")
        self.allowed[key_id], self.required[key_id] = {version}, version


def _read_log(path: Path) -> list[tuple[int, int, int]]:
    data = path.read_bytes() if path.exists() else b""
    whole = len(data) - len(data) % _REC.size
    return [_REC.unpack_from(data, i) for i in range(0, whole, _REC.size)]


def _verify(paths: list[Path], disk_slots: int, expected: Expected, context: str) -> int:
    """Reopen the directory, read every key, check each answer; returns how many were served."""
    cfg = store_config(paths, disk_slots=disk_slots, promote_on_read=False, flush_on_close=False)
    with TieredStore(cfg) as store:
        got = store.batch_get([key_of(k) for k in range(KEYS)])
        for key_id, view in enumerate(got):
            expected.check(key_id, None if view is None else bytes(view), context)
        served = sum(view is not None for view in got)
        stats = store.stats()
        disk = stats.tier("disk")
        assert stats.misses.get("corrupt", 0) == 0, f"{context}: a committed page read as corrupt"
        assert disk.extra["io_errors"] == 0 and disk.extra["dropped_at_open"] == 0, (context, disk.extra)
        assert disk.entries == disk.slots_used == served, (context, disk)
    return served


def _check_index_and_files(paths: list[Path], disk_slots: int) -> int:
    """Open the LMDB index directly: every record decodes, has its own in-range slot, and that
    slot holds an intact page of exactly that key, length and checksum."""
    index = DiskIndex(paths[0] / INDEX_DIR, sync=False, map_size=64 << 20)
    try:
        meta = index.read_meta()
        assert meta is not None and meta["format"] == FORMAT_VERSION
        assert meta["slot_bytes"] == SLOT and meta["paths"] == len(paths)
        records = [(key, DiskRecord.unpack(raw)) for key, raw in index.items()]
    finally:
        index.close()
    slots = [record.slot for _, record in records]
    assert len(set(slots)) == len(slots), "two records share a slot"
    stride = HEADER_BLOCK + (SLOT + ALIGN - 1) // ALIGN * ALIGN
    files = [(p / DATA_FILE).open("rb") for p in paths]
    try:
        for key, record in records:
            assert 0 <= record.slot < disk_slots and 0 < record.raw_len <= SLOT, record
            fh = files[record.slot % len(paths)]
            fh.seek(record.slot // len(paths) * stride)
            blob = fh.read(HEADER_BLOCK + record.stored_len)
            fmt = parse_header(memoryview(blob), key, record.raw_len, record.checksum)
            assert fmt is not None and (fmt.codec, fmt.stored_len) == (record.codec, record.stored_len), record
            page = bytearray(record.raw_len)  # pages may be compressed (codec "auto" probes)
            decode_into(fmt.codec, memoryview(blob)[HEADER_BLOCK:], memoryview(page),
                        element_bytes=fmt.element_bytes)
            assert native.checksum(page) == record.checksum, record
    finally:
        for fh in files:
            fh.close()
    return len(records)


@pytest.mark.parametrize("layout, disk_slots", [(1, DISK_SLOTS), (2, DISK_SLOTS), (1, SMALL_DISK_SLOTS)],
                         ids=["one-path", "two-striped-paths", "small-disk"])
def test_sigkilled_writers_never_lose_committed_pages_or_serve_wrong_bytes(tmp_path, layout, disk_slots):
    seed = int(os.environ.get("KVTIER_CRASH_SEED", "0")) or random.randrange(1, 1 << 30)
    rng = random.Random(seed * 10 + layout + disk_slots)
    paths = [tmp_path / f"disk{i}" for i in range(layout)]
    expected = Expected(lossy=disk_slots < KEYS)
    stats = {"kills": 0, "records": 0, "served": 0}
    for round_no in range(ROUNDS_PER_LAYOUT):
        write_through = rng.random() < 0.5
        cfg = store_config(
            paths, disk_slots=disk_slots, host_slots=rng.choice([1, 2, 3]),
            fsync=rng.choice(["never", "batch", "always"]),
            sync_interval_s=0.002, direct_io=rng.random() < 0.75,
            write_mode="write_through" if write_through else "write_back")
        log_path, err_path = tmp_path / f"log{round_no}", tmp_path / f"err{round_no}"
        context = (f"seed={seed} layout={layout}x{disk_slots} round={round_no} {cfg.disk.write_mode} "
                   f"fsync={cfg.disk.fsync}")
        pid = os.fork()  # no store is open in this process now
        if pid == 0:
            _writer(cfg, log_path, err_path, rng.randrange(1 << 30), (round_no + 1) * 1_000_000)
        time.sleep(rng.uniform(0, MAX_KILL_DELAY_S))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert not err_path.exists(), f"{context}: the writer raised:\n{err_path.read_text()}"
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, context
        stats["kills"] += 1
        records = _read_log(log_path)
        stats["records"] += len(records)
        expected.replay(records, write_through)
        stats["served"] += _verify(paths, disk_slots, expected, context)
    assert stats["kills"] == ROUNDS_PER_LAYOUT
    # the writers got real work done (loosely: a loaded 2-core machine starts them slowly)
    assert stats["records"] > 2 * ROUNDS_PER_LAYOUT, stats
    assert _check_index_and_files(paths, disk_slots) == sum(1 for k in range(KEYS) if expected.allowed[k])


# -- a kill at every step of creating, reopening and writing to a directory ----------------
_STEPS = ("open", "write", "pwrite", "pwritev", "ftruncate", "fchmod", "replace", "rename",
          "fsync", "fdatasync", "mkdir", "unlink")  # the os calls a disk tier makes from Python


def _die_at_step(n: int) -> None:
    """From now on, SIGKILL this process just before its ``n``-th file-system call."""
    calls = [0]
    for name in _STEPS:
        real = getattr(os, name, None)
        if real is None:
            continue

        def step(*args, _real=real, **kwargs):
            calls[0] += 1
            if calls[0] == n:
                os.kill(os.getpid(), signal.SIGKILL)
            return _real(*args, **kwargs)

        setattr(os, name, step)


def _run_until_step(paths: list[Path], n: int) -> tuple[bool, bytes]:
    """Fork a writer that opens the tier, puts ``fresh`` (write-through, fsync always) and
    closes, killed before its ``n``-th file-system call; returns (ran to the end, progress)."""
    done_r, done_w = os.pipe()
    write = os.write  # the real one: reporting progress is not a step
    pid = os.fork()
    if pid == 0:
        try:
            os.close(done_r)
            _die_at_step(n)
            store = TieredStore(store_config(paths, fsync="always", write_mode="write_through"))
            write(done_w, b"o")
            assert store.put(b"fresh", value_of(2))
            write(done_w, b"p")
            store.close()
            write(done_w, b"c")
        finally:
            os._exit(0)
    os.close(done_w)
    progress = b""
    while chunk := os.read(done_r, 16):
        progress += chunk
    os.close(done_r)
    _, status = os.waitpid(pid, 0)
    return not os.WIFSIGNALED(status), progress


@pytest.mark.parametrize("existing", [False, True], ids=["new-directory", "existing-directory"])
def test_a_kill_at_any_step_leaves_a_directory_that_opens_and_keeps_its_pages(tmp_path, existing):
    for n in range(1, 500):
        paths = [tmp_path / f"run{n}" / "a", tmp_path / f"run{n}" / "b"]
        if existing:  # a committed page from an earlier, cleanly closed store
            with TieredStore(store_config(paths, write_mode="write_through")) as store:
                assert store.put(b"old", value_of(1))
        finished, progress = _run_until_step(paths, n)
        context = f"killed before file-system call #{n} (progress {progress!r})"
        with TieredStore(store_config(paths)) as store:  # must open: no ConfigError, no lock left
            old, fresh = store.get(b"old"), store.get(b"fresh")
            assert (old is not None) == existing, context
            assert old is None or bytes(old) == value_of(1), context
            if b"p" in progress:
                assert fresh is not None, context
            assert fresh is None or bytes(fresh) == value_of(2), context
            assert store.put(b"after", value_of(3)) and bytes(store.get(b"after")) == value_of(3)
            stats = store.stats()
            assert stats.misses.get("corrupt", 0) == 0, context
            assert stats.tier("disk").extra["dropped_at_open"] == 0, context
        if finished:
            assert progress == b"opc" and n > 5, (n, progress)
            return
    pytest.fail("the writer never ran to the end")


# -- one owner per directory ---------------------------------------------------------------
_HOLDER = textwrap.dedent("""
    import os, sys
    from kvtier import HostTierConfig, StoreConfig, TieredStore
    from kvtier.config import DiskTierConfig
    cfg = StoreConfig(host=HostTierConfig(capacity_bytes=2 * 8192, slot_bytes=8192, prefault=False),
                      disk=DiskTierConfig(paths=[sys.argv[1]], capacity_bytes=64 * 8192,
                                          min_free_bytes=0, fsync="always", write_mode="write_through"))
    with TieredStore(cfg) as store:
        assert store.put(b"held", b"x" * 5000)
        print("READY", os.getpid(), flush=True)
        sys.stdin.read()  # hold the directory until the test closes our stdin
""")


def test_a_second_process_is_refused_with_the_owners_pid_until_the_owner_closes(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(kvtier.__file__).resolve().parents[1]))
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = holder.stdout.readline().split()
        assert line[:1] == ["READY"], line
        assert int(line[1]) == holder.pid
        with pytest.raises(TierInUseError, match=rf"\(pid {holder.pid}\)"):
            TieredStore(store_config([tmp_path]))
        holder.stdin.close()
        assert holder.wait(timeout=30) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    with TieredStore(store_config([tmp_path])) as store:
        assert bytes(store.get(b"held")) == b"x" * 5000


def test_a_killed_owner_releases_the_directory(tmp_path):
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            store = TieredStore(store_config([tmp_path], write_mode="write_through"))
            assert store.put(b"k", b"v" * 100)
            os.write(ready_w, b"1")
            signal.pause()
        finally:
            os._exit(0)
    os.close(ready_w)
    try:
        assert os.read(ready_r, 1) == b"1", "the child could not open the directory"
        with pytest.raises(TierInUseError, match=rf"\(pid {pid}\)"):
            TieredStore(store_config([tmp_path]))
    finally:
        os.close(ready_r)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    with TieredStore(store_config([tmp_path])) as store:  # the kernel dropped the dead owner's lock
        assert bytes(store.get(b"k")) == b"v" * 100  # and the write-through put was committed


def test_a_refused_open_releases_the_locks_it_already_took(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    with TieredStore(store_config([second])):
        with pytest.raises(TierInUseError, match=rf"{second}.*\(pid {os.getpid()}\)"):
            TieredStore(store_config([first, second]))  # locks `first`, then finds `second` taken
        TieredStore(store_config([first])).close()  # so `first` must be free again
