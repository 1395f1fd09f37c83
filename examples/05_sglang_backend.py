"""kvtier as SGLang's HiCache L3 backend, built the way SGLang's cache controller builds it.

    python examples/05_sglang_backend.py

The extra config is the one docs/integrations/sglang.md passes to
`--hicache-storage-backend-extra-config` (directory and size made small for this run). SGLang's
real `StorageBackendFactory.create_backend("dynamic", ...)` loads kvtier's class from it; the host
pool is a CPU stand-in whose page methods are SGLang's own code. Then a backup (batch_set_v1),
a lookup (batch_exists) and a prefetch (batch_get_v1) round trip. Exits 0 with a note if SGLang
or torch is not installed (pip install torch && pip install --no-deps sglang is enough).
"""
import hashlib
import sys
import tempfile

try:
    import torch
    from kvtier.integrations import _sglang_import  # SGLang's interface, without its CUDA stack

    HiCacheStorageConfig = _sglang_import.hicache_interface().HiCacheStorageConfig
    StorageBackendFactory = _sglang_import.storage_backend_factory()
    HostPool = _sglang_import.host_pool_class("mha")
except ImportError as exc:
    print(f"SKIPPED: SGLang's storage interface cannot be imported here ({exc})")
    sys.exit(0)

# --hicache-storage-backend dynamic --hicache-storage-backend-extra-config '{...}' (from the doc)
EXTRA_CONFIG = {"backend_name": "kvtier", "module_path": "kvtier.integrations.sglang",
                "class_name": "KvtierHiCacheStorage", "interface_v1": 1,
                "storage_dir": "/nvme/kvtier", "disk_capacity": "1TiB"}

with tempfile.TemporaryDirectory(prefix="kvtier-sglang-") as tmp:
    extra = {**EXTRA_CONFIG, "storage_dir": tmp, "disk_capacity": "64MiB",  # small, for this run
             "host_capacity": "16MiB"}
    config = HiCacheStorageConfig(  # what SGLang fills in from its server arguments, for TP rank 0
        tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=1,
        is_mla_model=False, enable_storage_metrics=False, is_page_first_layout=True,
        model_name="meta-llama/Llama-3.1-8B-Instruct", extra_config=extra)
    pool = HostPool("page_first", page_size=4, pages=12)  # SGLang's host (L2) pool, 4-token pages
    backend = StorageBackendFactory.create_backend("dynamic", config, pool)
    backend.register_mem_pool_host(pool)
    backend.on_host_pools_registered()

    def indices(pages):  # host token indices of whole pages, as the cache controller passes them
        return torch.tensor([p * pool.page_size + t for p in pages for t in range(pool.page_size)])

    def page(p):  # page p of the host pool, flattened
        return pool.get_data_page(p * pool.page_size, flat=True)

    keys = [hashlib.sha256(f"prefix/{i}".encode()).hexdigest() for i in range(6)]  # SGLang's names
    before = [page(p).clone() for p in range(6)]
    backed_up = backend.batch_set_v1(keys, indices(range(6)))        # L2 pages 0-5 -> L3
    found = backend.batch_exists(keys + [hashlib.sha256(b"other").hexdigest()])
    loaded = backend.batch_get_v1(keys, indices(range(6, 12)))       # L3 -> L2 pages 6-11
    same = all(torch.equal(page(6 + p), before[p]) for p in range(6))
    stats = backend.store.stats()
    backend.close()

print(f"extra_config: {EXTRA_CONFIG}")
print(f"backend: {type(backend).__module__}.{type(backend).__name__}")
print(f"batch_set_v1 -> {backed_up}; batch_exists -> {found} leading pages")
print(f"batch_get_v1 -> {loaded}; pages loaded back byte-exact: {same}; "
      f"kvtier blocks on disk: {stats.tier('disk').entries} (K and V of each page)")
if not (all(backed_up) and found == 6 and all(loaded) and same):
    sys.exit("FAILED: the HiCache round trip did not happen as shown")
print("OK")
