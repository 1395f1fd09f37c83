"""Real KV-cache pages shipped with kvtier, for tests and benchmarks that need realistic bytes.

Captured from SmolLM2-135M-Instruct on CPython's reference-doc text by ``scripts/capture_kv.py``;
``kv_manifest()`` describes the model, text, layout and versions. Stdlib only.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

_PACKAGE = "kvtier.data"
_DIR = "kvpages"


def _file(name: str) -> bytes:
    return resources.files(_PACKAGE).joinpath(_DIR, name).read_bytes()


@lru_cache(maxsize=1)
def _manifest_text() -> str:
    return _file("manifest.json").decode("utf-8")


def kv_manifest() -> dict:
    """The capture manifest: model, source text, ``shape``, ``layout``, ``dtypes``, ``page_bytes``, ``files``."""
    return json.loads(_manifest_text())


def kv_pages(dtype: str = "float16") -> list[bytes]:
    """The captured pages of ``dtype`` as raw little-endian bytes, one ``bytes`` per page.

    Each page is ``[num_layers, 2 (K, V), block_tokens, num_kv_heads, head_dim]``, C-contiguous.
    """
    manifest = kv_manifest()
    if dtype not in manifest["files"]:
        raise ValueError(f"no KV pages for dtype {dtype!r}; supported: {sorted(manifest['files'])}")
    entry = manifest["files"][dtype]
    size = manifest["page_bytes"]
    blob = _file(entry["file"])
    if len(blob) != size * entry["pages"]:
        raise ValueError(f"{entry['file']} holds {len(blob)} bytes, expected {entry['pages']} x {size}")
    return [blob[i * size : (i + 1) * size] for i in range(entry["pages"])]
