"""Shared fixtures: small real stores, an injectable clock."""

from __future__ import annotations

import pytest

from kvtier import HostTierConfig, StoreConfig, TieredStore, _fallback


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_store(clock):
    """Build a real store with a small arena; closes every store it built."""
    stores: list[TieredStore] = []

    def build(slots: int = 8, slot_bytes: int = 4096, *, verify: bool = False, **store_kwargs) -> TieredStore:
        host = HostTierConfig(capacity_bytes=slots * slot_bytes, slot_bytes=slot_bytes,
                              prefault=False, verify_checksums=verify)
        store = TieredStore(StoreConfig(host=host, **store_kwargs), clock=clock)
        stores.append(store)
        return store

    yield build
    for store in stores:
        store.close()


@pytest.fixture
def stores():
    """Build real stores from full configs (real clock); closes them all, newest first."""
    opened: list[TieredStore] = []

    def build(config: StoreConfig) -> TieredStore:
        store = TieredStore(config)
        opened.append(store)
        return store
    yield build
    for store in reversed(opened):
        store.close()


def page(seed: int, nbytes: int = 4096) -> bytes:
    """A deterministic page whose every 8-byte word names its seed (torn pages are visible)."""
    word = seed.to_bytes(8, "little")
    return (word * (nbytes // 8 + 1))[:nbytes]


# -- the two byte backends, for tests that run against both ------------------------------------
try:
    from kvtier import _native
except ImportError as exc:  # extension not built: only the Python backend is tested
    _native = None
    _NATIVE_ERROR = str(exc)
else:
    _NATIVE_ERROR = ""

needs_native = pytest.mark.skipif(
    _native is None, reason=f"kvtier._native not built ({_NATIVE_ERROR})"
)
IMPLS = [  # the compiled core and its pure-Python twin
    pytest.param(_native, id="native", marks=needs_native),
    pytest.param(_fallback, id="python"),
]
parametrize_impl = pytest.mark.parametrize("impl", IMPLS)


# -- real redis-server processes (tests/redisd.py) ----------------------------------------------
# redisd is imported inside the fixtures, so the suite still collects without redis-py and
# tests that use them skip when redis-server is not installed.
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "redis: starts real redis-server processes")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One plain redis-server (no auth, no TLS) for the whole session."""
    from redisd import RedisServer

    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server) -> str:
    """The session server's url, emptied (FLUSHALL) and running again if a test stopped it."""
    if redis_server.paused:
        redis_server.resume()
    if not redis_server.running:
        redis_server.restart()
    with redis_server.client() as client:
        client.flushall()
    return redis_server.url


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """Three cluster masters (no replicas) for the whole session."""
    from redisd import RedisCluster3

    with RedisCluster3(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster
