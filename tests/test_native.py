"""Tests of the byte helpers behind kvtier.native, run against both backends.

Every test taking ``impl`` runs once with the compiled ``kvtier._native`` (skipped if the
extension did not build) and once with the pure-Python ``kvtier._fallback``.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import _native, needs_native, parametrize_impl
from kvtier import _fallback

KiB = 1 << 10
MiB = 1 << 20
SMALL_THRESHOLD = 64 * KiB  # set by the threaded tests so the worker pool really runs


def _payload(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


@pytest.fixture(autouse=True)
def _restore_copy_settings() -> Iterator[None]:
    """Tests may change the thread count / threshold; put the defaults back afterwards."""
    yield
    for mod in (_native, _fallback):
        if mod is not None:
            mod.set_copy_threads(0)
            mod.set_copy_threshold(4 * MiB)


# --- buffer kinds ------------------------------------------------------------------

MMAP_OFFSET = 3  # slices of an mmap start at an odd, unaligned address


def make_src(kind: str, data: bytes, stack: ExitStack) -> Any:
    if kind == "bytes":
        return data
    if kind == "bytearray":
        return bytearray(data)
    if kind == "memoryview":
        return memoryview(bytearray(b"\xee" + data))[1:]  # a slice, not the whole buffer
    if kind == "numpy":
        return np.frombuffer(data, dtype=np.uint8).copy()
    if kind == "mmap":
        mm = stack.enter_context(mmap.mmap(-1, MMAP_OFFSET + len(data)))
        mm[MMAP_OFFSET:] = data
        return stack.enter_context(memoryview(mm))[MMAP_OFFSET:]
    raise AssertionError(kind)


def make_dst(kind: str, n: int, stack: ExitStack) -> tuple[Any, Callable[[], bytes]]:
    """A writable buffer of n bytes (filled with 0xAB) and a function reading it back."""
    if kind == "bytearray":
        buf = bytearray(b"\xab" * n)
        return buf, lambda: bytes(buf)
    if kind == "memoryview":
        base = bytearray(b"\xab" * (n + 2))
        return memoryview(base)[1:-1], lambda: bytes(base[1:-1])
    if kind == "numpy":
        arr = np.full(n, 0xAB, dtype=np.uint8)
        return arr, arr.tobytes
    if kind == "mmap":
        mm = stack.enter_context(mmap.mmap(-1, MMAP_OFFSET + n))
        mm[:] = b"\xab" * len(mm)
        view = stack.enter_context(memoryview(mm))[MMAP_OFFSET:]
        return view, lambda: mm[MMAP_OFFSET:]
    raise AssertionError(kind)


SRC_KINDS = ["bytes", "bytearray", "memoryview", "numpy", "mmap"]
DST_KINDS = ["bytearray", "memoryview", "numpy", "mmap"]
SIZES = [0, 1, 7, 4095, 4096, 4097, 65535, 65536, 65537, MiB + 3]


# --- copy ----------------------------------------------------------------------------


@parametrize_impl
@pytest.mark.parametrize("src_kind", SRC_KINDS)
@pytest.mark.parametrize("dst_kind", DST_KINDS)
@pytest.mark.parametrize("n", SIZES)
def test_copy_is_byte_exact(impl: ModuleType, src_kind: str, dst_kind: str, n: int) -> None:
    data = _payload(n, seed=n)
    with ExitStack() as stack:
        src = make_src(src_kind, data, stack)
        dst, read = make_dst(dst_kind, n, stack)
        assert impl.copy(dst, src) is None
        assert read() == data
        del src, dst  # release the views before the mmaps close


@parametrize_impl
def test_copy_typed_and_multidimensional_arrays(impl: ModuleType) -> None:
    src = np.arange(3 * 5 * 7, dtype=np.float32).reshape(3, 5, 7)
    dst = np.zeros((7, 15), dtype=np.float32)  # same byte count, other shape
    impl.copy(dst, src)
    assert dst.tobytes() == src.tobytes()
    as_bytes = bytearray(src.nbytes)
    impl.copy(as_bytes, src)
    assert bytes(as_bytes) == src.tobytes()


@parametrize_impl
@pytest.mark.parametrize("threads", [2, 3, 4])
@pytest.mark.parametrize(
    "n",
    [
        SMALL_THRESHOLD - 1,  # just below: one memcpy
        SMALL_THRESHOLD,
        SMALL_THRESHOLD + 1,
        SMALL_THRESHOLD + 4095,
        3 * SMALL_THRESHOLD + 17,
        8 * MiB + 5,
    ],
)
@pytest.mark.parametrize("dst_offset", [0, 1, 4095])
def test_copy_threaded_path(impl: ModuleType, threads: int, n: int, dst_offset: int) -> None:
    impl.set_copy_threshold(SMALL_THRESHOLD)
    impl.set_copy_threads(threads)
    assert impl.copy_threads() == threads
    data = _payload(n, seed=threads)
    # Guard bytes on both sides catch chunks that run past their end.
    base = bytearray(b"\xcd" * (dst_offset + n + 64))
    impl.copy(memoryview(base)[dst_offset : dst_offset + n], data)
    assert base[dst_offset : dst_offset + n] == data
    assert base[:dst_offset] == b"\xcd" * dst_offset
    assert base[dst_offset + n :] == b"\xcd" * 64


@parametrize_impl
def test_copy_from_many_threads_at_once(impl: ModuleType) -> None:
    """Concurrent large copies share the worker pool without mixing up their chunks."""
    impl.set_copy_threshold(SMALL_THRESHOLD)
    impl.set_copy_threads(3)
    n, rounds, workers = MiB + 12345, 10, 4
    sources = [_payload(n, seed=i) for i in range(workers)]
    failures: list[str] = []

    def run(i: int) -> None:
        dst = bytearray(n)
        for r in range(rounds):
            impl.copy(dst, sources[i])
            if dst != sources[i]:
                failures.append(f"thread {i}, round {r}")
            dst[:] = bytes(n)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


@parametrize_impl
def test_copy_thread_count_can_change_between_copies(impl: ModuleType) -> None:
    impl.set_copy_threshold(SMALL_THRESHOLD)
    data = _payload(2 * MiB + 1)
    for threads in (2, 4, 1, 3, 0):
        impl.set_copy_threads(threads)
        dst = bytearray(len(data))
        impl.copy(dst, data)
        assert dst == data


@parametrize_impl
@pytest.mark.parametrize("n", [100, 4 * SMALL_THRESHOLD])
def test_copy_overlapping_ranges_behaves_like_memmove(impl: ModuleType, n: int) -> None:
    impl.set_copy_threshold(SMALL_THRESHOLD)
    impl.set_copy_threads(4)
    buf = bytearray(_payload(n + 4097))
    expected = bytearray(buf)
    expected[4097:] = buf[:n]
    view = memoryview(buf)
    impl.copy(view[4097:], view[:n])
    assert buf == expected


@parametrize_impl
def test_copy_size_mismatch_names_both_sizes(impl: ModuleType) -> None:
    with pytest.raises(
        ValueError, match=r"^copy\(\): size mismatch: dst has 10 bytes, src has 12 bytes$"
    ):
        impl.copy(bytearray(10), b"x" * 12)
    with pytest.raises(ValueError, match="dst has 4 bytes, src has 3 bytes"):
        impl.copy(np.zeros(1, dtype=np.float32), b"abc")


def _readonly_buffers(tmp_path: Path, stack: ExitStack) -> list[Any]:
    arr = np.zeros(8, dtype=np.uint8)
    arr.flags.writeable = False
    path = tmp_path / "page.bin"
    path.write_bytes(b"\0" * 8)
    f = stack.enter_context(path.open("rb"))
    mm = stack.enter_context(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
    return [b"\0" * 8, memoryview(bytearray(8)).toreadonly(), arr, mm]


@parametrize_impl
def test_copy_into_read_only_buffer_fails_clearly(impl: ModuleType, tmp_path: Path) -> None:
    with ExitStack() as stack:
        for dst in _readonly_buffers(tmp_path, stack):
            name = type(dst).__name__
            with pytest.raises(
                TypeError, match=rf"^copy\(\): dst is read-only; .*\(got '{name}'\)$"
            ):
                impl.copy(dst, b"\1" * 8)
            del dst


@parametrize_impl
def test_non_contiguous_buffers_fail_clearly(impl: ModuleType) -> None:
    arr = np.zeros(16, dtype=np.uint8)
    with pytest.raises(ValueError, match=r"^copy\(\): dst is not C-contiguous$"):
        impl.copy(arr[::2], b"\0" * 8)
    with pytest.raises(ValueError, match=r"^copy\(\): src is not C-contiguous$"):
        impl.copy(bytearray(8), arr[::2])
    fortran = np.zeros((4, 4), dtype=np.uint8, order="F")
    with pytest.raises(ValueError, match="dst is not C-contiguous"):
        impl.copy(fortran, bytes(16))
    with pytest.raises(ValueError, match="src is not C-contiguous"):
        impl.copy(bytearray(8), memoryview(bytearray(16))[::2])
    with pytest.raises(ValueError, match=r"^checksum\(\): data is not C-contiguous$"):
        impl.checksum(arr[::2])
    with pytest.raises(ValueError, match=r"^address\(\): buf is not C-contiguous$"):
        impl.address(arr[::2])


@parametrize_impl
def test_non_buffers_fail_clearly(impl: ModuleType) -> None:
    msg = "must be a bytes-like object (buffer protocol), got "
    with pytest.raises(TypeError, match=r"^copy\(\): dst " + r"must be a bytes-like .*got 'int'$"):
        impl.copy(1, b"")
    with pytest.raises(TypeError, match=r"^copy\(\): src .*got 'str'$"):
        impl.copy(bytearray(1), "a")
    with pytest.raises(TypeError, match=r"^checksum\(\): data .*got 'str'$"):
        impl.checksum("text")
    with pytest.raises(TypeError, match=r"^address\(\): buf .*got 'NoneType'$") as info:
        impl.address(None)
    assert msg in str(info.value)


@parametrize_impl
def test_copy_accepts_keywords(impl: ModuleType) -> None:
    dst = bytearray(3)
    impl.copy(src=b"abc", dst=dst)
    assert dst == b"abc"


# --- checksum ------------------------------------------------------------------------


@parametrize_impl
@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=5000))
def test_checksum_equals_xxh3_64(impl: ModuleType, data: bytes) -> None:
    expected = xxhash.xxh3_64_intdigest(data)
    assert impl.checksum(data) == expected
    assert impl.checksum(bytearray(data)) == expected
    assert impl.checksum(memoryview(b"#" + data)[1:]) == expected


@parametrize_impl
@pytest.mark.parametrize("n", [0, 240, 241, 65535, 65536, 3 * MiB + 1])
def test_checksum_sizes_and_kinds(impl: ModuleType, n: int) -> None:
    data = _payload(n, seed=7)
    expected = xxhash.xxh3_64_intdigest(data)
    assert impl.checksum(data) == expected
    assert impl.checksum(np.frombuffer(data, dtype=np.uint8)) == expected
    with ExitStack() as stack:
        assert impl.checksum(make_src("mmap", data, stack)) == expected


@needs_native
@pytest.mark.parametrize("isa", ["baseline", "auto"])
def test_both_checksum_code_paths_equal_xxh3_64(isa: str) -> None:
    """The AVX2 build of XXH3 and the baseline one (KVTIER_CHECKSUM_ISA=baseline) agree with
    xxhash on every size class, whole and through the I/O engine's ranges."""
    script = (
        "import os, sys, tempfile, xxhash\n"
        "from kvtier import _native as n\n"
        "sizes = [0, 1, 16, 17, 128, 129, 240, 241, 1023, 1024, 4095, 65536, (1 << 20) + 7]\n"
        "for size in sizes:\n"
        "    data = os.urandom(size)\n"
        "    assert n.checksum(data) == xxhash.xxh3_64_intdigest(data), size\n"
        "data = os.urandom(3 << 20)\n"
        "fd, path = tempfile.mkstemp(); os.write(fd, data)\n"
        "bufs = [bytearray(5000), bytearray((3 << 20) - 5000)]\n"
        "_, sums = n.io_batch(False, [fd], [0], [bufs], [(7, (3 << 20) - 100)])\n"
        "os.close(fd); os.unlink(path)\n"
        "assert sums == [xxhash.xxh3_64_intdigest(data[7:(3 << 20) - 93])]\n"
        "print(n.checksum_isa())\n")
    env = {**os.environ, "KVTIER_CHECKSUM_ISA": isa}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in (("baseline",) if isa == "baseline" else ("avx2", "baseline"))


