"""Tests of the batched file I/O behind kvtier.native (io_batch, raw_io_bench).

Tests taking ``io`` run once per engine: the compiled ``kvtier._native`` on io_uring
(skipped where the kernel refuses it) and on threads (both skipped if the extension did
not build), and the pure-Python ``kvtier._fallback`` (threads).  Tests taking ``impl``
run once per backend, as in tests/test_native.py.
"""

from __future__ import annotations

import errno
import functools
import json
import mmap
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from conftest import _native, needs_native, parametrize_impl
from kvtier import _fallback
ENGINES = [
    pytest.param((_native, "io_uring"), id="native-io_uring", marks=needs_native),
    pytest.param((_native, "threads"), id="native-threads", marks=needs_native),
    pytest.param((_fallback, "threads"), id="python-threads"),
]

KiB = 1 << 10
MiB = 1 << 20
ALIGN = 4096  # kvtier.native.DIRECT_IO_ALIGNMENT


def _payload(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).bytes(n)


@functools.cache
def _big_payload(n: int) -> bytes:
    """Made once, shared by the engines (64 MiB take ~0.1 s to draw)."""
    return _payload(n, seed=1)


def _io_uring_error() -> str | None:
    """Why the native io_uring engine cannot run here, or None if it can."""
    try:
        _native.set_io_engine("io_uring")
    except RuntimeError as exc:
        return str(exc)
    finally:
        _native.set_io_engine("auto")
    return None


@pytest.fixture(autouse=True)
def _restore_io_settings() -> Iterator[None]:
    """Tests may change the engine / thread count; put the defaults back afterwards."""
    yield
    for mod in (_native, _fallback):
        if mod is not None:
            mod.set_io_engine("auto")
            mod.set_io_threads(0)


@pytest.fixture(params=ENGINES)
def io(request: pytest.FixtureRequest) -> ModuleType:
    """The backend, switched to the engine under test."""
    impl, engine = request.param
    if engine == "io_uring" and (why := _io_uring_error()):
        pytest.skip(why)
    impl.set_io_engine(engine)
    assert impl.io_engine() == engine
    return impl


def _open_direct(path: Path) -> tuple[int, bool]:
    """(fd, True) opened read-write with O_DIRECT, or (fd, False) buffered where the file
    system refuses O_DIRECT with EINVAL (e.g. tmpfs before Linux 6.6)."""
    flags = os.O_RDWR | os.O_CREAT
    try:
        return os.open(path, flags | os.O_DIRECT, 0o600), True
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    return os.open(path, flags, 0o600), False


# --- io_batch: data ------------------------------------------------------------------

HEADER, BODY, TAIL = 4 * KiB, MiB, 4 * KiB
OP_BYTES = HEADER + BODY + TAIL


def _iovecs(view: memoryview, start: int, stack: ExitStack) -> list[memoryview]:
    """One op's buffers: header, body and tail, page-aligned if view is (released by stack,
    before the memory they view: an mmap cannot close while a view of it is held)."""
    cuts = [start, start + HEADER, start + HEADER + BODY, start + OP_BYTES]
    return [stack.enter_context(view[a:b]) for a, b in zip(cuts, cuts[1:])]


