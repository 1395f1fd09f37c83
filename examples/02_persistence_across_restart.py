"""Pages on the NVMe disk tier outlive the process that wrote them.

    python examples/02_persistence_across_restart.py [DIR]    # DIR: default a temp directory

This process writes pages into a disk tier in DIR and closes the store; then a second process
(this script again, with --read) opens a store on the same DIR and reads every page back byte
for byte. A killed writer (kill -9) loses nothing committed either: see "Disk tier" in
docs/ARCHITECTURE.md and `fsync` in docs/configuration.md (tested in tests/test_disk_crash.py).
"""
import subprocess
import sys
import tempfile

import numpy as np

from kvtier import DiskTierConfig, HostTierConfig, Namespace, StoreConfig, TieredStore

PAGE_TOKENS, PAGE_ELEMS = 16, 32 << 10                  # 16-token pages of 64 KiB (float16)
NS = Namespace(model="demo/tiny-model", fingerprint="rev-1", dtype="float16", layout="demo-16")
PROMPT = list(range(5000, 5000 + 8 * PAGE_TOKENS))      # 8 full pages


def open_store(directory: str) -> TieredStore:
    return TieredStore(StoreConfig(
        host=HostTierConfig(capacity_bytes="1MiB", slot_bytes=2 * PAGE_ELEMS),  # 16 host slots
        disk=DiskTierConfig(paths=[directory], capacity_bytes="16MiB")))        # the durable tier


def page(i: int) -> np.ndarray:
    return np.random.default_rng(i).standard_normal(PAGE_ELEMS).astype(np.float16)


def read(directory: str) -> int:
    """The second process: a fresh store on the same directory reads every page back."""
    with open_store(directory) as store:
        keys = NS.prefix_keys(PROMPT, PAGE_TOKENS)
        found = store.lookup_prefix(keys)
        print(f"reader (new process): lookup_prefix finds {found} of {len(keys)} pages")
        out = np.empty(PAGE_ELEMS, np.float16)
        same = [store.get_into(k, out) and np.array_equal(out, page(i)) for i, k in enumerate(keys)]
        print(f"reader: {sum(same)} of {len(keys)} pages read back byte-exact, "
              f"{store.stats().tier('disk').hits} from disk")
    return 0 if all(same) else 1


def write_then_read(directory: str) -> int:
    with open_store(directory) as store:               # close() writes host-only pages to disk
        keys = NS.prefix_keys(PROMPT, PAGE_TOKENS)
        if not all(store.batch_put(keys, [page(i) for i in range(len(keys))])):
            return 1
        print(f"writer: {len(keys)} pages put into {directory}; closing the store")
    # One store owns a directory at a time: the reader may open it now that the writer closed.
    return subprocess.run([sys.executable, __file__, directory, "--read"]).returncode


if __name__ == "__main__":
    if sys.argv[2:] == ["--read"]:
        sys.exit(read(sys.argv[1]))
    with tempfile.TemporaryDirectory(prefix="kvtier-example-") as scratch:
        failed = write_then_read(sys.argv[1] if len(sys.argv) > 1 else scratch)
    if failed:
        sys.exit("FAILED: the pages did not come back from disk")
    print("OK")
