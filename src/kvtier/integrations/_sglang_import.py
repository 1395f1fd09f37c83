"""Import SGLang's HiCache storage interface, with or without the rest of SGLang.

Inside an SGLang server, ``sglang`` is imported long before the storage factory loads
kvtier's backend, and every name here comes from it unchanged.

Elsewhere (tests, benchmarks, a script that only needs the storage interface) the full
``import sglang`` is not possible on a machine without SGLang's serving stack: its
``sglang/__init__.py`` pulls in the frontend language, transformers, triton and CUDA
kernels. The storage interface itself needs none of that: ``sglang.srt`` and
``sglang.srt.mem_cache`` are namespace packages, and ``hicache_storage.py`` and
``storage/backend_factory.py`` import only torch and ``sglang.srt.environ`` (standard
library only). So when ``sglang`` is not imported yet, this module registers a bare
``sglang`` package (its real directory on ``__path__``, its ``__init__.py`` not run) and
imports SGLang's own modules from the installed wheel through it. That works with
``pip install --no-deps sglang`` next to torch and nothing else.

The price: in such a process, ``import sglang`` later returns the bare package (the
frontend API such as ``sglang.Runtime`` is missing; submodules import as usual). Import
``sglang`` first if a process needs both.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_MARK = "__kvtier_minimal__"  # set on the bare package this module registers


def sglang_mode() -> str:
    """``"full"`` when the real ``sglang`` package is imported, ``"minimal"`` when kvtier
    registered the bare package, ``"absent"`` when neither happened yet."""
    module = sys.modules.get("sglang")
    if module is None:
        return "absent"
    return "minimal" if getattr(module, _MARK, False) else "full"


def _ensure_package() -> None:
    if "sglang" in sys.modules:
        return
    spec = importlib.util.find_spec("sglang")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "kvtier.integrations.sglang needs SGLang's storage interface, but sglang is not "
            "installed. In a serving environment: pip install sglang. For the interface alone "
            "(tests, benchmarks): pip install torch==2.13.0 && pip install --no-deps sglang==0.5.23")
    package = types.ModuleType("sglang", "SGLang, imported by kvtier without sglang/__init__.py")
    package.__path__ = list(spec.submodule_search_locations)
    package.__file__ = spec.origin
    package.__spec__ = spec
    package.__package__ = "sglang"
    setattr(package, _MARK, True)
    sys.modules["sglang"] = package


def hicache_interface() -> types.SimpleNamespace:
    """SGLang's ``HiCacheStorage`` ABC, ``HiCacheStorageConfig`` and ``HiCacheStorageExtraInfo``."""
    _ensure_package()
    module = importlib.import_module("sglang.srt.mem_cache.hicache_storage")
    return types.SimpleNamespace(HiCacheStorage=module.HiCacheStorage,
                                 HiCacheStorageConfig=module.HiCacheStorageConfig,
                                 HiCacheStorageExtraInfo=module.HiCacheStorageExtraInfo,
                                 STORAGE_BATCH_SIZE=getattr(module, "STORAGE_BATCH_SIZE", 128))


def storage_backend_factory() -> type:
    """SGLang's ``StorageBackendFactory`` (what the cache controller calls ``create_backend`` on)."""
    _ensure_package()
    return importlib.import_module("sglang.srt.mem_cache.storage.backend_factory").StorageBackendFactory


def hicache_file_class() -> type:
    """SGLang's own file backend, ``HiCacheFile`` (one ``.bin`` file per page), to compare with.

    Its constructor imports ``storage/file/lru_file_evictor.py``, which takes one helper,
    ``human_readable_int``, from ``sglang.srt.utils.common``, a module that imports triton,
    PIL, starlette, requests, psutil, orjson, pybase64, msgspec and zmq at its top. In the
    minimal mode, when ``sglang.srt.utils`` is not imported yet, this registers a bare
    ``sglang.srt.utils`` package and a ``sglang.srt.utils.common`` that holds only that
    function, compiled from the installed wheel's own source (so it is SGLang's code, not a
    copy that could drift). Meant for benchmarks and tests; an SGLang server never needs it.
    """
    _ensure_package()
    if sglang_mode() == "minimal" and "sglang.srt.utils.common" not in sys.modules:
        _register_utils_common_shim()
    return importlib.import_module("sglang.srt.mem_cache.hicache_storage").HiCacheFile


def _register_utils_common_shim() -> None:
    utils_spec = importlib.util.find_spec("sglang.srt.utils")
    source_path = Path(utils_spec.submodule_search_locations[0]) / "common.py"
    tree = ast.parse(source_path.read_text(), str(source_path))
    wanted = [node for node in tree.body
              if isinstance(node, ast.FunctionDef) and node.name == "human_readable_int"]
    if not wanted:
        raise ImportError(f"{source_path} has no human_readable_int; this SGLang version needs "
                          "its full dependencies to run HiCacheFile")
    if "sglang.srt.utils" not in sys.modules:
        utils = types.ModuleType("sglang.srt.utils", "bare package registered by kvtier")
        utils.__path__ = list(utils_spec.submodule_search_locations)
        utils.__spec__ = utils_spec
        utils.__package__ = "sglang.srt.utils"
        setattr(utils, _MARK, True)
        sys.modules["sglang.srt.utils"] = utils
    common = types.ModuleType("sglang.srt.utils.common",
                              "human_readable_int only, compiled from SGLang's source by kvtier")
    common.__file__ = str(source_path)
    namespace = common.__dict__
    namespace.update(re=re, argparse=importlib.import_module("argparse"))
    exec(compile(ast.Module(body=wanted, type_ignores=[]), str(source_path), "exec"), namespace)
    setattr(common, _MARK, True)
    sys.modules["sglang.srt.utils.common"] = common
    sys.modules["sglang.srt.utils"].common = common


