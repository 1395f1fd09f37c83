"""The real-redis helper (tests/redisd.py) starts, authenticates, encrypts, dies and recovers."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

import redisd
from redisd import RedisServer, no_retry, redis, tls_supported

pytestmark = pytest.mark.redis


def test_plain_round_trip(redis_url: str, redis_server: RedisServer) -> None:
    assert redis_url == redis_server.url and redis_url.startswith("redis://127.0.0.1:")
    with redis.Redis.from_url(redis_url) as client:
        assert client.ping()
        client.set("k", b"v")
        assert client.get("k") == b"v"


def test_redis_url_starts_empty(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0


def test_password_required(tmp_path: Path) -> None:
    with RedisServer(tmp_path, password="s3cret") as server:
        assert "s3cret" not in server.url
        with redis.Redis.from_url(server.url, retry=no_retry()) as anonymous:
            with pytest.raises(redis.AuthenticationError):
                anonymous.get("k")
        with server.client() as client:
            assert client.set("k", "v")


def test_acl_user(tmp_path: Path) -> None:
    with RedisServer(tmp_path, users={"alice": "wonder land"}) as server:
        with server.client() as client:
            assert client.acl_whoami() == "alice"
            client.set("k", "v")
        with redis.Redis(host=server.host, port=server.port, username="alice",
                         password="wrong", retry=no_retry()) as bad:
            with pytest.raises(redis.AuthenticationError):
                bad.ping()
        with redis.Redis.from_url(server.url, retry=no_retry()) as anonymous:  # default user is off
            with pytest.raises(redis.AuthenticationError):
                anonymous.ping()


def test_tls_round_trip(tmp_path: Path) -> None:
    redisd.redis_server_binary()  # skips when redis-server is missing
    if not tls_supported():
        pytest.skip("this redis-server cannot serve TLS (built without OpenSSL, or no openssl CLI)")
    with RedisServer(tmp_path, tls=True) as server:
        assert server.url.startswith("rediss://127.0.0.1:") and server.ca_cert is not None
        with redis.Redis.from_url(server.url, ssl_ca_certs=str(server.ca_cert)) as client:
            client.set("k", "v")
            assert client.get("k") == b"v"
        with redis.Redis.from_url(server.url, retry=no_retry()) as untrusting:  # system CAs only
            with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
                untrusting.ping()


def test_kill_then_restart_same_port(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as server:
        port, pid = server.port, server.pid
        server.kill()
        assert not server.running
        with pytest.raises(redis.ConnectionError):
            server.client(socket_connect_timeout=0.5).ping()
        server.restart()
        assert (server.port, server.running) == (port, True) and server.pid != pid
        with server.client() as client:
            assert client.ping() and client.dbsize() == 0  # no persistence
    assert not server.running


def test_pause_times_out_and_resume_recovers(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as server, server.client(socket_timeout=0.2) as client:
        assert client.ping()
        server.pause()
        with pytest.raises(redis.TimeoutError):
            client.ping()
        server.resume()
        assert client.ping()


def test_port_race_retries_on_another_port(tmp_path: Path, monkeypatch) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        picks = iter([taken])  # the first pick is already taken, later ones are real
        real = redisd.free_port
        monkeypatch.setattr(redisd, "free_port", lambda **kw: next(picks, 0) or real(**kw))
        with RedisServer(tmp_path) as server:
            assert server.port != taken and server.client().ping()
        with pytest.raises(RuntimeError, match="already in use"):
            RedisServer(tmp_path, port=taken).start()  # a fixed port is not moved


def test_close_is_idempotent(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.close()  # never started
    server.start()
    server.close()
    server.close()
    assert not server.running


def test_cluster_spreads_keys(redis_cluster) -> None:
    with redis_cluster.client() as client:
        keys = [f"key-{i}" for i in range(20)]
        for key in keys:
            client.set(key, key.upper())
        assert [client.get(k) for k in keys] == [k.upper().encode() for k in keys]
        owners = {client.get_node_from_key(k).port for k in keys}
    assert owners == {node.port for node in redis_cluster.nodes}
