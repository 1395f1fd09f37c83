"""The disk tier through the store: demotion, promotion, restart, fail-closed reads, full disks."""

from __future__ import annotations

import concurrent.futures
import errno
import os
import subprocess
from pathlib import Path

import lmdb
import pytest

from conftest import page
from kvtier import HostTierConfig, MissReason, StoreConfig, TieredStore
from kvtier.config import DiskTierConfig
from kvtier.errors import ConfigError, TierInUseError
from kvtier.tiers.disk import DATA_FILE, INDEX_DIR

SLOT = 8192


def config(path: Path | list[Path], *, host_slots: int = 4, disk_slots: int = 64,
           slot_bytes: int = SLOT, **disk_kwargs) -> StoreConfig:
    paths = [str(p) for p in path] if isinstance(path, list) else [str(path)]
    disk_kwargs.setdefault("min_free_bytes", 0)
    disk_kwargs.setdefault("fsync", "never")
    disk_kwargs.setdefault("codec", "none")  # tests below flip bytes at raw offsets
    return StoreConfig(
        host=HostTierConfig(capacity_bytes=host_slots * slot_bytes, slot_bytes=slot_bytes, prefault=False),
        disk=DiskTierConfig(paths=paths, capacity_bytes=disk_slots * slot_bytes, **disk_kwargs))


@pytest.fixture
def open_store(clock):
    stores: list[TieredStore] = []

    def build(cfg: StoreConfig) -> TieredStore:
        store = TieredStore(cfg, clock=clock)
        stores.append(store)
        return store

    yield build
    for store in stores:
        store.close()


def fill(store: TieredStore, count: int, nbytes: int = SLOT, base: int = 0) -> dict[bytes, bytes]:
    pages = {f"k{base + i}".encode(): page(base + i, nbytes) for i in range(count)}
    for key, value in pages.items():
        assert store.put(key, value)
    return pages


def assert_all_back(store: TieredStore, pages: dict[bytes, bytes]) -> None:
    for key, value in pages.items():
        got = store.get(key)
        assert got is not None, (key, store.miss_reason(key))
        assert bytes(got) == value


# -- round trips --------------------------------------------------------------------------
@pytest.mark.parametrize("nbytes", [SLOT, 5000, 1, 4096, SLOT - 1])
def test_pages_evicted_from_host_come_back_from_disk(tmp_path, open_store, nbytes):
    store = open_store(config(tmp_path))
    pages = fill(store, 20, nbytes)
    stats = store.stats()
    assert stats.tier("host").entries == 4 and stats.tier("disk").entries == 16
    assert_all_back(store, pages)
    assert store.stats().tier("disk").hits >= 16


def test_get_into_batch_get_and_lookup_prefix_span_both_tiers(tmp_path, open_store):
    store = open_store(config(tmp_path))
    pages = fill(store, 12)
    keys = list(pages)
    assert store.lookup_prefix(keys) == 12
    assert all(store.contains(k) for k in keys)
    out = bytearray(SLOT)
    assert store.get_into(keys[0], out) and bytes(out) == pages[keys[0]]
    got = store.batch_get(keys + [b"absent"])
    assert [bytes(g) for g in got[:-1]] == list(pages.values()) and got[-1] is None
    outs = [bytearray(SLOT) for _ in keys]
    assert store.batch_get_into(keys, outs) == [True] * 12
    assert [bytes(o) for o in outs] == list(pages.values())


def test_restart_serves_every_page_and_keeps_deadlines(tmp_path, open_store, clock):
    cfg = config(tmp_path)
    store = open_store(cfg)
    pages = fill(store, 10)
    assert store.put(b"short", page(99), ttl_s=30)
    store.close()
    store = open_store(cfg)
    assert store.stats().tier("disk").entries == 11  # close() flushed the host-only pages
    assert_all_back(store, pages)
    assert store.contains(b"short")
    clock.advance(31)
    assert store.get(b"short") is None and store.miss_reason(b"short") is MissReason.EXPIRED


