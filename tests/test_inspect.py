"""`kvtier inspect`: a read-only fsck of disk-tier directories, on real files and a real LMDB."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import lmdb
import pytest
from typer.testing import CliRunner

import kvtier
from kvtier import HostTierConfig, StoreConfig, TieredStore
from kvtier.cli import app
from kvtier.config import DiskTierConfig
from kvtier.keys import DEFAULT_NAMESPACE
from kvtier.tiers.disk_index import DiskRecord
from kvtier.tiers.pageformat import HEADER_BLOCK

from conftest import page

SLOT = 16384
STRIDE = HEADER_BLOCK + SLOT
SIZES = {b"a": 4096, b"b": 10000, b"c": SLOT, b"d": 100, b"e": 5000, b"f": 12288}
TTL_KEYS = {b"b", b"e"}
# The documented top-level keys of `kvtier inspect --json` (docs/inspect.md).
JSON_KEYS = {"path", "paths", "format", "slot_bytes", "stride", "namespace", "in_use_by_pid",
             "checked_at", "entries", "valid_entries", "payload_bytes", "data_files", "slots",
             "times", "ttl", "sizes", "key_namespaces", "listed", "verified", "orphan_slots",
             "changed_during_scan", "problems", "ok"}
runner = CliRunner()


def key(name: bytes) -> bytes:
    return bytes(DEFAULT_NAMESPACE.key_for_bytes(name))


def config(*paths: Path, codec: str = "none") -> StoreConfig:
    """``codec="none"`` by default: most tests below damage bytes at raw-page offsets."""
    return StoreConfig(
        host=HostTierConfig(capacity_bytes=4 * SLOT, slot_bytes=SLOT, prefault=False),
        disk=DiskTierConfig(paths=[str(p) for p in paths], capacity_bytes=64 * SLOT,
                            min_free_bytes=0, fsync="never", namespace="test-model", codec=codec))


def fill(*paths: Path) -> None:
    """Six pages of assorted sizes (more than the host holds: some are demoted on put), all on
    disk after close (flush_on_close)."""
    with TieredStore(config(*paths)) as store:
        for i, (name, size) in enumerate(SIZES.items()):
            assert store.put(name, page(i, size), ttl_s=3600 if name in TTL_KEYS else None)


@pytest.fixture
def tier(tmp_path: Path) -> Path:
    fill(tmp_path / "kv")
    return tmp_path / "kv"


def inspect(*args: str):
    return runner.invoke(app, ["inspect", *args])


def flat(text: str) -> str:
    """``text`` without rich's box drawing and line wrapping (CliRunner is 80 columns wide)."""
    return " ".join(text.translate({ord(c): " " for c in "│╭╮╰╯─"}).split())


