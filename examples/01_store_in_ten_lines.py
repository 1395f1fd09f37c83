"""A kvtier store in ten lines: prefix keys, put, lookup_prefix, get_into, stats.

    python examples/01_store_in_ten_lines.py

A KV page here is a numpy array standing in for what your engine computed (any C-contiguous
buffer or CPU torch tensor works). Exits 1 if the round trip did not happen.
"""
import sys

import numpy as np

from kvtier import HostTierConfig, Namespace, StoreConfig, TieredStore

PAGE_TOKENS = 16                       # tokens per KV page (your engine's page / block size)
PAGE = np.zeros(32 << 10, np.float16)  # the shape of one page: 64 KiB here, ~2 MiB for real models

# The store, in (about) ten lines:
config = StoreConfig(host=HostTierConfig(capacity_bytes="8MiB", slot_bytes=PAGE.nbytes))
ns = Namespace(model="demo/tiny-model", fingerprint="rev-1", dtype="float16", layout="demo-16")
with TieredStore(config) as store:
    prompt = list(range(1000, 1100))                         # 100 token ids: 6 full pages of 16
    keys = ns.prefix_keys(prompt, block_tokens=PAGE_TOKENS)  # chained keys, one per full page
    pages = [np.full_like(PAGE, i) for i in range(len(keys))]  # "computed" KV: page i is all i
    stored = store.batch_put(keys, pages)                    # False = no tier admitted it (normal)
    follow_up = prompt[:70] + [7, 7, 7] * 10                 # a new request sharing 70 tokens
    hit = store.lookup_prefix(ns.prefix_keys(follow_up, PAGE_TOKENS))  # leading pages stored
    out = np.empty_like(PAGE)
    found = store.get_into(keys[3], out)                     # zero-copy into your own buffer
    stats = store.stats()

print(f"{len(keys)} pages of {PAGE.nbytes // 1024} KiB stored: {stored}")
print(f"a follow-up sharing 70 tokens finds {hit} leading pages stored (70 // {PAGE_TOKENS} = 4)")
print(f"get_into(keys[3]) -> {found}, page bytes equal: {np.array_equal(out, pages[3])}")
host = stats.tier("host")
print(f"stats: puts={stats.puts} hits={stats.hits} misses={stats.misses}, host tier "
      f"{host.used_bytes >> 10} of {host.capacity_bytes >> 10} KiB used, {stats.native_backend} core")

if not (all(stored) and hit == 4 and found and np.array_equal(out, pages[3])):
    sys.exit("FAILED: the round trip did not happen as shown")
print("OK")