def test_reopen_after_close_without_flush_keeps_only_what_reached_disk(tmp_path, open_store):
    cfg = config(tmp_path, flush_on_close=False)
    store = open_store(cfg)
    pages = fill(store, 10)  # 6 demoted to disk, 4 still only in host
    store.close()
    store = open_store(cfg)
    kept = {k: v for k, v in pages.items() if store.contains(k)}
    assert len(kept) == 6
    assert_all_back(store, kept)


def test_flush_writes_host_only_pages_once(tmp_path, open_store):
    store = open_store(config(tmp_path))
    fill(store, 3)
    assert store.flush() == 3
    assert store.flush() == 0
    assert store.stats().tier("disk").entries == 3


def test_flush_ends_when_the_disk_is_smaller_than_the_host_tier(tmp_path, open_store):
    """Writing page i evicts an earlier page from the full disk, which is then host-only again:
    flush (and close, which flushes) must still end, writing each page once."""
    store = open_store(config(tmp_path, host_slots=16, disk_slots=4, write_mode="write_through"))
    pages = fill(store, 8)
    done = concurrent.futures.ThreadPoolExecutor(1).submit(store.flush)
    assert done.result(timeout=30) <= 8
    assert store.stats().tier("disk").entries == 4
    assert_all_back(store, pages)  # the host tier still has every page
    store.close()


def test_flush_skips_pages_whose_window_has_closed(tmp_path, open_store, clock):
    store = open_store(config(tmp_path))
    assert store.put(b"brief", page(1), ttl_s=5)
    assert store.put(b"long", page(2), ttl_s=500)
    clock.advance(10)
    assert store.flush() == 1
    assert store.stats().tier("disk").entries == 1
    assert store.miss_reason(b"brief") is MissReason.EXPIRED


def test_write_through_puts_are_on_disk_when_put_returns(tmp_path, open_store):
    store = open_store(config(tmp_path, write_mode="write_through", flush_on_close=False))
    fill(store, 3)
    assert store.stats().tier("disk").entries == 3
    assert store.flush() == 0


def test_new_version_replaces_the_disk_copy(tmp_path, open_store):
    cfg = config(tmp_path)
    store = open_store(cfg)
    fill(store, 8)  # k0..k3 are now on disk only
    assert store.put(b"k0", page(1000))
    assert bytes(store.get(b"k0")) == page(1000)
    store.close()
    store = open_store(cfg)
    assert bytes(store.get(b"k0")) == page(1000)


def test_promotion_keeps_the_disk_copy_so_evicting_it_again_writes_nothing(tmp_path, open_store):
    store = open_store(config(tmp_path))
    pages = fill(store, 8)
    before = store.stats().tier("disk").bytes_in
    assert_all_back(store, dict(list(pages.items())[:4]))  # promoted, evicting k4..k7 (dirty)
    assert_all_back(store, dict(list(pages.items())[:4]))
    moved = store.stats().tier("disk").bytes_in - before
    assert moved == 4 * SLOT  # only k4..k7 were written; k0..k3 stayed on disk


def test_promote_on_read_off_leaves_host_alone(tmp_path, open_store):
    store = open_store(config(tmp_path, promote_on_read=False))
    pages = fill(store, 8)  # k4..k7 in host, k0..k3 on disk only
    for _ in range(2):
        assert_all_back(store, pages)
    assert store.stats().tier("host").hits == 8 and store.stats().tier("disk").hits == 8


def test_prefetch_warms_the_host_tier(tmp_path, open_store):
    store = open_store(config(tmp_path, host_slots=8))
    pages = fill(store, 16)
    keys = list(pages)[:4]  # on disk only now
    assert store.prefetch(keys).result(timeout=10) == 4
    hits_before = store.stats().tier("disk").hits
    assert_all_back(store, {k: pages[k] for k in keys})
    assert store.stats().tier("disk").hits == hits_before  # served by the host tier


def test_async_api_reads_and_writes_through_disk(tmp_path, open_store):
    store = open_store(config(tmp_path))
    futures = [store.put_async(f"a{i}".encode(), page(i)) for i in range(12)]
    assert all(f.result(timeout=10) for f in futures)
    reads = [store.get_async(f"a{i}".encode()) for i in range(12)]
    assert [bytes(f.result(timeout=10)) for f in reads] == [page(i) for i in range(12)]