def inspect_in_another_process(*args: str) -> subprocess.CompletedProcess:
    """``python -m kvtier inspect``: a second process, as beside a serving engine (LMDB allows
    one open environment per path per process)."""
    src = str(Path(kvtier.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "kvtier", "inspect", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def report(*args: str, code: int = 0) -> dict:
    result = inspect("--json", *args)
    assert result.exit_code == code, result.output
    return json.loads(result.stdout)


def records(directory: Path) -> dict[bytes, DiskRecord]:
    env = lmdb.open(str(directory / "index"), max_dbs=2)
    try:
        with env.begin(db=env.open_db(b"entries")) as txn:
            return {bytes(k): DiskRecord.unpack(v) for k, v in txn.cursor()}
    finally:
        env.close()


def write_records(directory: Path, values: dict[bytes, bytes | None]) -> None:
    """Overwrite (or delete, for None) raw LMDB values, as a stray writer or bit rot would."""
    env = lmdb.open(str(directory / "index"), max_dbs=2)
    try:
        with env.begin(db=env.open_db(b"entries"), write=True) as txn:
            for k, v in values.items():
                txn.put(k, v) if v is not None else txn.delete(k)
    finally:
        env.close()


def offset_of(slot: int, paths: int = 1) -> int:
    return (slot // paths) * STRIDE


# -- a clean tier ------------------------------------------------------------------------------
def test_clean_tier_verifies_with_its_facts(tier):
    doc = report(str(tier), "--verify")
    assert set(doc) == JSON_KEYS
    assert doc["ok"] and doc["problems"] == [] and doc["verified"]
    assert doc["entries"] == doc["valid_entries"] == len(SIZES)
    assert doc["payload_bytes"] == sum(SIZES.values())
    assert doc["format"] == 1 and doc["slot_bytes"] == SLOT and doc["stride"] == STRIDE
    assert doc["namespace"] == "test-model"
    assert doc["slots"] == {"total": 64, "used": len(SIZES)}
    (data,) = doc["data_files"]
    assert data["exists"] and data["apparent_bytes"] == 64 * STRIDE and data["slots"] == 64
    assert data["allocated_bytes"] > 0  # preallocated (fallocate) or sparse
    assert doc["sizes"]["min"] == 100 and doc["sizes"]["max"] == SLOT
    assert sum(b["count"] for b in doc["sizes"]["histogram"]) == len(SIZES)
    assert doc["ttl"] == {"with_deadline": len(TTL_KEYS), "expired": 0}
    assert doc["orphan_slots"] == 0 and doc["changed_during_scan"] == 0
    assert doc["key_namespaces"] == {DEFAULT_NAMESPACE.digest.hex(): len(SIZES)}
    now = time.time()
    assert now - 60 < doc["times"]["oldest_created"] <= doc["times"]["newest_created"] <= now
    listed = {bytes.fromhex(e["key"]): e for e in doc["listed"]}
    assert len(listed) == len(SIZES) and listed[key(b"d")]["size"] == 100
    assert listed[key(b"b")]["ttl_s"] == 3600 and listed[key(b"a")]["deadline"] is None


def test_text_report_and_limit(tier):
    result = inspect(str(tier), "--verify", "--limit", "2")
    assert result.exit_code == 0, result.output
    assert "every page verifies" in result.output and "first 2 of 6" in result.output
    assert report(str(tier), "--limit", "0")["listed"] == []
    doc = report(str(tier))  # without --verify: the index and the files' geometry only
    assert doc["ok"] and not doc["verified"] and doc["orphan_slots"] is None


def test_expired_deadlines_are_counted(tier):
    rec = records(tier)[key(b"b")]
    rec.deadline = time.time() - 10
    write_records(tier, {key(b"b"): rec.pack()})
    assert report(str(tier))["ttl"] == {"with_deadline": 2, "expired": 1}


def test_a_slot_no_record_names_is_an_orphan_not_a_problem(tier):
    write_records(tier, {key(b"c"): None})
    doc = report(str(tier), "--verify")
    assert doc["ok"] and doc["entries"] == len(SIZES) - 1 and doc["orphan_slots"] == 1


# -- damage ------------------------------------------------------------------------------------
def problems(doc: dict) -> dict[bytes, str]:
    return {bytes.fromhex(p["key"]): p["problem"] for p in doc["problems"]}


def flip_payload_byte(directory: Path, slot: int, at: int = 1234) -> None:
    with open(directory / "slots.dat", "r+b") as fh:
        fh.seek(offset_of(slot) + HEADER_BLOCK + at)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0x10]))


def test_a_flipped_payload_byte_is_named(tier):
    flip_payload_byte(tier, records(tier)[key(b"e")].slot)
    assert report(str(tier))["ok"]  # no data read without --verify
    doc = report(str(tier), "--verify", code=1)
    assert problems(doc) == {key(b"e"): "checksum mismatch"} and not doc["ok"]
    result = inspect(str(tier), "--verify")
    assert result.exit_code == 1 and "checksum mismatch" in result.output
    assert key(b"e")[16:22].hex() in result.output


def test_a_page_the_live_store_replaced_meanwhile_is_not_corrupt(tier, monkeypatch):
    """A failed page whose record changed after the snapshot (the store dropped or rewrote it,
    maybe reusing its slot) is counted apart, not reported as corrupt."""
    module = sys.modules["kvtier.cli.inspect"]
    real_verify, victim = module._verify, key(b"e")
    flip_payload_byte(tier, records(tier)[victim].slot)

    def verify_then_store_drops_it(*args):
        failed = real_verify(*args)
        script = (f"import lmdb; e = lmdb.open({str(tier / 'index')!r}, max_dbs=2); "
                  f"t = e.begin(db=e.open_db(b'entries'), write=True); t.delete({victim!r}); t.commit()")
        subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
        return failed

    monkeypatch.setattr(module, "_verify", verify_then_store_drops_it)
    doc = report(str(tier), "--verify")
    assert doc["ok"] and doc["changed_during_scan"] == 1 and doc["entries"] == len(SIZES)


def test_a_damaged_header_and_a_swapped_slot(tier):
    recs = records(tier)
    with open(tier / "slots.dat", "r+b") as fh:
        fh.seek(offset_of(recs[key(b"a")].slot) + 40)  # inside the key field of the header
        fh.write(b"\xff")
    a, d = recs[key(b"a")], recs[key(b"d")]
    a.slot, d.slot = d.slot, a.slot
    write_records(tier, {key(b"a"): a.pack(), key(b"d"): d.pack()})
    found = problems(report(str(tier), "--verify", code=1))
    assert found == {key(b"a"): "header key mismatch", key(b"d"): "bad header"}


def test_a_truncated_data_file_is_a_short_read(tier):
    last = max(records(tier).items(), key=lambda kv: kv[1].slot)
    os.truncate(tier / "slots.dat", offset_of(last[1].slot) + HEADER_BLOCK + 100)
    doc = report(str(tier), "--verify", code=1)
    assert problems(doc) == {last[0]: "short read"}
    assert report(str(tier), code=1)["problems"] == doc["problems"]  # a geometry check: no read needed


def test_a_missing_data_file(tier):
    os.unlink(tier / "slots.dat")
    doc = report(str(tier), "--verify", code=1)
    assert set(problems(doc).values()) == {"missing data file"} and len(doc["problems"]) == len(SIZES)
    assert doc["data_files"][0]["exists"] is False


def test_an_undecodable_and_a_duplicate_record(tier):
    recs = records(tier)
    first, second = sorted(k for k in recs if k != key(b"c"))[:2]
    dup = recs[second]
    dup.slot = recs[first].slot
    write_records(tier, {key(b"c"): b"0123456789", second: dup.pack()})
    doc = report(str(tier), "--verify", code=1)
    assert problems(doc) == {key(b"c"): "undecodable record", second: "duplicate slot"}
    assert doc["entries"] == len(SIZES) and doc["valid_entries"] == len(SIZES) - 2
    result = inspect(str(tier))
    assert result.exit_code == 1 and "undecodable record" in result.output


def test_an_index_that_is_not_lmdb_is_corrupt(tier):
    (tier / "index" / "data.mdb").write_bytes(os.urandom(8192))
    result = inspect(str(tier))
    assert result.exit_code == 1 and "corrupt" in result.output and "data.mdb" in flat(result.output)


# -- usage -------------------------------------------------------------------------------------
def test_a_directory_that_is_not_a_disk_tier(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    result = inspect(str(tmp_path))
    assert result.exit_code == 2 and "not a kvtier disk tier directory: no index/" in flat(result.output)
    result = inspect(str(tmp_path / "nowhere"))
    assert result.exit_code == 2 and "does not exist" in flat(result.output)
    assert os.listdir(tmp_path) == ["notes.txt"]  # nothing created


def test_stripes_need_every_path_in_order(tmp_path):
    d0, d1 = tmp_path / "nvme0", tmp_path / "nvme1"
    fill(d0, d1)
    doc = report(str(d0), "--path", str(d1), "--verify")
    assert doc["ok"] and doc["entries"] == len(SIZES) and doc["slots"]["total"] == 64
    assert [f["path"] for f in doc["data_files"]] == [str(d0 / "slots.dat"), str(d1 / "slots.dat")]
    result = inspect(str(d0))
    assert result.exit_code == 2 and "created over 2 path(s) but inspect got 1" in flat(result.output)
    swapped = inspect(str(d1), "--path", str(d0))
    assert swapped.exit_code == 2 and "give the first of disk.paths" in flat(swapped.output)


def test_inspect_works_beside_an_open_store_and_changes_nothing(tier):
    before = {p: p.read_bytes() for p in sorted(tier.rglob("*")) if p.is_file()}
    doc = report(str(tier), "--verify")
    after = {p: p.read_bytes() for p in sorted(tier.rglob("*")) if p.is_file()}
    assert before == after and doc["in_use_by_pid"] is None
    with TieredStore(config(tier)) as store:
        assert store.get(b"a") is not None
        done = inspect_in_another_process(str(tier), "--verify", "--json")
        assert done.returncode == 0, done.stderr
        doc = json.loads(done.stdout)
        assert doc["ok"] and doc["entries"] == len(SIZES)
        assert doc["in_use_by_pid"] in (os.getpid(), None)  # None where /proc/locks is hidden
        assert store.put(b"g", page(9, 3000))  # the store still owns and writes its directory


def test_compressed_pages_verify_and_a_damaged_one_is_named(tmp_path):
    tier = tmp_path / "kv"
    with TieredStore(config(tier, codec="shuffle-zstd")) as store:
        for i, (name, size) in enumerate(SIZES.items()):
            assert store.put(name, page(i, size))
    found = records(tier)
    assert all(r.codec == 2 and r.stored_len < r.raw_len for r in found.values())
    assert report(str(tier), "--verify")["ok"]
    victim = key(b"e")
    flip_payload_byte(tier, found[victim].slot, at=found[victim].stored_len // 2)
    doc = report(str(tier), "--verify", code=1)
    assert problems(doc) == {victim: "checksum mismatch"}
