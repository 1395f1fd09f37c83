"""The Redis tier when things go wrong, on real redis-server processes: the server killed with
SIGKILL in the middle of batches, paused with SIGSTOP past the deadlines, restarted; AUTH/ACL
and TLS; a three-master Cluster; the circuit breaker on its own."""

from __future__ import annotations

import threading
import time

import pytest

from conftest import page
from kvtier import MissReason, Namespace, StoreConfig, TieredStore
from kvtier.config import RemoteTierConfig
from kvtier.errors import RemoteAuthError
from kvtier.tiers.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from test_remote import SLOT, remote_config, tokens

pytestmark = pytest.mark.redis
NS = Namespace(model="test/faults")
FAST = dict(timeout_s=0.25, connect_timeout_s=0.25, breaker_failures=2, breaker_backoff_s=0.2,
            breaker_max_backoff_s=0.4)


@pytest.fixture
def server(tmp_path):
    from redisd import RedisServer

    with RedisServer(tmp_path / "redis") as srv:  # started by the context manager
        yield srv


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.mark.parametrize("write_mode", ["sync", "async"])
def test_sigkill_mid_batch_then_restart(server, write_mode):
    keys = NS.prefix_keys(tokens(64, seed=11), 16)
    pages = [page(i, SLOT) for i in range(64)]
    cfg = remote_config(server.url, host_slots=16, write_mode=write_mode, **FAST)
    errors: list[BaseException] = []
    wrong: list[int] = []
    stop = threading.Event()
    with TieredStore(cfg) as store:
        assert all(store.batch_put(keys[:4], pages[:4], pin=True))  # local hits throughout
        store.flush()

        def traffic() -> None:
            i = 0
            while not stop.is_set():
                try:
                    batch = list(range(8 + (i % 7) * 8, 16 + (i % 7) * 8))
                    store.batch_put([keys[j] for j in batch], [pages[j] for j in batch])
                    for j, got in zip(batch, store.batch_get([keys[j] for j in batch])):
                        if got is not None and bytes(got) != pages[j]:
                            wrong.append(j)
                except BaseException as exc:  # noqa: BLE001 - the assertion is that none escape
                    errors.append(exc)
                i += 1

        workers = [threading.Thread(target=traffic, daemon=True) for _ in range(2)]
        for worker in workers:
            worker.start()
        try:
            time.sleep(0.3)
            server.kill()
            time.sleep(0.6)
            local = store.batch_get(keys[:4])  # local tiers keep serving while Redis is dead
            assert [None if v is None else bytes(v) for v in local] == pages[:4]
            assert store.lookup_prefix(keys) >= 4
            server.restart()
            time.sleep(0.5)
        finally:
            stop.set()
            for worker in workers:
                worker.join(30)
        assert not errors and not wrong
        assert store.stats().misses.get("tier_unavailable", 0) > 0
        # recovered: the breaker half-opens by itself, and new pages reach Redis again
        fresh = NS.prefix_keys(tokens(2, seed=12), 16)
        assert wait_until(lambda: store.batch_put(fresh, [page(90, SLOT), page(91, SLOT)]) == [True, True]
                          and (store.flush() or True)
                          and server.client().exists(*[b"kvtier:" + k.hex().encode() for k in fresh]) == 2)
        assert store.stats().tier("remote").extra["breaker"] == CLOSED
    with TieredStore(remote_config(server.url)) as other:
        assert [bytes(v) for v in other.batch_get(fresh)] == [page(90, SLOT), page(91, SLOT)]


def test_sigstop_costs_a_caller_at_most_the_deadline_then_nothing(server):
    keys = [NS.key_for_bytes(b"p%d" % i) for i in range(4)]
    writer = TieredStore(remote_config(server.url))
    writer.batch_put(keys, [page(i, SLOT) for i in range(4)])
    writer.close()
    with TieredStore(remote_config(server.url, **FAST)) as store:
        server.pause()
        try:
            started = time.monotonic()
            assert store.get(keys[0]) is None
            first = time.monotonic() - started
            assert first < 0.25 * 2 + 0.5  # one socket deadline (plus scheduling slack)
            assert store.get(keys[1]) is None  # second failure: the breaker opens
            started = time.monotonic()
            assert store.batch_get(keys) == [None] * 4
            assert store.lookup_prefix(keys) == 0
            assert time.monotonic() - started < 0.1  # open breaker: no wait at all
            assert store.miss_reason(keys[0]) == MissReason.TIER_UNAVAILABLE
            assert store.stats().misses == {"tier_unavailable": 6}
            assert store.stats().tier("remote").extra["breaker"] in (OPEN, HALF_OPEN)
        finally:
            server.resume()
        assert wait_until(lambda: store.get(keys[2]) is not None)
        assert bytes(store.get(keys[3])) == page(3, SLOT)