def test_round_trip_with_o_direct_and_several_buffers_per_op(
    io: ModuleType, tmp_path: Path
) -> None:
    """64 ops of header + 1 MiB body + tail each, written and read back in one call each."""
    n = 64
    data = _big_payload(n * OP_BYTES)
    # Op i goes to slot perm[i] of the file: the offsets, not the op order, place the data.
    offsets = [int(slot) * OP_BYTES for slot in np.random.default_rng(2).permutation(n)]
    path = tmp_path / "pages.bin"
    fd, direct = _open_direct(path)
    with ExitStack() as stack:
        stack.callback(os.close, fd)
        src = stack.enter_context(mmap.mmap(-1, n * OP_BYTES))  # page-aligned
        dst = stack.enter_context(mmap.mmap(-1, n * OP_BYTES))
        src[:] = data
        src_view = stack.enter_context(memoryview(src))
        dst_view = stack.enter_context(memoryview(dst))
        fds = [fd] * n
        sources = [_iovecs(src_view, i * OP_BYTES, stack) for i in range(n)]
        assert io.io_batch(True, fds, offsets, sources) == [OP_BYTES] * n
        assert os.fstat(fd).st_size == n * OP_BYTES
        targets = [_iovecs(dst_view, i * OP_BYTES, stack) for i in range(n)]
        assert io.io_batch(False, fds, offsets, targets) == [OP_BYTES] * n
        assert dst[:] == data
        with path.open("rb") as f:  # buffered: the start of the file is op first's header
            first = offsets.index(0)
            assert f.read(HEADER) == data[first * OP_BYTES : first * OP_BYTES + HEADER]
    if not direct:  # the checks above passed with buffered I/O; say that O_DIRECT was not tried
        pytest.skip(f"{tmp_path} refuses O_DIRECT (EINVAL): checked with buffered I/O only")


def test_reads_stop_at_end_of_file(io: ModuleType, tmp_path: Path) -> None:
    data = _payload(10_000, seed=3)
    path = tmp_path / "short.bin"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        bufs = [bytearray(b"\xab" * 4096) for _ in range(8)]
        empty = bytearray()
        results = io.io_batch(
            False,
            [fd] * 5,
            [8192, 10_000, 20_000, 0, 9000],
            [[bufs[0]], [bufs[1]], [bufs[2]], bufs[3:6], [bufs[6], empty, bufs[7]]],
        )
    finally:
        os.close(fd)
    assert results == [10_000 - 8192, 0, 0, 10_000, 1000]
    assert bufs[0][:1808] == data[8192:] and bufs[0][1808:] == b"\xab" * (4096 - 1808)
    assert bufs[1] == bufs[2] == b"\xab" * 4096  # nothing read at or after EOF
    assert bufs[3] + bufs[4] + bufs[5][:1808] == data  # continued across buffers
    assert bufs[5][1808:] == b"\xab" * (4096 - 1808)
    assert bufs[6][:1000] == data[9000:] and bufs[7] == b"\xab" * 4096


def test_checksum_ranges_hash_each_op_as_it_completes(io: ModuleType, tmp_path: Path) -> None:
    """checksum_ranges: XXH3-64 of the asked span of each op's transfer, across its buffers;
    None where no range was asked, where the op failed or where it moved too few bytes."""
    import xxhash

    n = 200  # more than the ring holds: later ops are hashed while earlier ones complete
    data = _payload(n * 3 * 4096 + 5000, seed=11)
    path = tmp_path / "sums.bin"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    rng = np.random.default_rng(12)
    try:
        offsets = [i * 3 * 4096 for i in range(n)]
        buffers = [[bytearray(4096), bytearray(int(rng.integers(1, 8000))), bytearray(100)]
                   for _ in range(n)]
        ranges: list[tuple[int, int] | None] = []
        for i, bufs in enumerate(buffers):
            total = sum(len(b) for b in bufs)
            start = int(rng.integers(0, total))
            ranges.append(None if i % 7 == 0 else (start, int(rng.integers(0, total - start + 1))))
        # Past the end of the file, a bad fd, and a range longer than the transfer.
        offsets += [len(data) - 50, 0, 0]
        buffers += [[bytearray(4096)], [bytearray(8)], [bytearray(10)]]
        ranges += [(0, 50), (0, 8), (5, 6)]
        fds = [fd] * (n + 3)
        fds[n + 1] = -1
        results, sums = io.io_batch(False, fds, offsets, buffers, ranges)
    finally:
        os.close(fd)
    for i, (offset, bufs, span, got, digest) in enumerate(
            zip(offsets, buffers, ranges, results, sums)):
        joined = b"".join(bufs)
        if i < n:
            assert got == len(joined) and joined == data[offset:offset + got]
        if span is None or (got < 0 or got < span[0] + span[1]):
            assert digest is None, i
        else:
            start, length = span
            assert digest == xxhash.xxh3_64_intdigest(joined[start:start + length]), i
    assert results[n:] == [50, -errno.EBADF, 10] and sums[n:] == [
        xxhash.xxh3_64_intdigest(data[-50:]), None, None]
    assert io.io_batch(False, [], [], [], []) == ([], [])