def test_striped_paths_spread_slots(tmp_path, open_store):
    dirs = [tmp_path / "a", tmp_path / "b"]
    cfg = config(dirs)
    store = open_store(cfg)
    pages = fill(store, 20)
    store.close()
    sizes = [(d / DATA_FILE).stat().st_blocks for d in dirs]
    assert all(sizes), sizes
    store = open_store(cfg)
    assert_all_back(store, pages)


def test_files_are_private_and_not_named_after_keys(tmp_path, open_store):
    store = open_store(config(tmp_path))
    fill(store, 6)
    store.close()
    names = {p.name for p in tmp_path.rglob("*")}
    assert names == {DATA_FILE, "kvtier.lock", "stripe.json", INDEX_DIR, "data.mdb", "lock.mdb"}
    assert (tmp_path / DATA_FILE).stat().st_mode & 0o777 == 0o600
    assert (tmp_path / INDEX_DIR / "data.mdb").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("fsync", ["always", "batch", "never"])
def test_every_fsync_mode_round_trips(tmp_path, open_store, fsync):
    cfg = config(tmp_path, fsync=fsync)
    store = open_store(cfg)
    pages = fill(store, 10)
    store.close()
    assert_all_back(open_store(cfg), pages)


# -- failing closed -----------------------------------------------------------------------
def slot_offsets(path: Path) -> dict[bytes, tuple[int, int]]:
    """key -> (offset of the payload in slots.dat, length), from the LMDB index."""
    from kvtier.tiers.disk_index import DiskRecord

    env = lmdb.open(str(path / INDEX_DIR), max_dbs=2, readonly=True, lock=False)
    with env.begin(db=env.open_db(b"entries", create=False)) as txn:
        records = {bytes(k): DiskRecord.unpack(bytes(v)) for k, v in txn.cursor()}
    env.close()
    stride = 4096 + SLOT
    return {k: (r.slot * stride + 4096, r.raw_len) for k, r in records.items()}


def on_disk(tmp_path, open_store, count: int = 8):
    cfg = config(tmp_path)
    store = open_store(cfg)
    pages = fill(store, count)
    store.close()
    return cfg, pages


def assert_corrupt_misses_only(store: TieredStore, pages: dict[bytes, bytes], bad: set[bytes]) -> None:
    for key, value in pages.items():
        got = store.get(key)
        if key in bad:
            assert got is None and store.miss_reason(key) is MissReason.CORRUPT
        else:
            assert got is not None and bytes(got) == value
    assert store.stats().misses.get("corrupt", 0) >= len(bad)


def test_bit_flip_in_a_page_is_a_corrupt_miss_and_the_entry_is_dropped(tmp_path, open_store):
    cfg, pages = on_disk(tmp_path, open_store)
    victim = next(iter(pages))
    key_bytes = bytes(TieredStore._key(victim))
    offset, _ = slot_offsets(tmp_path)[key_bytes]
    with open(tmp_path / DATA_FILE, "r+b") as fh:
        fh.seek(offset + 100)
        byte = fh.read(1)
        fh.seek(offset + 100)
        fh.write(bytes([byte[0] ^ 0x01]))
    store = open_store(cfg)
    assert_corrupt_misses_only(store, pages, {victim})
    assert not store.contains(victim)
    store.close()
    assert key_bytes not in slot_offsets(tmp_path)  # the record is gone from the index too


@pytest.mark.parametrize("shift", [0, 64, 512, 4095])
def test_reads_into_buffers_not_aligned_for_o_direct(tmp_path, open_store, shift):
    """A torch CPU tensor is only 64-byte aligned: such pages bounce through aligned scratch
    memory and are copied into place by the I/O engine; a bit flip is still a miss."""
    import mmap

    cfg, pages = on_disk(tmp_path, open_store, count=8)
    keys = list(pages)
    offset, _ = slot_offsets(tmp_path)[bytes(TieredStore._key(keys[2]))]
    with open(tmp_path / DATA_FILE, "r+b") as fh:
        fh.seek(offset + SLOT - 1)  # the page's last byte: in the bounced tail, whatever shift
        byte = fh.read(1)
        fh.seek(offset + SLOT - 1)
        fh.write(bytes([byte[0] ^ 0x80]))
    memory = mmap.mmap(-1, len(keys) * SLOT + 8192)
    outs = [memoryview(memory)[shift + i * SLOT:shift + (i + 1) * SLOT] for i in range(len(keys))]
    store = open_store(cfg)
    got = store.batch_get_into(keys, outs)
    assert got == [i != 2 for i in range(len(keys))]
    for i, key in enumerate(keys):
        if i != 2:
            assert bytes(outs[i]) == pages[key], i
    assert store.miss_reason(keys[2]) is MissReason.CORRUPT
    assert store.stats().tier("disk").hits == len(keys) - 1


def test_scratch_maps_are_reused_within_limits():
    from kvtier.tiers.staging import Staging, StagingMaps

    maps = StagingMaps()
    first = Staging([SLOT] * 4, maps)
    first.release()
    kept = maps.kept_bytes
    assert kept >= 4 * (4096 + SLOT)
    again = Staging([SLOT] * 2, maps)  # a smaller batch takes the kept map: no new faults
    assert maps.kept_bytes == 0
    again.release()
    assert maps.kept_bytes == kept
    held = [Staging([SLOT], maps) for _ in range(6)]  # six batches at once: six maps
    for staging in held:
        staging.release()
    assert maps.kept_bytes <= 4 * kept  # at most four kept


def test_a_flipped_header_byte_is_a_corrupt_miss(tmp_path, open_store):
    cfg, pages = on_disk(tmp_path, open_store)
    victim = list(pages)[3]
    offset, _ = slot_offsets(tmp_path)[bytes(TieredStore._key(victim))]
    with open(tmp_path / DATA_FILE, "r+b") as fh:
        fh.seek(offset - 4096 + 20)
        fh.write(b"\xff")
    assert_corrupt_misses_only(open_store(cfg), pages, {victim})


def test_a_page_moved_to_another_slot_is_refused(tmp_path, open_store):
    cfg, pages = on_disk(tmp_path, open_store)
    first, second = list(pages)[:2]
    offsets = slot_offsets(tmp_path)
    a, _ = offsets[bytes(TieredStore._key(first))]
    b, _ = offsets[bytes(TieredStore._key(second))]
    with open(tmp_path / DATA_FILE, "r+b") as fh:  # copy slot a (header + page) over slot b
        fh.seek(a - 4096)
        blob = fh.read(4096 + SLOT)
        fh.seek(b - 4096)
        fh.write(blob)
    assert_corrupt_misses_only(open_store(cfg), pages, {second})


def test_truncated_data_file_gives_corrupt_misses(tmp_path, open_store):
    cfg, pages = on_disk(tmp_path, open_store)
    offsets = slot_offsets(tmp_path)
    cut = sorted(o for o, _ in offsets.values())[4]  # pages at or after this offset are cut
    bad = {k for k in pages if offsets[bytes(TieredStore._key(k))][0] >= cut}
    with open(tmp_path / DATA_FILE, "r+b") as fh:
        fh.truncate(cut - 10)
    store = open_store(cfg)  # reopening re-extends the sparse file: the cut pages read as zeros
    assert len(bad) == 4
    assert_corrupt_misses_only(store, pages, bad)


def test_deleted_data_file_gives_corrupt_misses_not_errors(tmp_path, open_store):
    cfg, pages = on_disk(tmp_path, open_store)
    (tmp_path / DATA_FILE).unlink()
    store = open_store(cfg)
    assert_corrupt_misses_only(store, pages, set(pages))
    assert store.put(b"new", page(7)) and bytes(store.get(b"new")) == page(7)


def test_data_file_wiped_while_open_gives_corrupt_misses(tmp_path, open_store):
    store = open_store(config(tmp_path))
    pages = fill(store, 8)
    os.truncate(tmp_path / DATA_FILE, 0)  # what a wiped or failing drive looks like
    disk_only = {k for k in pages if TieredStore._key(k) not in store._first_index.entries}
    assert len(disk_only) == 4
    assert_corrupt_misses_only(store, pages, disk_only)