@parametrize_impl
def test_checksum_hashes_raw_bytes_of_typed_arrays(impl: ModuleType) -> None:
    arr = np.linspace(0, 1, 1000, dtype=np.float64).reshape(10, 100)
    assert impl.checksum(arr) == xxhash.xxh3_64_intdigest(arr.tobytes())
    assert 0 <= impl.checksum(b"") < 2**64


# --- alloc_bytearray -----------------------------------------------------------------


@parametrize_impl
@pytest.mark.parametrize("n", [0, 1, 4097, 8 * MiB])
def test_alloc_bytearray(impl: ModuleType, n: int) -> None:
    buf = impl.alloc_bytearray(n)
    assert type(buf) is bytearray
    assert len(buf) == n
    buf[:] = b"\x5a" * n  # writable, and exactly n bytes long
    assert buf.count(0x5A) == n


@parametrize_impl
def test_alloc_bytearray_rejects_bad_sizes(impl: ModuleType) -> None:
    with pytest.raises(ValueError, match=r"^alloc_bytearray\(\): n must be >= 0, got -1$"):
        impl.alloc_bytearray(-1)
    with pytest.raises(TypeError):
        impl.alloc_bytearray(2.0)
    with pytest.raises(OverflowError):
        impl.alloc_bytearray(1 << 70)
    assert len(impl.alloc_bytearray(np.int64(5))) == 5  # anything with __index__


