"""Cache windows (TTL): a page lives `ttl_s` seconds after its last write, or its last read too
with ttl_refresh="read"; a put's own ttl_s overrides the store's. Real time, a 1-second window.

    python examples/03_ttl_windows.py

Providers close prompt-cache entries after 5 minutes or 1 hour; here the window is 1 s so the
example runs quickly. Exits 1 if a page outlived its window or died inside it.
"""
import sys
import time

from kvtier import HostTierConfig, MissReason, StoreConfig, TieredStore

WINDOW_S = 1.0
config = StoreConfig(host=HostTierConfig(capacity_bytes="1MiB", slot_bytes="64KiB"),
                     ttl_s=WINDOW_S,          # every put gets this window unless it names its own
                     ttl_refresh="read")      # a hit extends the window too ("write": only puts)

with TieredStore(config) as store:
    page = bytes(64 << 10)
    store.put(b"read-again", page)           # window: 1 s, extended by every read
    store.put(b"never-read", page)           # window: 1 s
    store.put(b"long", page, ttl_s=3600)     # its own window: 1 hour
    store.put(b"short", page, ttl_s=0.1)     # its own window: 0.1 s
    time.sleep(0.6 * WINDOW_S)
    refreshed = store.get(b"read-again") is not None   # a hit at 0.6 s: open until 1.6 s now
    time.sleep(0.6 * WINDOW_S)                          # 1.2 s after the puts
    alive = {key: store.contains(key) for key in (b"read-again", b"never-read", b"long", b"short")}
    reasons = {key: store.miss_reason(key) for key in alive}
    missed = store.get(b"never-read")        # a read of an expired page: None, counted as expired
    stats = store.stats()

for key, live in alive.items():
    print(f"{key.decode():>10}: {'alive' if live else 'gone'}, miss_reason -> "
          f"{reasons[key].value if reasons[key] else None}")
print(f"get(b'never-read') -> {missed}; stats: misses={stats.misses}, "
      f"host expirations={stats.tier('host').expirations}")

expected = {b"read-again": None, b"never-read": MissReason.EXPIRED, b"long": None,
            b"short": MissReason.EXPIRED}
if not refreshed or reasons != expected or missed is not None or stats.misses.get("expired") != 1:
    sys.exit("FAILED: the windows did not behave as shown")
print("OK")