_POOL_DIMS = {  # kv_buffer dims, from init_kv_buffer in srt/mem_cache/pool_host/mha.py and mla.py
    ("mha", "layer_first"): lambda p: (2, p.layer_num, p.size, p.head_num, p.head_dim),
    ("mha", "page_first"): lambda p: (2, p.size, p.layer_num, p.head_num, p.head_dim),
    ("mha", "page_first_direct"): lambda p: (2, p.page_num, p.layer_num, p.page_size, p.head_num, p.head_dim),
    ("mha", "page_head"): lambda p: (2, p.page_num, p.head_num, p.page_size, p.layer_num, p.head_dim),
    ("mla", "layer_first"): lambda p: (p.layer_num, p.size, 1, p.kv_cache_dim),
    ("mla", "page_first"): lambda p: (p.size, p.layer_num, 1, p.kv_cache_dim),
    ("mla", "page_first_direct"): lambda p: (p.page_num, p.layer_num, p.page_size, 1, p.kv_cache_dim),
}
POOL_LAYOUTS = tuple(_POOL_DIMS)
_PAGE_METHODS = ("get_data_page", "get_dummy_flat_data_page", "set_from_flat_data_page",
                 "get_page_buffer_meta")


def host_pool_class(kind: str) -> type:
    """A stand-in for SGLang's ``MHATokenToKVPoolHost`` (``kind="mha"``) or
    ``MLATokenToKVPoolHost`` (``"mla"``) on plain CPU memory, for tests and benchmarks.

    The real classes cannot be built without SGLang's serving stack (their module imports
    transformers, torchvision, triton and CUDA kernels; their constructors want device KV
    buffers and SGLang's parallel runtime). What L3 storage sees of a pool is kept real: the
    page methods (``get_data_page``, ``get_dummy_flat_data_page``, ``set_from_flat_data_page``,
    ``get_page_buffer_meta``, MLA's ``_storage_page_index``) are SGLang's own, compiled from
    the installed wheel's source, and ``kv_buffer`` has the dims of its ``init_kv_buffer``,
    allocated by SGLang's default host allocator (``alloc_mmap``: anonymous, page-aligned).
    ``cls(layout, page_size=, pages=, layers=, heads=, head_dim=, dtype=)`` fills the buffer
    with ``torch.randn`` (``seed=``); MLA pages are ``heads * head_dim`` wide.
    """
    import torch

    _ensure_package()
    source = Path(sys.modules["sglang"].__path__[0]) / "srt" / "mem_cache" / "pool_host" / f"{kind}.py"
    real = {"mha": "MHATokenToKVPoolHost", "mla": "MLATokenToKVPoolHost"}[kind]
    names = _PAGE_METHODS + (("_storage_page_index",) if kind == "mla" else ())
    tree = ast.parse(source.read_text(), str(source))
    body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == real).body
    found = [n for n in body if isinstance(n, ast.FunctionDef) and n.name in names]
    if {n.name for n in found} != set(names):
        raise ImportError(f"{real} in {source} lacks some of {names}: unsupported SGLang version")
    namespace: dict[str, Any] = {"torch": torch}
    exec(compile(ast.Module(body=found, type_ignores=[]), str(source), "exec"), namespace)
    alloc_mmap = importlib.import_module("sglang.srt.mem_cache.storage.mmap.mmap_allocator").alloc_mmap

    def __init__(self, layout: str, *, page_size: int = 4, pages: int = 12, layers: int = 3,
                 heads: int = 2, head_dim: int = 16, dtype: Any = torch.bfloat16, seed: int = 0) -> None:
        self.layout, self.page_size, self.page_num, self.size = layout, page_size, pages, pages * page_size
        self.layer_num, self.head_num, self.head_dim = layers, heads, head_dim
        self.kv_cache_dim, self.dtype, self.device, self.pin_memory = heads * head_dim, dtype, "cpu", False
        self.dcp_size, self.dcp_rank, self.logical_page_size, self.logical_size = 1, 0, page_size, self.size
        dims = _POOL_DIMS[kind, layout](self)
        self.kv_buffer = alloc_mmap(dims, dtype)
        self.kv_buffer.copy_(torch.randn(dims, generator=torch.Generator().manual_seed(seed)).to(dtype))

    members = {name: namespace[name] for name in names}
    return type(f"StandIn{real}", (), {"__init__": __init__, "__doc__": host_pool_class.__doc__,
                                        "__module__": __name__, **members})


@dataclass
class FallbackStorageMetrics:
    """The shape of SGLang's ``StorageMetrics`` (``sglang.srt.observability.metrics_collector``),
    used only where that module is not imported: lists of pages per batch and GB/s per batch."""

    prefetch_pgs: list[int] = field(default_factory=list)
    backup_pgs: list[int] = field(default_factory=list)
    prefetch_bandwidth: list[float] = field(default_factory=list)
    backup_bandwidth: list[float] = field(default_factory=list)


def storage_metrics_class() -> Any:
    """The class ``get_stats()`` must return. SGLang's metrics logger asserts
    ``isinstance(x, StorageMetrics)``; it has imported ``metrics_collector`` whenever it asks,
    so the module is looked up, never imported here (its imports are heavy)."""
    module = sys.modules.get("sglang.srt.observability.metrics_collector")
    cls = getattr(module, "StorageMetrics", None) if module is not None else None
    return cls if cls is not None else FallbackStorageMetrics