def test_copy_out_copies_a_span_of_each_completed_op(io: ModuleType, tmp_path: Path) -> None:
    """copy_out: bytes [start, start + len(dst)) of op i's transfer land in each of its dsts
    once op i is done (across its buffers, after its checksum); nothing where the op failed or
    came up short."""
    import xxhash

    data = _payload(64 * 1024, seed=13)
    path = tmp_path / "copy.bin"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    rng = np.random.default_rng(14)
    try:
        n = 150
        offsets = [int(rng.integers(0, 32 * 1024)) for _ in range(n)]
        buffers = [[bytearray(int(rng.integers(1, 3000))) for _ in range(3)] for _ in range(n)]
        copies: list = []
        for bufs in buffers:
            total = sum(len(b) for b in bufs)
            pairs = []
            for _ in range(int(rng.integers(0, 3))):
                start = int(rng.integers(0, total))
                pairs.append((start, bytearray(int(rng.integers(0, total - start + 1)))))
            copies.append(pairs)
        copies[5] = None
        offsets += [len(data) - 10, 0]  # short (10 of 100 bytes), bad fd
        buffers += [[bytearray(100)], [bytearray(8)]]
        copies += [[(0, bytearray(b"\xee" * 20)), (2, bytearray(b"\xee" * 8))],
                   [(0, bytearray(b"\xee" * 8))]]
        fds = [fd] * (n + 2)
        fds[n + 1] = -1
        ranges = [(c[0][0], len(c[0][1])) if c else None for c in copies]
        results, sums = io.io_batch(False, fds, offsets, buffers, ranges, copies)
        assert io.io_batch(False, fds[:1], offsets[:1], buffers[:1], None, copies[:1]) == results[:1]
    finally:
        os.close(fd)
    for offset, bufs, pairs, got, digest in zip(offsets[:n], buffers, copies, results, sums):
        assert got == sum(len(b) for b in bufs)
        for start, dst in pairs or ():
            assert dst == data[offset + start:offset + start + len(dst)]
        if pairs:
            assert digest == xxhash.xxh3_64_intdigest(bytes(pairs[0][1]))
    assert results[n:] == [10, -errno.EBADF]
    assert copies[n][0][1] == b"\xee" * 20  # short: untouched
    assert copies[n][1][1] == data[-8:]  # bytes [2, 10) of the 10 moved
    assert copies[n + 1][0][1] == b"\xee" * 8
    with pytest.raises(TypeError, match=r"copy_out\[0\]\[0\] is read-only"):
        io.io_batch(False, [0], [0], [[bytearray(1)]], None, [[(0, b"ro")]])


