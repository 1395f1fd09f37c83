"""The shared Redis tier through the store, on real redis-server processes (tests/redisd.py):
round trips, batches, prefixes, TTL windows as Redis expiry, fail-closed reads of corrupt or
foreign values, tenant isolation, and sharing between two processes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import page
from kvtier import HostTierConfig, MissReason, Namespace, StoreConfig, TieredStore
from kvtier.config import RemoteTierConfig
from kvtier.errors import BufferSizeError, ConfigError
from kvtier.tiers.remote import VALUE_PREFIX, ValueParts, command_packer
from redis.connection import Encoder, PythonRespSerializer

pytestmark = pytest.mark.redis
SLOT = 16384
NS = Namespace(model="test/remote", dtype="bfloat16", layout="t16")


def remote_config(url: str, *, host_slots: int = 4, slot_bytes: int = SLOT, store_ttl_s=None,
                  ttl_refresh: str = "write", **remote) -> StoreConfig:
    remote.setdefault("write_mode", "sync")
    return StoreConfig(
        host=HostTierConfig(capacity_bytes=host_slots * slot_bytes, slot_bytes=slot_bytes, prefault=False),
        remote=RemoteTierConfig(url=url, **remote), ttl_s=store_ttl_s, ttl_refresh=ttl_refresh)


def tokens(n_pages: int, seed: int = 0) -> list[int]:
    return [(seed * 7919 + i) % 50000 for i in range(16 * n_pages)]




def test_round_trip_through_a_second_store(redis_url, stores):
    keys = NS.prefix_keys(tokens(12), 16)
    pages = [os.urandom(SLOT - i) for i in range(12)]
    writer = stores(remote_config(redis_url))
    assert writer.batch_put(keys, pages) == [True] * 12  # host holds 4; Redis takes them all
    reader = stores(remote_config(redis_url))  # an empty host tier: everything comes from Redis
    assert reader.lookup_prefix(keys) == 12
    got = reader.batch_get(keys)
    assert [bytes(v) for v in got] == pages and not any(v.readonly for v in got)
    stats = reader.stats()
    assert stats.hits == 12 and stats.tier("remote").hits == 12
    assert stats.tier("host").entries == 4  # promoted as far as the host tier has room
    out = bytearray(SLOT)
    assert reader.get_into(keys[0], out) and bytes(out) == pages[0]


def test_a_value_sent_in_parts_is_the_same_command_on_the_wire():
    """put_many sends header and page as two buffers of one value: the bytes on the wire must
    equal redis-py's packing of the joined value (else Redis would store something else)."""
    head, body = bytearray(b"h" * VALUE_PREFIX), memoryview(os.urandom(70000))
    plain = PythonRespSerializer(6000, Encoder("utf-8", "strict", False).encode)
    ours = command_packer()
    for args in (("SET", b"kvtier:ab", None, "PX", 1500), ("SET", b"k", None)):
        wire = b"".join(bytes(c) for c in ours.pack(*[ValueParts(head, body) if a is None else a for a in args]))
        joined = b"".join(bytes(c) for c in plain.pack(*[bytes(head) + bytes(body) if a is None else a for a in args]))
        assert wire == joined
    chunks = ours.pack("SET", b"k", ValueParts(head, body))
    assert any(c is body for c in chunks)  # the page itself, not a copy
    assert b"".join(bytes(c) for c in ours.pack("GET", b"k")) == b"".join(plain.pack("GET", b"k"))


def test_async_writes_are_batched_and_flushed(redis_url, stores):
    keys = NS.prefix_keys(tokens(40, seed=1), 16)
    pages = [page(i, SLOT) for i in range(40)]
    writer = stores(remote_config(redis_url, write_mode="async"))
    for key, value in zip(keys, pages):
        assert writer.put(key, value)
    writer.flush()  # waits for the queued Redis writes
    route = writer.stats().routes["host->remote"]
    assert route.bytes >= 40 * SLOT and route.ops == 40
    reader = stores(remote_config(redis_url))
    assert [bytes(v) for v in reader.batch_get(keys)] == pages
    assert writer.stats().tier("remote").extra["round_trips"] < 40  # pipelined, not one per page


