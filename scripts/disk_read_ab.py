"""Cold disk-tier reads into buffers O_DIRECT can use (4096-aligned) and into buffers it cannot
(64 bytes off, as a torch CPU tensor is), interleaved in one process (docs/ARCHITECTURE.md,
"Buffers O_DIRECT cannot use").

    python scripts/disk_read_ab.py [DIR, default a temp dir] [page KiB, default 256] [trials, default 6]

64 MiB of pages are written once through a host + disk store (``write_through``, codec none);
each trial reopens the store, drops the page cache of its files and times ``batch_get_into`` of
every page, 128 per call, into one of the two buffer kinds (alternating which goes first), then
compares the bytes. Prints the median MB/s of each kind.
"""

from __future__ import annotations

import mmap
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from kvtier.bench.peer_runner import drop_page_cache
from kvtier.config import DiskTierConfig, HostTierConfig, StoreConfig
from kvtier.keys import Namespace
from kvtier.store import TieredStore

TOTAL, BATCH = 64 << 20, 128


def main(directory: str | None = None, page_kib: int = 256, trials: int = 6) -> None:
    size = page_kib << 10
    count = TOTAL // size
    root = Path(directory or tempfile.mkdtemp(prefix="kvtier-read-ab-")) / "store"
    shutil.rmtree(root, ignore_errors=True)
    config = StoreConfig(
        host=HostTierConfig(capacity_bytes=count * size, slot_bytes=size),
        disk=DiskTierConfig(paths=(str(root),), capacity_bytes=count * size, min_free_bytes=0,
                            write_mode="write_through", codec="none", promote_on_read=False))
    keys = [Namespace(model="read-ab").key_for_bytes(b"%d" % i) for i in range(count)]
    pages = np.random.default_rng(0).integers(0, 256, (count, size), dtype=np.uint8)
    memory = mmap.mmap(-1, count * size + 4096)
    outs = {"aligned": np.frombuffer(memory, np.uint8, count * size).reshape(count, size),
            "unaligned": np.frombuffer(memory, np.uint8, count * size, offset=64).reshape(count, size)}
    with TieredStore(config) as store:
        for i in range(0, count, BATCH):
            assert all(store.batch_put(keys[i:i + BATCH], list(pages[i:i + BATCH])))
    rates: dict[str, list[float]] = {name: [] for name in outs}
    try:
        for trial in range(trials):
            for name in sorted(outs, reverse=trial % 2 == 1):
                with TieredStore(config) as store:
                    drop_page_cache(root)
                    start = time.perf_counter()
                    for i in range(0, count, BATCH):
                        assert all(store.batch_get_into(keys[i:i + BATCH], list(outs[name][i:i + BATCH])))
                    rates[name].append(count * size / (time.perf_counter() - start) / 1e6)
                assert np.array_equal(outs[name], pages)
                outs[name][:] = 0
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for name, values in rates.items():
        print(f"{name:>9}: {statistics.median(values):8.0f} MB/s  ({', '.join(f'{v:.0f}' for v in values)})")


if __name__ == "__main__":
    main(*(sys.argv[1:2] or [None]), *(int(a) for a in sys.argv[2:4]))
