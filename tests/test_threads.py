"""Concurrency: many threads on overlapping keys never see a torn page; counters add up."""

from __future__ import annotations

import threading

import numpy as np

from kvtier import HostTierConfig, StoreConfig, TieredStore

PAGE = 64 * 1024
KEYS = [b"key-%d" % i for i in range(12)]


def _page(key_index: int, version: int) -> bytes:
    word = (key_index << 32 | version).to_bytes(8, "little")
    return word * (PAGE // 8)


def _check_untorn(buf, key_index: int) -> None:
    words = np.frombuffer(buf, dtype=np.uint64)
    assert (words == words[0]).all(), "torn page: mixed versions in one read"
    assert int(words[0]) >> 32 == key_index, "page of another key"


def test_eight_threads_hammering_overlapping_keys():
    # Fewer slots than keys: constant eviction while readers copy out.
    host = HostTierConfig(capacity_bytes=8 * PAGE, slot_bytes=PAGE, prefault=False)
    store = TieredStore(StoreConfig(host=host))
    ops_per_thread = 400
    errors: list[BaseException] = []
    hits = [0] * 8
    puts_ok = [0] * 8

    def worker(tid: int) -> None:
        rng = np.random.default_rng(tid)
        out = bytearray(PAGE)
        try:
            for i in range(ops_per_thread):
                k = int(rng.integers(len(KEYS)))
                op = rng.random()
                if op < 0.4:
                    puts_ok[tid] += store.put(KEYS[k], _page(k, tid * ops_per_thread + i))
                elif op < 0.7:
                    got = store.get(KEYS[k])
                    if got is not None:
                        hits[tid] += 1
                        _check_untorn(got, k)
                elif op < 0.95:
                    if store.get_into(KEYS[k], out):
                        hits[tid] += 1
                        _check_untorn(out, k)
                else:
                    store.evict(KEYS[k])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    stats = store.stats()
    host = stats.tier("host")
    assert stats.hits == sum(hits) == host.hits
    assert stats.gets == stats.hits + stats.miss_count
    assert stats.puts - stats.puts_rejected == sum(puts_ok)
    assert host.slots_used == host.entries <= host.slots_total
    # Every surviving block is intact.
    for k, key in enumerate(KEYS):
        got = store.get(key)
        if got is not None:
            _check_untorn(got, k)
    store.close()