def test_lookup_prefix_spans_local_and_remote_and_stops_at_a_gap(redis_url, stores):
    keys = NS.prefix_keys(tokens(10, seed=2), 16)
    store = stores(remote_config(redis_url, host_slots=8))
    store.batch_put(keys[:6], [page(i, SLOT) for i in range(6)])
    store.batch_put(keys[7:], [page(i, SLOT) for i in range(7, 10)])
    assert store.lookup_prefix(keys) == 6
    store.put(keys[6], page(6, SLOT))
    assert store.lookup_prefix(keys) == 10
    other = stores(remote_config(redis_url))
    assert other.lookup_prefix(keys) == 10
    assert other.contains(keys[9]) and not other.contains(NS.key_for_bytes(b"absent"))


def test_codec_round_trip_and_wrong_sized_buffer(redis_url, stores):
    from kvtier.kvdata import kv_pages

    pages = [bytes(p) for p in kv_pages("bfloat16")]
    keys = [NS.key_for_bytes(b"kv%d" % i) for i in range(len(pages))]
    size = len(pages[0])
    writer = stores(remote_config(redis_url, slot_bytes=size, codec="shuffle-zstd"))
    assert all(writer.batch_put(keys, pages))
    with redis_server_client(redis_url) as client:
        stored = sum(client.strlen(k) for k in client.keys("kvtier:*"))
    assert stored < sum(map(len, pages))  # compressed in Redis
    reader = stores(remote_config(redis_url, slot_bytes=size))
    with pytest.raises(BufferSizeError):
        reader.get_into(keys[0], bytearray(size - 2))
    assert [bytes(v) for v in reader.batch_get(keys)] == pages


def redis_server_client(url: str):
    import redis

    return redis.Redis.from_url(url)


@pytest.mark.parametrize("damage", ["flip_payload", "flip_header", "truncate", "foreign", "garbage"])
def test_corrupt_or_foreign_values_are_misses_never_wrong_bytes(redis_url, stores, damage):
    keys = [NS.key_for_bytes(b"a"), NS.key_for_bytes(b"b")]
    writer = stores(remote_config(redis_url))
    writer.batch_put(keys, [page(1, SLOT), page(2, SLOT)])
    with redis_server_client(redis_url) as client:
        name = b"kvtier:" + keys[0].hex().encode()
        value = bytearray(client.get(name))
        if damage == "flip_payload":
            value[VALUE_PREFIX + 100] ^= 0x01
        elif damage == "flip_header":
            value[20] ^= 0x01
        elif damage == "truncate":
            value = value[:-1]
        elif damage == "foreign":  # b's (valid) value stored under a's name
            value = bytearray(client.get(b"kvtier:" + keys[1].hex().encode()))
        else:
            value = bytearray(b"not a kvtier page")
        client.set(name, bytes(value))
    reader = stores(remote_config(redis_url))
    out = bytearray(b"\xee" * SLOT)
    assert not reader.get_into(keys[0], out)
    if damage != "flip_payload":  # a value that is not this page's never reaches the buffer
        assert out == b"\xee" * SLOT
    # (a payload under an intact header is read into the buffer, then fails its checksum:
    # get_into's bytes count only on True)
    assert reader.stats().misses == {"corrupt": 1}
    assert reader.miss_reason(keys[0]) == MissReason.CORRUPT
    with redis_server_client(redis_url) as client:
        assert not client.exists(name)  # deleted: the next reader does not pay for it again
    assert bytes(reader.get(keys[1])) == page(2, SLOT)


def test_ttl_window_is_redis_expiry(redis_url, stores):
    keys = NS.prefix_keys(tokens(3, seed=3), 16)
    store = stores(remote_config(redis_url, host_slots=1, store_ttl_s=0.4))
    store.batch_put(keys, [page(i, SLOT) for i in range(3)])
    with redis_server_client(redis_url) as client:
        ttl = client.pttl(b"kvtier:" + keys[2].hex().encode())
    assert 0 < ttl <= 400
    time.sleep(0.6)
    assert store.get(keys[2]) is None
    assert store.stats().misses == {"expired": 1}  # this process knows it wrote a 0.4 s window
    fresh = stores(remote_config(redis_url))
    assert fresh.get(keys[2]) is None and fresh.stats().misses == {"never_stored": 1}


