"""Metadata benchmark: the store's fixed cost per operation, independent of page size."""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..config import HostTierConfig, StoreConfig
from ..keys import Namespace
from ..store import TieredStore

PREFIX_KEYS = 512  # a 128K-token prefix at 256-token pages (DESIGN.md §7)


@dataclass(frozen=True, slots=True)
class MetadataResult:
    """Single-thread figures on tiny (64-byte) pages, so no copy cost hides the bookkeeping."""

    contains_ops_s: float        # contains() of a present BlockKey
    put_ops_s: float             # put() at a full tier: every put evicts one block
    get_into_ops_s: float        # get_into() hits
    lookup_prefix_us: float      # lookup_prefix() over PREFIX_KEYS keys, all present
    lookup_prefix_keys: int = PREFIX_KEYS


def _rate(fn, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - start)


def run_metadata_bench(ops: int = 100_000) -> MetadataResult:
    """Measure with ``ops`` calls per figure (``ops // 50`` lookups of 512 keys)."""
    slots = 2 * PREFIX_KEYS
    config = StoreConfig(host=HostTierConfig(capacity_bytes=slots * 4096, slot_bytes=4096))
    keys = Namespace(model="kvtier-bench").prefix_keys(range(2 * slots * 16), 16)
    value, out = bytearray(64), bytearray(64)
    with TieredStore(config) as store:
        for key in keys:
            store.put(key, value)
        put = _rate(lambda i: store.put(keys[i % len(keys)], value), ops)
        resident = [k for k in keys if store.contains(k)]
        prefix = resident[:PREFIX_KEYS]
        contains = _rate(lambda i: store.contains(resident[i % len(resident)]), ops)
        get_into = _rate(lambda i: store.get_into(resident[i % len(resident)], out), ops)
        lookups = max(1, ops // 50)
        lookup_s = 1 / _rate(lambda i: store.lookup_prefix(prefix), lookups)
        assert store.lookup_prefix(prefix) == PREFIX_KEYS
    return MetadataResult(contains, put, get_into, lookup_s * 1e6)