# --- address -------------------------------------------------------------------------


@parametrize_impl
def test_address(impl: ModuleType) -> None:
    buf = bytearray(64)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    assert impl.address(buf) == addr
    assert impl.address(memoryview(buf)[5:]) == addr + 5
    arr = np.zeros((4, 4), dtype=np.float32)
    assert impl.address(arr) == arr.ctypes.data
    assert impl.address(arr[1:]) == arr.ctypes.data + 16
    data = b"read-only is fine"
    assert impl.address(data) == ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value


# --- settings ------------------------------------------------------------------------


def _default_threads() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(4, cpus or 1))


@parametrize_impl
def test_copy_settings(impl: ModuleType) -> None:
    assert impl.copy_threads() == _default_threads()
    assert impl.copy_threshold() == 4 * MiB
    impl.set_copy_threads(3)
    impl.set_copy_threshold(12345)
    assert (impl.copy_threads(), impl.copy_threshold()) == (3, 12345)
    impl.set_copy_threads(0)
    assert impl.copy_threads() == _default_threads()
    with pytest.raises(ValueError, match=r"^set_copy_threads\(\): n must be >= 0, got -1$"):
        impl.set_copy_threads(-1)
    with pytest.raises(ValueError, match=r"^set_copy_threshold\(\): nbytes must be >= 0, got -5$"):
        impl.set_copy_threshold(-5)
    with pytest.raises(TypeError):
        impl.set_copy_threads(1.5)


# --- native and fallback agree -------------------------------------------------------


@needs_native
@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=20000), offset=st.integers(0, 64))
def test_backends_agree(data: bytes, offset: int) -> None:
    assert _native.checksum(data) == _fallback.checksum(data)
    outs = []
    for mod in (_native, _fallback):
        base = bytearray(len(data) + offset)
        mod.copy(memoryview(base)[offset:], data)
        outs.append(base)
    assert outs[0] == outs[1] == bytes(offset) + data


def _bad_calls() -> list[Callable[[ModuleType], object]]:
    strided = np.zeros(8)[::2]
    readonly = np.zeros(8)
    readonly.flags.writeable = False
    return [
        lambda m: m.copy(b"abc", b"abc"),
        lambda m: m.copy(readonly, readonly),
        lambda m: m.copy(memoryview(bytearray(3)).toreadonly(), b"abc"),
        lambda m: m.copy(strided, b"x" * 32),
        lambda m: m.copy(bytearray(32), strided),
        lambda m: m.copy(object(), b""),
        lambda m: m.copy(bytearray(2), "ab"),
        lambda m: m.copy(bytearray(2), b"abc"),
        lambda m: m.checksum(12),
        lambda m: m.checksum(strided),
        lambda m: m.address([1, 2]),
        lambda m: m.alloc_bytearray(-3),
        lambda m: m.alloc_bytearray("3"),
        lambda m: m.set_copy_threads(-2),
        lambda m: m.set_copy_threshold(-1),
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


# --- kvtier.native: backend selection ------------------------------------------------

# Makes "import kvtier._native" fail, as if the extension had not been built.
_HIDE_EXTENSION = """
import sys
class _Hide:
    def find_spec(self, name, path=None, target=None):
        if name == "kvtier._native":
            raise ImportError("hidden by the test")
sys.meta_path.insert(0, _Hide())
"""
_REPORT = "import kvtier.native as n; print(n.backend, '|', n.fallback_reason)"


def _run(code: str, env_value: str | None, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("KVTIER_NATIVE", None)
    if env_value is not None:
        env["KVTIER_NATIVE"] = env_value
    return subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("value", ["python", "PYTHON"])
def test_env_python_selects_python(value: str, tmp_path: Path) -> None:
    proc = _run(_REPORT, value, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["python", "|", "None"]


@pytest.mark.parametrize("value", [None, "", "auto"])
def test_env_auto_prefers_native(value: str | None, tmp_path: Path) -> None:
    proc = _run(_REPORT, value, tmp_path)
    assert proc.returncode == 0, proc.stderr
    expected = "native" if _native is not None else "python"
    assert proc.stdout.split()[0] == expected


def test_env_auto_falls_back_and_says_why(tmp_path: Path) -> None:
    proc = _run(_HIDE_EXTENSION + _REPORT, "auto", tmp_path)
    assert proc.returncode == 0, proc.stderr
    backend, reason = (part.strip() for part in proc.stdout.split("|"))
    assert backend == "python"
    assert "kvtier._native could not be imported" in reason and "hidden by the test" in reason


@needs_native
def test_env_native_selects_native(tmp_path: Path) -> None:
    proc = _run(_REPORT, "native", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["native", "|", "None"]


def test_env_native_without_extension_fails_clearly(tmp_path: Path) -> None:
    proc = _run(_HIDE_EXTENSION + _REPORT, "native", tmp_path)
    assert proc.returncode != 0
    assert (
        "ImportError: KVTIER_NATIVE=native, but the compiled extension kvtier._native"
        in proc.stderr
    )


def test_env_bogus_fails_clearly(tmp_path: Path) -> None:
    proc = _run(_REPORT, "bogus", tmp_path)
    assert proc.returncode != 0
    assert (
        "ValueError: KVTIER_NATIVE='bogus' is not valid; use one of: auto, native, python"
        in proc.stderr
    )


def test_native_module_exports() -> None:
    from kvtier import native

    assert native.backend in ("native", "python")
    if native.backend == "native":
        assert native.fallback_reason is None
    for name in native.__all__:
        obj = getattr(native, name)
        if callable(obj):
            doc = obj.__doc__ or ""
            assert doc.strip() and "\n" not in doc.strip(), name


# --- the native worker pool ----------------------------------------------------------

# Loads the extension without the kvtier package (whose imports may start threads of
# their own, e.g. numpy's BLAS) and counts this process's threads around the pool's life.
_POOL_LIFECYCLE = """
import glob, importlib.util, os, sys
def nthreads():
    return len(os.listdir("/proc/self/task"))
package_dir = importlib.util.find_spec("kvtier").submodule_search_locations[0]
path = glob.glob(os.path.join(package_dir, "_native*.so"))[0]
spec = importlib.util.spec_from_file_location("kvtier._native", path)
before = nthreads()
native = importlib.util.module_from_spec(spec)
spec.loader.exec_module(native)
counts = [nthreads() - before]                      # after import: no threads yet
native.set_copy_threshold(1 << 16)
native.set_copy_threads(3)
data = os.urandom(1 << 20)
dst = bytearray(len(data))
native.copy(dst, data)
counts.append(nthreads() - before)                  # pool of 2 workers (+ caller)
native.set_copy_threads(2)
counts.append(nthreads() - before)                  # resized: the old pool is gone
native.copy(dst, data)
counts.append(nthreads() - before)                  # new pool of 1 worker
pid = os.fork()                                     # the child must not use the parent's pool
if pid == 0:
    out = bytearray(len(data))
    native.copy(out, data)
    os._exit(0 if out == data else 3)
_, status = os.waitpid(pid, 0)
print(counts, os.waitstatus_to_exitcode(status), dst == data)
"""


@needs_native
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_pool_starts_lazily_resizes_and_survives_fork(tmp_path: Path) -> None:
    proc = _run(_POOL_LIFECYCLE, None, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("]")[0] + "]" == "[0, 2, 0, 1]"
    assert proc.stdout.split("]")[1].split() == ["0", "True"]