def test_a_promoted_copy_expires_with_the_redis_copy_and_unwindowed_reads_take_one_round_trip(
        redis_url, stores):
    windowed, plain = NS.key_for_bytes(b"windowed"), NS.key_for_bytes(b"plain")
    writer = stores(remote_config(redis_url))
    writer.put(windowed, page(7, SLOT), ttl_s=60)
    writer.put(plain, page(8, SLOT))
    with redis_server_client(redis_url) as client:
        client.pexpire(b"kvtier:" + windowed.hex().encode(), 400)  # as if 59.6 s had passed
    reader = stores(remote_config(redis_url))
    remote = reader._remote
    before = remote.round_trips
    assert bytes(reader.get(plain)) == page(8, SLOT)
    assert remote.round_trips == before + 1  # GET only: no window, no PTTL
    assert bytes(reader.get(windowed)) == page(7, SLOT)
    assert remote.round_trips == before + 3  # GET, then PTTL of the windowed page
    assert reader.stats().tier("host").entries == 2  # both promoted
    time.sleep(0.6)
    assert reader.get(windowed) is None  # the host copy lived only as long as Redis's (0.4 s), not 60 s
    assert bytes(reader.get(plain)) == page(8, SLOT)


def test_read_refresh_extends_the_redis_window_and_remote_ttl_overrides(redis_url, stores):
    key = NS.key_for_bytes(b"refresh")
    name = b"kvtier:" + key.hex().encode()
    store = stores(remote_config(redis_url, ttl_refresh="read"))
    store.put(key, page(5, SLOT), ttl_s=60)
    with redis_server_client(redis_url) as client:
        assert 59_000 < client.pttl(name) <= 60_000
        client.pexpire(name, 2000)  # as if 58 s had passed
        reader = stores(remote_config(redis_url, ttl_refresh="read"))
        assert bytes(reader.get(key)) == page(5, SLOT)
        deadline = time.monotonic() + 5
        while client.pttl(name) < 50_000 and time.monotonic() < deadline:
            time.sleep(0.02)  # the refresh is a background PEXPIRE of the page's own window
        assert client.pttl(name) > 50_000
        longer = stores(remote_config(redis_url, ttl_s=3600.0))  # the shared tier's own window
        longer.put(key, page(6, SLOT), ttl_s=60)
        assert 3_599_000 < client.pttl(name) <= 3_600_000
        assert longer.stats().tier("host").entries == 1


def test_tenants_never_see_each_others_pages_and_keys_hold_no_user_text(redis_url, stores):
    alice = Namespace(model="test/remote", tenant_salt=b"alice-secret")
    bob = Namespace(model="test/remote", tenant_salt=b"bob-secret")
    ids = tokens(4, seed=4)
    store = stores(remote_config(redis_url, key_prefix="fleet1:"))
    store.batch_put(alice.prefix_keys(ids, 16), [page(i, SLOT) for i in range(4)])
    other = stores(remote_config(redis_url, key_prefix="fleet1:"))
    assert other.lookup_prefix(bob.prefix_keys(ids, 16)) == 0
    assert all(v is None for v in other.batch_get(bob.prefix_keys(ids, 16)))
    assert other.lookup_prefix(alice.prefix_keys(ids, 16)) == 4
    with redis_server_client(redis_url) as client:
        names = client.keys("*")
    assert len(names) == 4
    assert all(re.fullmatch(rb"fleet1:[0-9a-f]{64}", n) for n in names)
    assert not any(b"alice" in n or b"test/remote" in n for n in names)