def test_io_errors_come_back_as_negative_errno(io: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(b"x" * 100)
    with ExitStack() as stack:
        ro = os.open(path, os.O_RDONLY)
        stack.callback(os.close, ro)
        folder = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        stack.callback(os.close, folder)
        buf = bytearray(10)
        assert io.io_batch(True, [-1, ro], [0, 0], [[b"a"], [b"b"]]) == [
            -errno.EBADF,  # not an fd
            -errno.EBADF,  # not open for writing
        ]
        # A failed op does not disturb the others in its batch.
        assert io.io_batch(False, [folder, ro, ro], [0, 90, 50], [[bytearray(4)], [buf], []]) == [
            -errno.EISDIR,
            10,
            0,  # no buffers: nothing to move
        ]
        assert buf == b"x" * 10
        assert io.io_batch(False, [], [], []) == []


def test_misaligned_o_direct_transfers_fail_with_einval(io: ModuleType, tmp_path: Path) -> None:
    fd, direct = _open_direct(tmp_path / "direct.bin")
    with ExitStack() as stack:
        stack.callback(os.close, fd)
        if not direct:
            pytest.skip(f"{tmp_path} refuses O_DIRECT (EINVAL): nothing to misalign")
        mm = stack.enter_context(mmap.mmap(-1, 3 * ALIGN))
        mm[:] = b"\x5a" * len(mm)
        view = stack.enter_context(memoryview(mm))
        aligned = stack.enter_context(view[:ALIGN])
        misaligned = stack.enter_context(view[1 : 1 + ALIGN])
        try:
            os.pwritev(fd, [misaligned], 0)
        except OSError as exc:
            assert exc.errno == errno.EINVAL
        else:  # e.g. tmpfs since Linux 6.6: O_DIRECT accepted, but no alignment needed
            pytest.skip(f"{tmp_path} accepts O_DIRECT but does not enforce its alignment")
        assert io.io_batch(True, [fd], [0], [[aligned]]) == [ALIGN]
        assert io.io_batch(True, [fd, fd], [0, 1], [[misaligned], [aligned]]) == [-errno.EINVAL] * 2
        assert io.io_batch(False, [fd, fd], [0, 0], [[misaligned], [aligned]]) == [
            -errno.EINVAL,
            ALIGN,
        ]


def test_batches_larger_than_the_ring_and_long_iovec_lists(io: ModuleType, tmp_path: Path) -> None:
    """300 ops (the ring holds 128 requests), and one op of 1500 buffers (UIO_MAXIOV is 1024)."""
    n, size = 300, 512
    data = _payload(n * size, seed=4)
    fd = os.open(tmp_path / "many.bin", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        offsets = [i * size for i in range(n)]
        pages = [[data[i * size : (i + 1) * size]] for i in range(n)]
        assert io.io_batch(True, [fd] * n, offsets, pages) == [size] * n
        dst = [bytearray(size) for _ in range(n)]
        assert io.io_batch(False, [fd] * n, offsets, [[b] for b in dst]) == [size] * n
        assert b"".join(dst) == data
        pieces = [bytearray(100) for _ in range(1500)]  # 150_000 bytes; the file has 153_600
        assert io.io_batch(False, [fd], [3000], [pieces]) == [150_000]
        assert b"".join(pieces) == data[3000:153_000]
    finally:
        os.close(fd)


def test_concurrent_batches_from_several_threads(io: ModuleType, tmp_path: Path) -> None:
    """4 Python threads run batches on disjoint regions of one file at the same time."""
    workers, ops, size, rounds = 4, 16, 64 * KiB, 5
    fd = os.open(tmp_path / "shared.bin", os.O_RDWR | os.O_CREAT, 0o600)
    start = threading.Barrier(workers)
    failures: list[str] = []

    def run(w: int) -> None:
        try:
            base = w * ops * size
            offsets = [base + i * size for i in range(ops)]
            start.wait()
            for r in range(rounds):
                data = _payload(ops * size, seed=100 * w + r)
                halves = [
                    [data[i * size : i * size + 1000], data[i * size + 1000 : (i + 1) * size]]
                    for i in range(ops)
                ]
                if io.io_batch(True, [fd] * ops, offsets, halves) != [size] * ops:
                    failures.append(f"worker {w} round {r}: write")
                dst = [bytearray(size) for _ in range(ops)]
                if io.io_batch(False, [fd] * ops, offsets, [[b] for b in dst]) != [size] * ops:
                    failures.append(f"worker {w} round {r}: read")
                if b"".join(dst) != data:
                    failures.append(f"worker {w} round {r}: bytes differ")
        except Exception as exc:  # reported below, not lost in the thread
            failures.append(f"worker {w}: {exc!r}")

    threads = [threading.Thread(target=run, args=(w,)) for w in range(workers)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        os.close(fd)
    assert not failures


def test_thread_count_changes_between_batches(io: ModuleType, tmp_path: Path) -> None:
    data = _payload(32 * 4096, seed=5)
    fd = os.open(tmp_path / "threads.bin", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        offsets = [i * 4096 for i in range(32)]
        io.io_batch(True, [fd] * 32, offsets, [[data[o : o + 4096]] for o in offsets])
        for threads in (1, 2, 5, 3, 0):
            io.set_io_threads(threads)
            dst = [bytearray(4096) for _ in range(32)]
            assert io.io_batch(False, [fd] * 32, offsets, [[b] for b in dst]) == [4096] * 32
            assert b"".join(dst) == data
    finally:
        os.close(fd)


# --- io_batch: arguments -------------------------------------------------------------


@parametrize_impl
def test_argument_errors(impl: ModuleType, tmp_path: Path) -> None:
    fd = os.open(tmp_path / "args.bin", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with pytest.raises(
            ValueError,
            match=r"^io_batch\(\): fds, offsets and buffers must have the same length, "
            r"got 2, 1 and 2$",
        ):
            impl.io_batch(False, [fd, fd], [0], [[bytearray(1)], [bytearray(1)]])
        # Reading into a read-only buffer fails as copy() into one does.
        with pytest.raises(TypeError) as copy_error:
            impl.copy(b"dst", b"src")
        with pytest.raises(
            type(copy_error.value),
            match=r"^io_batch\(\): buffers\[1\]\[0\] is read-only; .*\(got 'bytes'\)$",
        ):
            impl.io_batch(False, [fd, fd], [0, 0], [[bytearray(1)], [b"ro"]])
        assert impl.io_batch(True, [fd], [0], [[b"ro"]]) == [2]  # fine for a write
        with pytest.raises(ValueError, match=r"^io_batch\(\): offsets\[0\] must be >= 0, got -1$"):
            impl.io_batch(True, [fd], [-1], [[b"x"]])
        with pytest.raises(
            OverflowError, match=r"^io_batch\(\): fds\[0\] is out of range .*, got 4294967296$"
        ):
            impl.io_batch(True, [1 << 32], [0], [[b"x"]])
        with pytest.raises(TypeError, match=r"^io_batch\(\): fds must be a sequence of int, got"):
            impl.io_batch(True, fd, [0], [[b"x"]])
        with pytest.raises(
            TypeError, match=r"^io_batch\(\): buffers\[0\] must be a sequence of buffers, got 'b"
        ):
            impl.io_batch(True, [fd], [0], [b"x"])  # [b"x"] for [[b"x"]]
        with pytest.raises(TypeError, match=r"^io_batch\(\): buffers\[0\]\[0\] must be a bytes-"):
            impl.io_batch(True, [fd], [0], [["x"]])
        with pytest.raises(ValueError, match=r"^io_batch\(\): buffers\[0\]\[0\] is not C-contig"):
            impl.io_batch(True, [fd], [0], [[np.zeros(8, dtype=np.uint8)[::2]]])
        # Any sequences (tuples, ranges, generators) and numpy integers will do.
        gen = (b for b in [b"ab", b"cd"])
        assert impl.io_batch(write=1, fds=(np.int32(fd),), offsets=range(1), buffers=[gen]) == [4]
    finally:
        os.close(fd)


@parametrize_impl
def test_argument_errors_release_the_buffers_taken_so_far(impl: ModuleType, tmp_path: Path) -> None:
    fd = os.open(tmp_path / "args.bin", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        mm = mmap.mmap(-1, 4096)
        with pytest.raises(TypeError):
            impl.io_batch(False, [fd, fd], [0, 0], [[mm], [b"read-only"]])
        mm.close()  # BufferError if a view of it were still held
    finally:
        os.close(fd)


def _bad_calls() -> list[Callable[[ModuleType], object]]:
    return [
        lambda m: m.io_batch(False, [0], [0, 1], [[bytearray(1)]]),
        lambda m: m.io_batch(False, [0], [0], [[b"x"]]),
        lambda m: m.io_batch(False, [0], [0], [[memoryview(bytearray(2)).toreadonly()]]),
        lambda m: m.io_batch(True, [0], [-5], [[b"x"]]),
        lambda m: m.io_batch(True, [0], [1 << 70], [[b"x"]]),
        lambda m: m.io_batch(True, [-(1 << 40)], [0], [[b"x"]]),
        lambda m: m.io_batch(True, ["0"], [0], [[b"x"]]),
        lambda m: m.io_batch(True, [0], [0.5], [[b"x"]]),
        lambda m: m.io_batch(True, None, [0], [[b"x"]]),
        lambda m: m.io_batch(True, [0], 0, [[b"x"]]),
        lambda m: m.io_batch(True, [0], [0], b"x"),
        lambda m: m.io_batch(True, [0], [0], [bytearray(1)]),
        lambda m: m.io_batch(True, [0], [0], [[1]]),
        lambda m: m.io_batch(True, [0], [0], [[np.zeros(4)[::2]]]),
        lambda m: m.io_batch(False, [0], [0], [[bytearray(1)]], [(0, 1), None]),
        lambda m: m.io_batch(False, [0], [0], [[bytearray(1)]], [(0,)]),
        lambda m: m.io_batch(False, [0], [0], [[bytearray(1)]], [(0, -1)]),
        lambda m: m.io_batch(False, [0], [0], [[bytearray(1)]], 5),
        lambda m: m.io_batch(False, [0], [0], [[bytearray(1)]], None, [None, None]),
        lambda m: m.io_batch(False, [0], [0], [[bytearray(1)]], None, [[(0,)]]),
        lambda m: m.io_batch(False, [0], [0], [[bytearray(1)]], None, [[(-1, bytearray(1))]]),
        lambda m: m.io_batch(False, [0], [0], [[bytearray(1)]], None, [[(0, b"ro")]]),
        lambda m: m.io_batch(False, [0], [0], [[bytearray(1)]], None, [[(0, "x")]]),
        lambda m: m.io_batch(False, [0], [0], [[bytearray(1)]], None, [(0, bytearray(1))]),
        lambda m: m.io_batch(False, [0], [0], [[bytearray(1)]], None, [b"x"]),
        lambda m: m.set_io_engine("uring"),
        lambda m: m.set_io_engine(None),
        lambda m: m.set_io_threads(-1),
        lambda m: m.raw_io_bench("/nonexistent/kvtier/file", 4096, 1, 1, False),
        lambda m: m.raw_io_bench("x", 4095, 1, 1, True),
        lambda m: m.raw_io_bench("x", 0, 1, 1, True),
        lambda m: m.raw_io_bench("x", 4096, 0, 1, True),
        lambda m: m.raw_io_bench("x", 4096, 1, -1, True),
        lambda m: m.raw_io_bench("x", 4096, 1, 1 << 61, False),
        lambda m: m.raw_io_bench("x", 4096 << 40, 1 << 30, 1, False),
        lambda m: m.raw_io_bench(None, 4096, 1, 1, True),
        lambda m: m.raw_io_bench("a\0b", 4096, 1, 1, True),
    ]


@needs_native
@pytest.mark.parametrize("call", _bad_calls())
def test_backends_raise_the_same_errors(call: Callable[[ModuleType], object]) -> None:
    errors = []
    for mod in (_native, _fallback):
        with pytest.raises(Exception) as info:
            call(mod)
        errors.append((type(info.value), str(info.value)))
    assert errors[0] == errors[1]


# --- engines -------------------------------------------------------------------------


def _mixed_batch(fd: int, size: int) -> tuple[list[int], list[int], list[list[bytearray]]]:
    """Reads of a file of `size` bytes: whole pages, across EOF, after EOF, bad fd."""
    fds = [fd, fd, fd, -1, fd]
    offsets = [0, size - 4096, size - 100, 0, size + 4096]
    buffers = [[bytearray(4096), bytearray(8192)], [bytearray(4096)], [bytearray(300)],
               [bytearray(8)], [bytearray(4096)]]
    return fds, offsets, buffers


@needs_native
def test_engines_and_backends_agree(tmp_path: Path) -> None:
    engines = [(_native, "threads"), (_fallback, "threads")]
    if _io_uring_error() is None:
        engines.append((_native, "io_uring"))
    data = _payload(5 * 4096 + 123, seed=6)
    path = tmp_path / "agree.bin"
    outcomes = []
    for impl, engine in engines:
        impl.set_io_engine(engine)
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            written = impl.io_batch(True, [fd, fd], [0, 3000], [[data[:3000]], [data[3000:]]])
            fds, offsets, buffers = _mixed_batch(fd, len(data))
            results = impl.io_batch(False, fds, offsets, buffers)
        finally:
            os.close(fd)
        outcomes.append((written, results, [[bytes(b) for b in op] for op in buffers]))
    assert outcomes[0][1] == [12288, 4096, 100, -errno.EBADF, 0]
    assert all(outcome == outcomes[0] for outcome in outcomes), engines


def test_engine_names() -> None:
    assert _fallback.io_engine() == "threads"
    with pytest.raises(RuntimeError, match=r"^set_io_engine\(\): io_uring needs the native back"):
        _fallback.set_io_engine("io_uring")
    _fallback.set_io_engine("threads")
    _fallback.set_io_engine("auto")
    assert _fallback.io_engine() == "threads"
    if _native is None:
        return
    why = _io_uring_error()
    assert _native.io_engine() == ("threads" if why else "io_uring")  # auto
    _native.set_io_engine("threads")
    assert _native.io_engine() == "threads"
    if why:
        assert why.startswith("set_io_engine(): io_uring is not available here (")
        assert _native.io_engine() == "threads"  # unchanged by the failed request


def _default_io_threads() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(8, max(2, cpus or 1))


@parametrize_impl
def test_io_thread_settings(impl: ModuleType) -> None:
    assert impl.io_threads() == _default_io_threads()
    impl.set_io_threads(3)
    assert impl.io_threads() == 3
    impl.set_io_threads(0)
    assert impl.io_threads() == _default_io_threads()
    with pytest.raises(ValueError, match=r"^set_io_threads\(\): n must be >= 0, got -1$"):
        impl.set_io_threads(-1)


# Reports, as JSON, what each backend's first I/O call makes of KVTIER_IO_ENGINE.
_ENV_REPORT = """
import json, sys
from kvtier import _fallback, _native
out = []
for mod in (_native, _fallback):
    try:
        if sys.argv[1] == "set-first":
            mod.set_io_engine("threads")  # before the first I/O call: the variable is ignored
        out.append(mod.io_engine())
    except Exception as exc:
        out.append(f"{type(exc).__name__}: {exc}")
print(json.dumps(out))
"""


@needs_native
def test_env_var_sets_the_default_engine(tmp_path: Path) -> None:
    why = _io_uring_error()
    uring = (
        "io_uring"
        if why is None
        else "RuntimeError: KVTIER_IO_ENGINE=io_uring, but io_uring is not available here ("
    )
    bogus = "ValueError: KVTIER_IO_ENGINE='bogus' is not valid; use one of: auto, io_uring, threads"
    python_uring = "RuntimeError: KVTIER_IO_ENGINE=io_uring, but io_uring needs the native backend"
    cases = {  # (value, mode): (native, python)
        ("threads", ""): ("threads", "threads"),
        (" IO_URING ", ""): (uring, python_uring),
        ("", ""): ("threads" if why else "io_uring", "threads"),
        ("bogus", ""): (bogus, bogus),
        ("bogus", "set-first"): ("threads", "threads"),
    }
    procs = {}
    for value, mode in cases:  # in parallel: the interpreter start dominates
        env = dict(os.environ, KVTIER_IO_ENGINE=value)
        env.pop("KVTIER_NATIVE", None)
        procs[value, mode] = subprocess.Popen(
            [sys.executable, "-c", _ENV_REPORT, mode],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    for key, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        got = json.loads(stdout)
        for seen, expected in zip(got, cases[key]):
            assert seen.startswith(expected), (key, got)


# After fork() the child must neither use the parent's ring (their queues are shared
# memory) nor wait for the parent's pool workers (they do not exist in the child).
_FORK = """
import os, sys
from kvtier import _native
engines = sys.argv[1:]
fd = os.open(os.path.join(os.getcwd(), "fork.bin"), os.O_RDWR | os.O_CREAT, 0o600)

def round_trip(tag):
    data = [bytes([tag, i]) * 2048 for i in range(8)]
    for engine in engines:
        _native.set_io_engine(engine)
        offsets = [(tag * 8 + i) * 4096 for i in range(8)]
        assert _native.io_batch(True, [fd] * 8, offsets, [[d] for d in data]) == [4096] * 8
        dst = [bytearray(4096) for _ in range(8)]
        assert _native.io_batch(False, [fd] * 8, offsets, [[b] for b in dst]) == [4096] * 8
        assert dst == data, engine

_native.set_io_threads(3)
round_trip(1)
pid = os.fork()
if pid == 0:
    try:
        round_trip(2)
    except BaseException as exc:
        print("child:", repr(exc), flush=True)
        os._exit(1)
    os._exit(0)
round_trip(3)
_, status = os.waitpid(pid, 0)
round_trip(4)
print(os.waitstatus_to_exitcode(status))
"""


@needs_native
def test_native_io_survives_fork(tmp_path: Path) -> None:
    engines = ["threads"] + ([] if _io_uring_error() else ["io_uring"])
    proc = subprocess.run(
        [sys.executable, "-c", _FORK, *engines],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0"], proc.stdout


# --- raw_io_bench --------------------------------------------------------------------


def test_raw_io_bench_writes_then_reads(io: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "bench.bin"
    page, batch, count = 16 * KiB, 4, 10  # the last batch is a partial one
    seconds = io.raw_io_bench(path, page, batch, count, True)
    assert isinstance(seconds, float) and seconds > 0
    assert path.stat().st_size == page * count
    assert path.stat().st_mode & 0o777 == 0o600
    assert b"\0" not in path.read_bytes()  # every page was written, with non-zero bytes
    seconds = io.raw_io_bench(str(path), page, batch, count, False)
    assert isinstance(seconds, float) and seconds > 0
    short = r"raw_io_bench\(\): short read at offset 163840: 0 of 16384 bytes"
    with pytest.raises(OSError, match=short) as info:
        io.raw_io_bench(path, page, batch, count + 1, False)
    assert info.value.errno == errno.EIO and info.value.filename == str(path)
    with pytest.raises(FileNotFoundError):
        io.raw_io_bench(tmp_path / "missing.bin", page, batch, 1, False)


@parametrize_impl
def test_raw_io_bench_argument_errors(impl: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "bench.bin"
    for page_bytes in (1000, 4097, 0):
        with pytest.raises(
            ValueError,
            match=rf"^raw_io_bench\(\): page_bytes must be a positive multiple of 4096, "
            rf"got {page_bytes}$",
        ):
            impl.raw_io_bench(path, page_bytes, 1, 1, True)
    with pytest.raises(ValueError, match=r"^raw_io_bench\(\): batch must be >= 1, got 0$"):
        impl.raw_io_bench(path, 4096, 0, 1, True)
    assert not path.exists()  # checked before anything is opened


# --- kvtier.native -------------------------------------------------------------------


def test_native_module_exports_the_io_api() -> None:
    from kvtier import native

    assert native.DIRECT_IO_ALIGNMENT == 4096
    for name in ("io_batch", "io_engine", "set_io_engine", "io_threads", "set_io_threads",
                 "raw_io_bench"):
        assert name in native.__all__
        assert getattr(native, name) is getattr(native._impl, name)  # no wrapper
    assert native.io_engine() in ("io_uring", "threads")