def test_corrupted_lmdb_value_is_dropped_at_open(tmp_path, open_store):
    cfg, pages = on_disk(tmp_path, open_store)
    victim, other = list(pages)[:2]
    env = lmdb.open(str(tmp_path / INDEX_DIR), max_dbs=2)
    db = env.open_db(b"entries")
    with env.begin(db=db, write=True) as txn:
        txn.put(bytes(TieredStore._key(victim)), b"garbage!")
        raw = bytearray(txn.get(bytes(TieredStore._key(other))))
        raw[24] ^= 0xFF  # the checksum field: decodes, but no longer matches the page
        txn.put(bytes(TieredStore._key(other)), bytes(raw))
    env.close()
    store = open_store(cfg)
    assert store.stats().tier("disk").extra["dropped_at_open"] == 1
    assert store.get(victim) is None
    assert_corrupt_misses_only(store, {k: v for k, v in pages.items() if k != victim}, {other})


# -- space --------------------------------------------------------------------------------
def test_capacity_cap_evicts_by_policy(tmp_path, open_store):
    store = open_store(config(tmp_path, disk_slots=8))
    pages = fill(store, 30)
    stats = store.stats()
    assert stats.tier("disk").entries == 8 and stats.tier("disk").evictions > 0
    assert [k for k in pages if store.contains(k)] == list(pages)[-12:]  # 4 in host + 8 on disk
    assert_all_back(store, dict(list(pages.items())[-4:]))
    assert store.get(b"k0") is None and store.miss_reason(b"k0") is MissReason.EVICTED


def test_free_space_floor_stops_new_slots(tmp_path, open_store):
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    store = open_store(config(tmp_path, min_free_bytes=free + (1 << 30)))  # already below it
    pages = fill(store, 10)
    assert store.stats().tier("disk").entries == 0  # nothing may grow the files
    assert_all_back(store, dict(list(pages.items())[-4:]))  # the host tier still works