def test_two_processes_share_pages_through_redis(redis_url, stores, tmp_path):
    script = textwrap.dedent(f"""
        import sys, hashlib
        from kvtier import TieredStore, StoreConfig, HostTierConfig, Namespace
        from kvtier.config import RemoteTierConfig
        ns = Namespace(model="test/remote", dtype="bfloat16", layout="t16")
        cfg = StoreConfig(host=HostTierConfig(capacity_bytes={4 * SLOT}, slot_bytes={SLOT}, prefault=False),
                          remote=RemoteTierConfig(url={redis_url!r}))
        ids = [(5 * 7919 + i) % 50000 for i in range(16 * 8)]
        keys = ns.prefix_keys(ids, 16)
        with TieredStore(cfg) as store:
            if sys.argv[1] == "write":
                store.batch_put(keys[:4], [bytes([i]) * {SLOT} for i in range(4)])
            else:
                print(store.lookup_prefix(keys))
                got = store.batch_get(keys)
                print(",".join("-" if v is None else hashlib.sha256(v).hexdigest()[:8] for v in got))
    """)
    run = lambda mode: subprocess.run([sys.executable, "-c", script, mode], capture_output=True,
                                      text=True, timeout=120, check=True).stdout.split()
    run("write")  # a child process writes the first half and exits
    keys = NS.prefix_keys(tokens(8, seed=5), 16)
    store = stores(remote_config(redis_url))
    assert [bytes(v) for v in store.batch_get(keys[:4])] == [bytes([i]) * SLOT for i in range(4)]
    store.batch_put(keys[4:], [bytes([i]) * SLOT for i in range(4, 8)])
    lookup, digests = run("read")  # another child sees both halves
    import hashlib
    assert lookup == "8"
    assert digests.split(",") == [hashlib.sha256(bytes([i]) * SLOT).hexdigest()[:8] for i in range(8)]


def test_evict_removes_the_shared_copy(redis_url, stores):
    key = NS.key_for_bytes(b"gone")
    store = stores(remote_config(redis_url, write_mode="async"))
    store.put(key, page(9, SLOT))
    assert store.evict(key)
    assert store.get(key) is None and store.miss_reason(key) == MissReason.EVICTED
    assert stores(remote_config(redis_url)).get(key) is None


def test_insecure_remote_urls_are_refused():
    with pytest.raises(ConfigError, match="not a loopback address"):
        RemoteTierConfig(url="redis://10.1.2.3:6379")
    with pytest.raises(ConfigError, match="not a loopback address"):
        RemoteTierConfig(url="rediss://cache.internal:6380")
    assert RemoteTierConfig(url="redis://10.1.2.3:6379", allow_insecure=True)
    assert RemoteTierConfig(url="redis://10.1.2.3:6379", password="s3cret")
    assert RemoteTierConfig(url="redis://:s3cret@10.1.2.3:6379").authenticated
    cfg = RemoteTierConfig(url="redis://user:s3cret@10.1.2.3:6379/2")
    assert cfg.redacted_url == "redis://user:***@10.1.2.3:6379/2" and "s3cret" not in repr(cfg)
    assert "s3cret" not in repr(RemoteTierConfig(url="redis://127.0.0.1:1", password="s3cret"))
    for bad in ("http://x", "", "127.0.0.1:6379"):
        with pytest.raises(ConfigError, match="remote.url"):
            RemoteTierConfig(url=bad)
    with pytest.raises(ConfigError, match="write_mode"):
        RemoteTierConfig(url="redis://127.0.0.1:1", write_mode="later")
    with pytest.raises(ConfigError, match="timeout_s"):
        RemoteTierConfig(url="redis://127.0.0.1:1", timeout_s=0)


def test_remote_section_from_env_and_dict():
    cfg = StoreConfig.from_env({"KVTIER_REMOTE_URL": "redis://127.0.0.1:7000", "KVTIER_REMOTE_CLUSTER": "true",
                                "KVTIER_REMOTE_PASSWORD": "pw", "KVTIER_REMOTE_TTL_S": "5m",
                                "KVTIER_REMOTE_MAX_PENDING_BYTES": "64MiB"})
    assert cfg.remote.cluster and cfg.remote.password == "pw" and cfg.remote.ttl_s == 300
    assert cfg.remote.max_pending_bytes == 64 << 20
    cfg = StoreConfig.from_dict({"remote": {"url": "redis://localhost:6379", "key_prefix": "a:"}})
    assert cfg.remote.key_prefix == "a:"
    with pytest.raises(ConfigError, match="remote.nope"):
        StoreConfig.from_dict({"remote": {"url": "redis://localhost:6379", "nope": 1}})


def test_an_acl_user_with_only_the_documented_commands_is_enough(redis_server, redis_url, stores):
    """docs/remote.md lists the commands a kvtier ACL user needs; prove that list suffices."""
    with redis_server.client() as admin:
        admin.execute_command("ACL", "SETUSER", "kvlimited", "on", ">pw", "~kvtier:*", "+get", "+set",
                              "+exists", "+pttl", "+pexpire", "+strlen", "+del", "+ping", "+info")
    try:
        keys = NS.prefix_keys(tokens(3, seed=6), 16)
        cfg = remote_config(redis_url, username="kvlimited", password="pw", store_ttl_s=60,
                            ttl_refresh="read")
        store = stores(cfg)
        assert all(store.batch_put(keys, [page(i, SLOT) for i in range(3)]))
        reader = stores(cfg)
        assert reader.lookup_prefix(keys) == 3 and reader.contains(keys[0])
        assert [bytes(v) for v in reader.batch_get(keys)] == [page(i, SLOT) for i in range(3)]
        assert reader.plan(keys, 1e4).load_blocks == 3
        assert reader.evict(keys[2]) and not reader.contains(keys[2])
        extra = reader.stats().tier("remote").extra
        assert extra["errors"] == 0 and extra["redis_used_memory"] > 0
    finally:
        with redis_server.client() as admin:
            admin.execute_command("ACL", "DELUSER", "kvlimited")


def test_prefetch_brings_remote_pages_into_the_host_tier(redis_url, stores):
    keys = NS.prefix_keys(tokens(4, seed=7), 16)
    stores(remote_config(redis_url)).batch_put(keys, [page(i, SLOT) for i in range(4)])
    reader = stores(remote_config(redis_url, host_slots=8))
    assert reader.prefetch(keys + [NS.key_for_bytes(b"nowhere")]).result(timeout=30) == 4
    stats = reader.stats()
    assert stats.gets == 0 and stats.tier("host").entries == 4  # a prefetch is not a read
    assert [bytes(v) for v in reader.batch_get(keys)] == [page(i, SLOT) for i in range(4)]
    assert reader.stats().tier("remote").hits == 4  # the reads themselves were host hits


def test_disk_and_remote_together(redis_url, stores, tmp_path):
    from kvtier.config import DiskTierConfig

    def cfg(disk_dir):
        base = remote_config(redis_url, host_slots=2)
        disk = DiskTierConfig(paths=[str(disk_dir)], capacity_bytes=64 * SLOT, fsync="never",
                              min_free_bytes=0, codec="none")
        return StoreConfig(host=base.host, disk=disk, remote=base.remote)
    keys = NS.prefix_keys(tokens(6, seed=8), 16)
    pages = [page(i, SLOT) for i in range(6)]
    with TieredStore(cfg(tmp_path / "a")) as store:
        for key, value in zip(keys, pages):
            assert store.put(key, value)
        assert store.stats().tier("disk").entries >= 4  # the host tier demoted to disk
    with TieredStore(cfg(tmp_path / "a")) as store:  # same disk: served locally
        assert [bytes(v) for v in store.batch_get(keys)] == pages
        assert store.stats().tier("remote").hits == 0
    with redis_server_client(redis_url) as client:
        client.delete(b"kvtier:" + keys[0].hex().encode())
    with TieredStore(cfg(tmp_path / "b")) as store:  # a new host: only Redis has them
        assert store.lookup_prefix(keys) == 0  # the first page is gone everywhere
        assert store.get(keys[0]) is None and store.stats().misses == {"never_stored": 1}
        assert [bytes(v) for v in store.batch_get(keys[1:])] == pages[1:]
        assert store.stats().tier("remote").hits == 5