def test_unreachable_at_start_serves_locally_and_connects_later(tmp_path):
    from redisd import RedisServer

    srv = RedisServer(tmp_path / "late")
    key = NS.key_for_bytes(b"late")
    with TieredStore(remote_config(srv.url, **FAST)) as store:
        assert store.put(key, page(1, SLOT))  # the host tier took it; Redis is not there
        assert bytes(store.get(key)) == page(1, SLOT)
        with srv:  # starts it
            assert wait_until(lambda: store.put(key, page(2, SLOT)) and srv.client().exists(
                b"kvtier:" + key.hex().encode()) == 1)


def test_auth_required_wrong_password_and_acl_user(tmp_path):
    from redisd import RedisServer

    with RedisServer(tmp_path / "auth", password="right-pw") as srv:
        with pytest.raises(RemoteAuthError, match="no password"):
            TieredStore(remote_config(srv.url))
        with pytest.raises(RemoteAuthError, match="refused kvtier"):
            TieredStore(remote_config(srv.url, password="wrong-pw"))
        with TieredStore(remote_config(srv.url, password="right-pw")) as store:
            store.put(NS.key_for_bytes(b"k"), page(1, SLOT))
        with TieredStore(remote_config(srv.url.replace("://", "://:right-pw@"))) as store:
            assert bytes(store.get(NS.key_for_bytes(b"k"))) == page(1, SLOT)
    with RedisServer(tmp_path / "acl", users={"kv": "kv-pw"}) as srv:
        with pytest.raises(RemoteAuthError, match="user 'kv'"):
            TieredStore(remote_config(srv.url, username="kv", password="nope"))
        with TieredStore(remote_config(srv.url, username="kv", password="kv-pw")) as store:
            assert store.put(NS.key_for_bytes(b"k"), page(2, SLOT))
            assert store.stats().tier("remote").bytes_in == SLOT


def test_tls_with_a_self_signed_certificate(tmp_path):
    from redisd import RedisServer, tls_supported

    if not tls_supported():
        pytest.skip("this redis-server was built without TLS")
    with RedisServer(tmp_path / "tls", tls=True, password="pw") as srv:
        assert srv.url.startswith("rediss://")
        cfg = remote_config(srv.url, password="pw", tls_ca_certs=str(srv.ca_cert))
        keys = NS.prefix_keys(tokens(3, seed=13), 16)
        with TieredStore(cfg) as store:
            assert all(store.batch_put(keys, [page(i, SLOT) for i in range(3)]))
        with TieredStore(cfg) as store:
            assert [bytes(v) for v in store.batch_get(keys)] == [page(i, SLOT) for i in range(3)]
        # a client that does not trust the certificate gets nothing (and no exception)
        with TieredStore(remote_config(srv.url, password="pw", **FAST)) as untrusting:
            assert untrusting.get(keys[0]) is None
            assert untrusting.stats().misses == {"tier_unavailable": 1}


def test_cluster_with_three_masters(redis_cluster):
    keys = NS.prefix_keys(tokens(48, seed=14), 16)
    pages = [page(i, SLOT) for i in range(48)]
    cfg = remote_config(redis_cluster.url, cluster=True, write_mode="async")
    with TieredStore(cfg) as writer:
        assert all(writer.batch_put(keys, pages))
        writer.flush()
    client = redis_cluster.client()
    owners = {client.keyslot(b"kvtier:" + k.hex().encode()) * 3 // 16384 for k in keys}
    assert len(owners) == 3  # the pages are spread over all three masters
    with TieredStore(remote_config(redis_cluster.url, cluster=True)) as reader:
        assert reader.lookup_prefix(keys) == 48
        got = reader.batch_get(keys)
        assert [bytes(v) for v in got] == pages
        assert not any(v.readonly for v in got)  # a cluster's replies are bytes: copied out
        assert reader.evict(keys[0]) and reader.lookup_prefix(keys) == 0


def test_circuit_breaker_states():
    now = [0.0]
    breaker = CircuitBreaker(3, 1.0, 4.0, clock=lambda: now[0])
    for _ in range(2):
        assert breaker.allow()
        breaker.failed()
    assert breaker.state == CLOSED
    assert breaker.allow()
    breaker.failed()
    assert breaker.state == OPEN and not breaker.allow()
    now[0] = 1.0
    assert breaker.state == HALF_OPEN
    assert breaker.allow() and not breaker.allow()  # exactly one trial call
    breaker.failed()  # trial failed: open twice as long
    now[0] = 2.9
    assert not breaker.allow()
    now[0] = 3.0
    assert breaker.allow()
    breaker.failed()
    now[0] = 3.0 + 4.0  # capped at max_backoff_s
    assert breaker.allow()
    breaker.succeeded()
    assert breaker.state == CLOSED and breaker.allow() and breaker.opened == 3


def test_store_config_rejects_a_non_remote_section():
    with pytest.raises(Exception, match="RemoteTierConfig"):
        StoreConfig(remote={"url": "redis://127.0.0.1:1"})
    assert RemoteTierConfig(url="redis://127.0.0.1:1").codec == "none"