@pytest.fixture
def tiny_fs(tmp_path):
    """A 1 MiB tmpfs (needs root and mount permission; skipped otherwise)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or result.returncode}): "
                    "the disk-full test needs root and mount permission")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_filesystem_degrades_to_not_stored(tiny_fs, open_store):
    # 1 MiB of tmpfs under a 64-slot (~0.75 MiB of pages + headers + index) disk tier that
    # believes it has 4 MiB: writes hit ENOSPC; the store keeps serving from the host tier.
    cfg = config(tiny_fs, disk_slots=256)
    store = open_store(cfg)
    pages = fill(store, 200)
    stats = store.stats()
    disk = stats.tier("disk")
    assert disk.extra["enospc"] > 0 or disk.entries < 196
    assert 0 < disk.entries < 196
    assert_all_back(store, dict(list(pages.items())[-4:]))
    for key, value in pages.items():  # whatever the disk kept is exact
        got = store.get(key)
        assert got is None or bytes(got) == value
    store.close()
    store = open_store(cfg)  # and it reopens
    assert store.stats().tier("disk").entries > 0


def test_enospc_from_the_kernel_is_counted_and_the_page_not_stored(tmp_path, open_store, monkeypatch):
    store = open_store(config(tmp_path))
    from kvtier import native

    real = native.io_batch

    def full_disk(write, fds, offsets, buffers, *completion):
        if write:
            return [-errno.ENOSPC] * len(fds)
        return real(write, fds, offsets, buffers, *completion)

    monkeypatch.setattr(native, "io_batch", full_disk)
    pages = fill(store, 10)
    disk = store.stats().tier("disk")
    assert disk.entries == 0 and disk.extra["enospc"] == 6
    assert_all_back(store, dict(list(pages.items())[-4:]))


# -- opening ------------------------------------------------------------------------------
def test_second_store_on_the_same_directory_is_refused(tmp_path, open_store):
    cfg = config(tmp_path)
    first = open_store(cfg)
    with pytest.raises(TierInUseError, match=f"pid {os.getpid()}"):
        TieredStore(cfg)
    first.close()
    open_store(cfg).close()


def test_other_namespace_or_geometry_is_refused(tmp_path, open_store):
    open_store(config(tmp_path, namespace="llama-3-8b")).close()
    with pytest.raises(ConfigError, match="another model"):
        TieredStore(config(tmp_path, namespace="qwen2.5-7b"))
    with pytest.raises(ConfigError, match="slot_bytes"):
        TieredStore(config(tmp_path, slot_bytes=2 * SLOT, namespace="llama-3-8b"))
    open_store(config(tmp_path, namespace="llama-3-8b")).close()


def test_format_version_mismatch_is_refused(tmp_path, open_store):
    open_store(config(tmp_path)).close()
    env = lmdb.open(str(tmp_path / INDEX_DIR), max_dbs=2)
    with env.begin(db=env.open_db(b"meta"), write=True) as txn:
        txn.put(b"meta", b'{"format": 99, "slot_bytes": 8192, "paths": 1, "namespace": ""}')
    env.close()
    with pytest.raises(ConfigError, match="format 99"):
        TieredStore(config(tmp_path))


def test_buffered_fallback_where_o_direct_is_refused(tmp_path, open_store, monkeypatch):
    real_open = os.open

    def no_direct(path, flags, *args):  # what a filesystem without O_DIRECT answers
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_direct)
    cfg = config(tmp_path)
    store = open_store(cfg)
    assert store.stats().tier("disk").extra["direct_io"] is False
    pages = fill(store, 10)
    assert_all_back(store, pages)


@pytest.mark.parametrize("kwargs,message", [
    ({"paths": []}, "at least one directory"),
    ({"paths": ["/a", "/a"]}, "duplicates"),
    ({"paths": ["/a"], "fsync": "sometimes"}, "fsync"),
    ({"paths": ["/a"], "write_mode": "later"}, "write_mode"),
    ({"paths": ["/a"], "capacity_bytes": 0}, "capacity_bytes"),
])
def test_disk_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        DiskTierConfig(**kwargs)


def test_disk_config_from_env_and_file(tmp_path):
    env = {"KVTIER_DISK_PATHS": f"{tmp_path}/a,{tmp_path}/b", "KVTIER_DISK_CAPACITY_BYTES": "1GiB",
           "KVTIER_DISK_FSYNC": "always"}
    cfg = StoreConfig.from_env(env)
    assert cfg.disk.paths == (f"{tmp_path}/a", f"{tmp_path}/b")
    assert cfg.disk.capacity_bytes == 1 << 30 and cfg.disk.fsync == "always"
    assert cfg.disk.slot_bytes == cfg.host.slot_bytes
    toml = tmp_path / "kvtier.toml"
    toml.write_text(f'[disk]\npaths = ["{tmp_path}/c"]\ncapacity_bytes = "2GiB"\n')
    assert StoreConfig.from_file(toml).disk.paths == (f"{tmp_path}/c",)
    with pytest.raises(ConfigError, match="must be >= host.slot_bytes"):
        StoreConfig(host=HostTierConfig(slot_bytes=1 << 20),
                    disk=DiskTierConfig(paths=["/x"], slot_bytes=4096))


def test_swapped_stripe_directories_are_refused(tmp_path, open_store):
    dirs = [tmp_path / "a", tmp_path / "b"]
    open_store(config(dirs)).close()
    with pytest.raises(ConfigError, match="not stripe 0"):
        TieredStore(config([dirs[1], dirs[0]]))


def test_index_commit_failure_is_not_stored_and_close_still_works(tmp_path, open_store, monkeypatch):
    from kvtier.tiers.disk import DiskTier

    store = open_store(config(tmp_path))
    monkeypatch.setattr(DiskTier, "commit", lambda self, items: False)  # e.g. LMDB map full
    pages = fill(store, 8)
    assert store.stats().tier("disk").entries == 0
    assert_all_back(store, dict(list(pages.items())[-4:]))
    store.close()  # returns: nothing left in flight


def test_disk_read_times_do_not_accumulate_for_dropped_pages(tmp_path, open_store):
    store = open_store(config(tmp_path, disk_slots=8, promote_on_read=False))
    for round_ in range(5):
        pages = fill(store, 12, base=round_ * 12)
        assert_all_back(store, pages)
    assert len(store._disk_reads) <= 8
