"""Two processes share KV pages through the Redis tier; another tenant sees none of them.

    python examples/04_redis_shared_tier.py [REDIS_URL]   # default: $KVTIER_REMOTE_URL, else
                                                          # redis://127.0.0.1:6379
This process (the writer) puts pages of tenant A; a second process (this script with --read),
whose host tier starts empty, reads them back from Redis byte for byte, then asks for the same
tokens as tenant B and finds nothing. Pages expire from Redis after 2 minutes. docs/remote.md.
"""
import os
import secrets
import subprocess
import sys

import numpy as np

from kvtier import HostTierConfig, Namespace, StoreConfig, TieredStore
from kvtier.config import RemoteTierConfig

PAGE_TOKENS, PAGE_ELEMS, PAGES = 16, 32 << 10, 6     # six 16-token pages of 64 KiB (float16)


def open_store(url: str) -> TieredStore:
    remote = RemoteTierConfig(url=url, ttl_s=120, key_prefix="kvtier-example:")
    store = TieredStore(StoreConfig(host=HostTierConfig(capacity_bytes="1MiB", slot_bytes="64KiB"),
                                    remote=remote))
    if store.stats().tier("remote").extra["breaker"] == "open":  # Redis did not answer at start
        store.close()
        sys.exit(f"FAILED: no Redis answers at {url}; start one (redis-server) or pass its URL")
    return store


def tenant(salt: str) -> Namespace:  # same model, different secret salt: keys never collide
    return Namespace(model="demo/tiny-model", dtype="float16", layout="demo-16", tenant_salt=salt)


def request(seed: int) -> tuple[list[int], list[np.ndarray]]:
    """A prompt's token ids and its pages, the same in both processes for the same seed."""
    prompt = np.random.default_rng(seed).integers(0, 32000, PAGES * PAGE_TOKENS).tolist()
    pages = [np.random.default_rng([seed, i]).standard_normal(PAGE_ELEMS).astype(np.float16)
             for i in range(PAGES)]
    return prompt, pages


def writer(url: str, seed: int) -> bool:
    prompt, pages = request(seed)
    with open_store(url) as store:
        stored = store.batch_put(tenant("tenant-A").prefix_keys(prompt, PAGE_TOKENS), pages)
        store.flush()                                    # wait until Redis has every page
    print(f"writer (pid {os.getpid()}): put {sum(stored)} pages of tenant A into {url}")
    read = subprocess.run([sys.executable, __file__, url, "--read", str(seed)])
    return all(stored) and read.returncode == 0


def reader(url: str, seed: int) -> bool:
    prompt, pages = request(seed)
    with open_store(url) as store:
        empty = store.stats().tier("host").entries == 0
        out = np.empty(PAGE_ELEMS, np.float16)
        keys = tenant("tenant-A").prefix_keys(prompt, PAGE_TOKENS)
        same = [store.get_into(k, out) and np.array_equal(out, p) for k, p in zip(keys, pages)]
        print(f"reader (pid {os.getpid()}): host tier empty at start: {empty}; {sum(same)} of "
              f"{PAGES} pages read byte-exact, {store.stats().tier('remote').hits} from Redis")
        other = tenant("tenant-B").prefix_keys(prompt, PAGE_TOKENS)
        found, reason = store.lookup_prefix(other), store.miss_reason(other[0])
    print(f"reader as tenant B, same tokens: lookup_prefix -> {found}, miss_reason -> {reason.value}")
    return empty and all(same) and found == 0


if __name__ == "__main__":
    if sys.argv[2:3] == ["--read"]:
        ok = reader(sys.argv[1], int(sys.argv[3]))
    else:
        default = os.environ.get("KVTIER_REMOTE_URL", "redis://127.0.0.1:6379")
        ok = writer(sys.argv[1] if len(sys.argv) > 1 else default, secrets.randbits(32))
    if not ok:
        sys.exit("FAILED: the pages were not shared as shown")
    print("reader OK" if "--read" in sys.argv else "OK")
