"""Where the Redis tier's read time goes: GET throughput of the same pages through four paths,
interleaved in one process (docs/BENCHMARKS.md, "Remote tier on Redis", "Where the read gap is").

    python scripts/redis_read_ab.py redis://127.0.0.1:38019/3 [page KiB, default 256] [trials, default 6]

* ``tier``: ``RemoteTier.get_many`` into caller buffers of values ``put_many`` wrote (header and
  page sent as two buffers);
* ``raw_tier_written``: a raw client (configured as the tier's) GETting those same values;
* ``raw_one_buffer``: the same value bytes written by the raw client as one buffer, then GET;
* ``raw``: plain pages written and read by the raw client (the benchmark's ceiling).

Each trial rewrites 64 MiB of pages then times reading them back; medians after a warm-up.
Uses keys under ``kvtier-ab:`` in the given database and deletes them at the end.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

from kvtier import native
from kvtier.bench.remote import raw_client
from kvtier.config import RemoteTierConfig
from kvtier.keys import Namespace
from kvtier.tiers.remote import RemoteTier

BATCH, TOTAL = 16, 64 << 20


def main(url: str, page_kib: int = 256, trials: int = 6) -> None:
    size = page_kib << 10
    config = RemoteTierConfig(url=url, codec="none", write_mode="sync", key_prefix="kvtier-ab:")
    tier, raw = RemoteTier(config), raw_client(config)
    count = TOTAL // size
    keys = [Namespace(model="ab").key_for_bytes(b"%d" % i) for i in range(count)]
    names = [b"kvtier-ab:raw%d" % i for i in range(count)]
    pages = [os.urandom(size) for _ in range(BATCH)]
    views = [memoryview(p) for p in pages]
    joined = [bytes(tier.encode(k, v, None)) for k, v in zip(keys, views)]
    outs = [memoryview(native.alloc_bytearray(size)) for _ in range(BATCH)]

    def raw_set(values):
        for i in range(0, count, BATCH):
            pipe = raw.pipeline(transaction=False)
            for name, value in zip(names[i:i + BATCH], values):
                pipe.set(name, value)
            pipe.execute()

    def raw_get(wanted):
        start = time.perf_counter()
        for i in range(0, count, BATCH):
            pipe = raw.pipeline(transaction=False)
            for name in wanted[i:i + BATCH]:
                pipe.get(name)
            pipe.execute()
        return time.perf_counter() - start

    def tier_put():
        for i in range(0, count, BATCH):
            tier.put_many(keys[i:i + BATCH], views, None)

    def tier_read():
        tier_put()
        start = time.perf_counter()
        for i in range(0, count, BATCH):
            tier.get_many(keys[i:i + BATCH], outs)
        return time.perf_counter() - start

    def raw_tier_written():
        tier_put()
        return raw_get([tier.redis_key(k) for k in keys])

    def raw_one_buffer():
        raw_set(joined)
        return raw_get(names)

    def plain():
        raw_set(pages)
        return raw_get(names)

    paths = {"tier": tier_read, "raw_tier_written": raw_tier_written,
             "raw_one_buffer": raw_one_buffer, "raw": plain}
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    try:
        for _ in range(trials):
            for name, run in paths.items():
                seconds[name].append(run())
    finally:
        tier.delete(keys)
        raw.delete(*names)
        tier.close()
    for name, values in seconds.items():
        print(f"{name:>17}: {TOTAL / statistics.median(values[1:]) / 1e6:8.1f} MB/s")


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:4]))
