"""``KVLayout``: the exact shape of a serving engine's paged KV cache, and the gather/scatter
between that cache and contiguous kvtier pages.

An engine keeps KV in *blocks* (vLLM: 16 tokens) or *pages* (SGLang: ``page_size`` tokens)
scattered over one or more cache tensors. kvtier stores *pages*: the KV of
``blocks_per_page`` engine blocks, all layers, as one contiguous byte buffer. ``gather``
copies engine blocks into pages (offload), ``scatter`` copies pages back into engine blocks
(load). Both run one copy per batch of pages: the native CPU reference (``kvtier.native``)
for CPU tensors, one CUDA kernel launch (``kvtier._cuda``) for CUDA tensors.

Every layout is reduced to *segments*: for most layouts one per (layer, K or V). Engine block
``b`` of segment ``s`` is ``chunk_bytes`` contiguous bytes at ``base[s] + b * block_stride[s]``
(strides are read from the tensors, so padded or sliced caches work as long as each block's
chunk is dense). A page is ``page[s][j]`` = segment ``s`` of the page's ``j``-th block:
``num_segments * blocks_per_page * chunk_bytes`` bytes. The page shape of each layout is in
its constructor's docstring; layouts with the same ``page_format`` produce identical pages.

Shapes below use ``L`` layers, ``N`` blocks (or pages) in the cache, ``B`` tokens per block,
``H`` KV heads, ``D`` head dim, ``T`` tokens in an SGLang pool (``T >= N * B``), ``R``
the MLA latent width ``kv_lora_rank + rope_dim``, ``P`` pages in a batch and ``n`` blocks per
page. Block ids are host data (a list, numpy array or CPU tensor): they are checked against
``num_blocks`` before anything is copied, so a bad id raises instead of touching memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import native
from .buffers import byte_view, writable_byte_view
from .errors import BufferSizeError, InvalidArgumentError, UnsupportedValueError

__all__ = ["KVLayout", "LayoutMismatchError", "PagedCache", "gather", "scatter", "DTYPES"]

DTYPES: dict[str, int] = {  # dtype name (as torch spells it) -> bytes per element
    "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1, "float32": 4,
}
_DTYPE_ALIASES = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp8": "float8_e4m3fn",
                  "fp8_e4m3": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2", "fp32": "float32",
                  "float": "float32"}
KINDS = ("vllm", "vllm_cross_layer", "sglang_layer_first", "sglang_page_first", "mla")


class LayoutMismatchError(InvalidArgumentError):
    """The cache tensors given to ``gather``/``scatter``/``bind`` do not match the ``KVLayout``
    (shape, dtype, device or a block that is not dense); the message names the tensor."""


def _dtype_name(dtype: Any) -> str:
    name = str(dtype).removeprefix("torch.").lower()
    name = _DTYPE_ALIASES.get(name, name)
    if name not in DTYPES:
        raise InvalidArgumentError(f"dtype must be one of {', '.join(DTYPES)} (or fp16, bf16, fp8, "
                                   f"fp8_e5m2), got {dtype!r}")
    return name


def _positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidArgumentError(f"{name} must be an int >= 1, got {value!r}")


@dataclass(frozen=True, slots=True)
class KVLayout:
    """One engine's paged KV cache, exactly. Build it with a constructor (``vllm``,
    ``vllm_cross_layer``, ``sglang_layer_first``, ``sglang_page_first``, ``mla``).

    Attributes:
        kind: one of ``KINDS``.
        num_layers: attention layers in this shard (``L``).
        num_blocks: engine blocks (vLLM) or pages (SGLang) the cache holds (``N``); block ids
            are in ``[0, N)``.
        block_size: tokens per engine block or SGLang page (``B``).
        num_kv_heads: KV heads in this shard (``H``; 1 for MLA).
        head_dim: elements per head (``D``; ``R = kv_lora_rank + rope_dim`` for MLA).
        dtype: element type, one of ``DTYPES`` (fp8 caches: ``float8_e4m3fn``/``float8_e5m2``).
        kv_lora_rank, rope_dim: MLA latent widths (0 for other kinds).
    """

    kind: str
    num_layers: int
    num_blocks: int
    block_size: int
    num_kv_heads: int
    head_dim: int
    dtype: str
    kv_lora_rank: int = 0
    rope_dim: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidArgumentError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        _positive(num_layers=self.num_layers, num_blocks=self.num_blocks, block_size=self.block_size,
                  num_kv_heads=self.num_kv_heads, head_dim=self.head_dim)
        object.__setattr__(self, "dtype", _dtype_name(self.dtype))
        if self.kind == "mla" and (self.kv_lora_rank + self.rope_dim != self.head_dim
                                   or self.num_kv_heads != 1):
            raise InvalidArgumentError("an MLA layout has num_kv_heads=1 and head_dim = "
                                       "kv_lora_rank + rope_dim: build it with KVLayout.mla(...)")

    # -- constructors ------------------------------------------------------------------------
    @classmethod
    def vllm(cls, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int,
             head_dim: int, dtype: Any) -> "KVLayout":
        """vLLM's flash-attention cache, one tensor per layer.

        caches: ``L`` tensors ``[2, N, B, H, D]`` (K then V; a list, a dict ``{layer_name:
        tensor}`` in layer order, or one stacked tensor ``[L, 2, N, B, H, D]``), any device,
        ``dtype``; each block ``cache[kv, b]`` dense (``[B, H, D]`` C-contiguous).
        Page: ``[L, 2, n * B, H, D]`` (``page_format`` ``"layer-major"``).
        """
        return cls("vllm", num_layers, num_blocks, block_size, num_kv_heads, head_dim, dtype)

    @classmethod
    def vllm_cross_layer(cls, num_layers: int, num_blocks: int, block_size: int,
                         num_kv_heads: int, head_dim: int, dtype: Any) -> "KVLayout":
        """vLLM's cross-layer cache: one tensor ``[N, L, 2, B, H, D]`` holding every layer, so
        one block of all layers is contiguous. Each ``cache[b, l, kv]`` must be dense.
        Page: ``[L, 2, n * B, H, D]``, the same bytes as ``vllm`` (pages are interchangeable).
        """
        return cls("vllm_cross_layer", num_layers, num_blocks, block_size, num_kv_heads, head_dim,
                   dtype)

    @classmethod
    def sglang_layer_first(cls, num_layers: int, num_pages: int, page_size: int,
                           num_kv_heads: int, head_dim: int, dtype: Any) -> "KVLayout":
        """SGLang's token pool (``MHATokenToKVPool``) and HiCache's ``layer_first`` layout.

        caches: ``(k_buffer, v_buffer)``, each ``L`` tensors ``[T, H, D]`` (or one tensor
        ``[L, T, H, D]``), or one tensor ``[2, L, T, H, D]``; token ``t`` of page ``p`` is row
        ``p * B + t``, ``T >= N * B``; rows dense (``[T, H, D]`` C-contiguous per layer).
        Page: ``[L, 2, n * B, H, D]``, the same bytes as ``vllm``.
        """
        return cls("sglang_layer_first", num_layers, num_pages, page_size, num_kv_heads,
                   head_dim, dtype)

    @classmethod
    def sglang_page_first(cls, num_layers: int, num_pages: int, page_size: int,
                          num_kv_heads: int, head_dim: int, dtype: Any) -> "KVLayout":
        """SGLang HiCache's ``page_first`` layout: one tensor ``[2, T, L, H, D]`` (a token's
        layers are adjacent), ``T >= N * B``, ``cache[kv]`` C-contiguous from row to head dim.
        Page: ``[2, n * B, L, H, D]`` (``page_format`` ``"token-major"``).
        """
        return cls("sglang_page_first", num_layers, num_pages, page_size, num_kv_heads,
                   head_dim, dtype)

    @classmethod
    def mla(cls, num_layers: int, num_blocks: int, block_size: int, kv_lora_rank: int,
            rope_dim: int, dtype: Any) -> "KVLayout":
        """An MLA latent cache (DeepSeek-V2/V3 in vLLM): ``L`` tensors ``[N, B, R]``,
        ``R = kv_lora_rank + rope_dim`` (a list, a dict, or one tensor ``[L, N, B, R]``); no
        separate K and V. Each ``cache[b]`` dense. Page: ``[L, n * B, R]``.
        """
        _positive(kv_lora_rank=kv_lora_rank)
        if isinstance(rope_dim, bool) or not isinstance(rope_dim, int) or rope_dim < 0:
            raise InvalidArgumentError(f"rope_dim must be an int >= 0, got {rope_dim!r}")
        return cls("mla", num_layers, num_blocks, block_size, 1, kv_lora_rank + rope_dim, dtype,
                   kv_lora_rank, rope_dim)

    # -- sizes -------------------------------------------------------------------------------
    @property
    def element_bytes(self) -> int:
        """Bytes per element of ``dtype``."""
        return DTYPES[self.dtype]

    @property
    def components(self) -> int:
        """2 (K and V), or 1 for an MLA latent cache."""
        return 1 if self.kind == "mla" else 2

    @property
    def bytes_per_token(self) -> int:
        """KV bytes of one token, all layers of this shard."""
        return self.components * self.num_layers * self.num_kv_heads * self.head_dim * self.element_bytes

    @property
    def block_bytes(self) -> int:
        """KV bytes of one engine block, all layers."""
        return self.bytes_per_token * self.block_size

    @property
    def num_segments(self) -> int:
        """Segments a page is made of: ``2L``, ``2`` (page_first) or ``L`` (MLA)."""
        if self.kind == "sglang_page_first":
            return 2
        return self.components * self.num_layers

    @property
    def chunk_bytes(self) -> int:
        """Contiguous bytes one engine block contributes to one segment."""
        return self.block_bytes // self.num_segments

    def page_bytes(self, blocks_per_page: int) -> int:
        """Bytes of a kvtier page of ``blocks_per_page`` engine blocks."""
        _positive(blocks_per_page=blocks_per_page)
        return self.block_bytes * blocks_per_page

    def page_shape(self, blocks_per_page: int) -> tuple[int, ...]:
        """The page as a tensor of ``dtype`` (see each constructor)."""
        _positive(blocks_per_page=blocks_per_page)
        L, T, H, D = self.num_layers, blocks_per_page * self.block_size, self.num_kv_heads, self.head_dim
        if self.kind == "mla":
            return (L, T, D)
        if self.kind == "sglang_page_first":
            return (2, T, L, H, D)
        return (L, 2, T, H, D)

    def page_format(self, blocks_per_page: int) -> str:
        """A name for the bytes of a page: equal names, identical pages (use it in
        ``Namespace(layout=...)`` so stores never mix page formats)."""
        order = {"mla": "mla", "sglang_page_first": "token-major"}.get(self.kind, "layer-major")
        latent = f"-r{self.kv_lora_rank}+{self.rope_dim}" if self.kind == "mla" else ""
        return (f"{order}-L{self.num_layers}-h{self.num_kv_heads}-d{self.head_dim}{latent}-"
                f"t{blocks_per_page * self.block_size}-{self.dtype}")

    # -- binding caches ----------------------------------------------------------------------
    def bind(self, caches: Any) -> "PagedCache":
        """Check ``caches`` against this layout once (shapes, dtype, device, dense blocks) and
        return a ``PagedCache`` that gathers/scatters without checking them again. The tensors
        must stay allocated (and not move) while it is used."""
        return PagedCache(self, caches)


# -- tensors -> segments -------------------------------------------------------------------------

def _is_tensor(obj: Any) -> bool:
    return type(obj).__module__.startswith("torch") and hasattr(obj, "data_ptr")


def _layers(caches: Any, what: str, count: int) -> list[Any]:
    """A per-layer list from a list, a dict (values in order) or a stacked tensor."""
    if isinstance(caches, Mapping):
        caches = list(caches.values())
    if _is_tensor(caches):
        caches = list(caches.unbind(0))
    if not isinstance(caches, Sequence) or isinstance(caches, (bytes, str)):
        raise LayoutMismatchError(f"{what} must be a list of {count} tensors (or one stacked "
                                  f"tensor), got {type(caches).__name__}")
    if len(caches) != count:
        raise LayoutMismatchError(f"{what} has {len(caches)} tensors, expected {count}")
    return list(caches)


class _Checker:
    """Checks each cache tensor and turns (tensor, block dim) into a segment."""

    def __init__(self, layout: KVLayout) -> None:
        self.layout = layout
        self.device: Any = None
        self.keep: list[Any] = []  # the tensors, so their memory outlives the segments

    def tensor(self, t: Any, what: str, shape: tuple[int | None, ...]) -> Any:
        """``t`` checked: a torch tensor of the layout's dtype, on one device, of ``shape``
        (``None``: at least the size in the docstring, checked by the caller)."""
        if not _is_tensor(t):
            raise LayoutMismatchError(f"{what} must be a torch tensor, got {type(t).__name__}")
        if _dtype_name(t.dtype) != self.layout.dtype:
            raise LayoutMismatchError(f"{what} has dtype {t.dtype}, the layout says {self.layout.dtype}")
        if self.device is None:
            self.device = t.device
        elif t.device != self.device:
            raise LayoutMismatchError(f"{what} is on {t.device} but the other caches are on {self.device}")
        if len(t.shape) != len(shape) or any(want is not None and got != want
                                             for got, want in zip(t.shape, shape)):
            expect = ", ".join("≥" if w is None else str(w) for w in shape)
            raise LayoutMismatchError(f"{what} has shape {list(t.shape)}, expected [{expect}]")
        self.keep.append(t)
        return t

    def segment(self, t: Any, what: str, rows_per_block: int) -> tuple[int, int]:
        """(base address, block stride in bytes) of tensor ``t`` whose dim 0 holds
        ``rows_per_block`` rows per block; the rows of one block (and everything inside a
        row) must be dense."""
        shape, strides = list(t.shape), list(t.stride())
        expected = 1
        for dim in range(len(shape) - 1, 0, -1):  # everything inside a row is C-contiguous
            if shape[dim] != 1 and strides[dim] != expected:
                raise LayoutMismatchError(f"{what} is not dense inside a block (strides "
                                          f"{strides}): pass a contiguous cache")
            expected *= shape[dim]
        if rows_per_block > 1 and strides[0] != expected:
            raise LayoutMismatchError(f"{what}'s rows of one block are not adjacent (strides "
                                      f"{strides}): pass a contiguous cache")
        elem = self.layout.element_bytes
        return t.data_ptr(), strides[0] * rows_per_block * elem


def _segments(layout: KVLayout, caches: Any) -> tuple[list[tuple[int, int]], Any, list[Any]]:
    """(segments, device, tensors to keep alive) of ``caches`` for ``layout``."""
    L, N, B, H, D = (layout.num_layers, layout.num_blocks, layout.block_size, layout.num_kv_heads,
                     layout.head_dim)
    c = _Checker(layout)
    segs: list[tuple[int, int]] = []
    kind = layout.kind
    if kind == "vllm":
        for l, t in enumerate(_layers(caches, "caches", L)):
            c.tensor(t, f"caches[{l}]", (2, N, B, H, D))
            for kv in range(2):
                segs.append(c.segment(t[kv], f"caches[{l}][{kv}]", 1))
    elif kind == "vllm_cross_layer":
        t = c.tensor(caches, "caches", (N, L, 2, B, H, D))
        for l in range(L):
            for kv in range(2):
                segs.append(c.segment(t[:, l, kv], f"caches[:, {l}, {kv}]", 1))
    elif kind == "sglang_layer_first":
        if _is_tensor(caches):
            pair = [caches[0], caches[1]] if caches.dim() == 5 and caches.shape[0] == 2 else None
            if pair is None:
                raise LayoutMismatchError(f"caches has shape {list(caches.shape)}; a single tensor "
                                          f"must be [2, {L}, T, {H}, {D}]")
        else:
            pair = list(caches) if isinstance(caches, Sequence) else []
            if len(pair) != 2:
                raise LayoutMismatchError("caches must be (k_buffer, v_buffer) or one tensor "
                                          "[2, L, T, H, D]")
        per_kv = [_layers(buf, f"caches[{kv}]", L) for kv, buf in enumerate(pair)]
        for l in range(L):
            for kv in range(2):
                t = c.tensor(per_kv[kv][l], f"caches[{kv}][{l}]", (None, H, D))
                _enough_rows(t, f"caches[{kv}][{l}]", N * B)
                segs.append(c.segment(t, f"caches[{kv}][{l}]", B))
    elif kind == "sglang_page_first":
        t = c.tensor(caches, "caches", (2, None, L, H, D))
        _enough_rows(t[0], "caches[kv]", N * B)
        for kv in range(2):
            segs.append(c.segment(t[kv], f"caches[{kv}]", B))
    else:  # mla
        for l, t in enumerate(_layers(caches, "caches", L)):
            c.tensor(t, f"caches[{l}]", (N, B, D))
            segs.append(c.segment(t, f"caches[{l}]", 1))
    return segs, c.device, c.keep


def _enough_rows(t: Any, what: str, rows: int) -> None:
    if t.shape[0] < rows:
        raise LayoutMismatchError(f"{what} has {t.shape[0]} token rows; {rows} (num_blocks × "
                                  f"block_size) are needed")


# -- gather / scatter ----------------------------------------------------------------------------

class PagedCache:
    """An engine's cache checked against a ``KVLayout`` (``layout.bind(caches)``).

    ``gather``/``scatter`` take ``block_ids``: ``n`` ints (one page) or ``P`` rows of ``n``
    (a batch: a list of lists, a 2-D numpy array or CPU tensor), and ``pages``: one page or a
    sequence of ``P`` pages, each exactly ``layout.page_bytes(n)`` bytes, C-contiguous, any
    dtype. CPU caches take host pages (bytearray, memoryview, numpy, CPU tensors; the native
    reference copies them); CUDA caches take CUDA tensors on the same device (one kernel
    launch per call, on ``stream`` or the current stream: ordered after the work already
    queued there, and the copy is done when that stream reaches it). ``scatter`` refuses a
    batch that names a block twice (the result would depend on copy order).
    """

    def __init__(self, layout: KVLayout, caches: Any) -> None:
        self.layout = layout
        self._segments, self.device, self._keep = _segments(layout, caches)
        self.is_cuda = getattr(self.device, "type", "cpu") == "cuda"
        if getattr(self.device, "type", "cpu") not in ("cpu", "cuda"):
            raise LayoutMismatchError(f"caches are on {self.device}; kvtier copies CPU and CUDA caches")

    def gather(self, block_ids: Any, pages: Any, *, stream: Any = None) -> None:
        """Copy the engine blocks ``block_ids`` into ``pages`` (see the class docstring)."""
        self._run(True, block_ids, pages, stream)

    def scatter(self, pages: Any, block_ids: Any, *, stream: Any = None) -> None:
        """Copy ``pages`` back into the engine blocks ``block_ids`` (see the class docstring)."""
        self._run(False, block_ids, pages, stream)

    def _run(self, forward: bool, block_ids: Any, pages: Any, stream: Any) -> None:
        import numpy as np

        ids, single = _block_ids(block_ids, self.layout.num_blocks)
        if ids.size == 0:
            return
        num_pages, per_page = ids.shape
        page_list = [pages] if single else _page_list(pages, num_pages)
        if not forward and np.unique(ids).size != ids.size:
            raise InvalidArgumentError("scatter got the same block id twice in one batch; each "
                                       "engine block can be filled from one page only")
        nbytes = self.layout.page_bytes(per_page)
        addrs, keep = [], []
        for i, page in enumerate(page_list):
            what = "pages" if single else f"pages[{i}]"
            addr, holder = (_cuda_page if self.is_cuda else _host_page)(page, what, nbytes, forward,
                                                                         self.device)
            addrs.append(addr)
            keep.append(holder)
        chunk = self.layout.chunk_bytes
        table = np.empty(num_pages + 2 * len(self._segments) + ids.size, dtype=np.int64)
        table[:num_pages] = np.array(addrs, dtype=np.uint64).view(np.int64)
        seg_end = num_pages + 2 * len(self._segments)
        table[num_pages:seg_end] = np.array(self._segments, dtype=np.uint64).reshape(-1).view(np.int64)
        table[seg_end:] = ids.reshape(-1)
        if self.is_cuda:
            from . import gpu

            gpu.paged_copy(forward, table, num_pages, per_page, len(self._segments), chunk,
                           _vector_bytes(addrs, self._segments, chunk), self.device, stream)
            return
        base = table.ctypes.data
        native.paged_copy(forward, base, base + 8 * num_pages, base + 8 * seg_end, num_pages,
                          per_page, len(self._segments), chunk)
        del keep


def gather(layout: KVLayout, caches: Any, block_ids: Any, out: Any, *, stream: Any = None) -> None:
    """Copy engine blocks ``block_ids`` of ``caches`` into the page(s) ``out``.

    Args:
        layout: the engine's ``KVLayout``.
        caches: the engine's cache tensors, as the layout's constructor documents (CPU or CUDA).
        block_ids: ``n`` block ids for one page, or ``P`` rows of ``n`` for a batch (host data).
        out: one page (or ``P`` pages): ``layout.page_bytes(n)`` bytes each, writable,
            C-contiguous, on the caches' device; filled in ``layout.page_shape(n)`` order.
        stream: CUDA only: the ``torch.cuda.Stream`` to run on (default: the current one).
    """
    layout.bind(caches).gather(block_ids, out, stream=stream)


def scatter(layout: KVLayout, page: Any, caches: Any, block_ids: Any, *, stream: Any = None) -> None:
    """Copy the page(s) ``page`` into engine blocks ``block_ids`` of ``caches`` (the inverse of
    ``gather``; same arguments). A batch must not name the same block twice."""
    layout.bind(caches).scatter(page, block_ids, stream=stream)


def _block_ids(block_ids: Any, num_blocks: int) -> tuple[Any, bool]:
    """(int64 array [P, n], whether one page was given) with every id in [0, num_blocks)."""
    import numpy as np

    if _is_tensor(block_ids):
        if block_ids.device.type != "cpu":
            raise InvalidArgumentError("block_ids must be host data (a list, numpy array or CPU "
                                       "tensor): kvtier checks them before copying")
        block_ids = block_ids.numpy()
    try:
        ids = np.asarray(block_ids)
    except ValueError:
        raise InvalidArgumentError("block_ids rows must all have the same length") from None
    if ids.size and ids.dtype.kind not in "iu":
        raise InvalidArgumentError(f"block_ids must be integers, got {ids.dtype}")
    ids = ids.astype(np.int64, copy=False)
    single = ids.ndim == 1
    if single:
        ids = ids.reshape(1, -1)
    if ids.ndim != 2:
        raise InvalidArgumentError(f"block_ids must have 1 or 2 dimensions, got {ids.ndim}")
    if ids.size and (ids.min() < 0 or ids.max() >= num_blocks):
        bad = ids[(ids < 0) | (ids >= num_blocks)][0]
        raise InvalidArgumentError(f"block id {int(bad)} is out of range [0, {num_blocks})")
    return np.ascontiguousarray(ids), single


def _page_list(pages: Any, count: int) -> list[Any]:
    if _is_tensor(pages) or not isinstance(pages, Sequence) or isinstance(pages, (bytes, bytearray)):
        raise InvalidArgumentError(f"a batch of {count} pages needs a sequence of {count} page buffers, "
                                   f"got {type(pages).__name__}")
    if len(pages) != count:
        raise InvalidArgumentError(f"block_ids has {count} rows but {len(pages)} pages were given")
    return list(pages)


def _host_page(page: Any, what: str, nbytes: int, writable: bool, device: Any) -> tuple[int, Any]:
    if _is_tensor(page) and page.device.type != "cpu":
        raise UnsupportedValueError(f"{what} is on {page.device} but the caches are on the CPU")
    view = writable_byte_view(page, what) if writable else byte_view(page, what)
    if view.nbytes != nbytes:
        raise BufferSizeError(f"{what} has {view.nbytes} bytes; a page of this layout has {nbytes}")
    return native.address(view), view


def _cuda_page(page: Any, what: str, nbytes: int, writable: bool, device: Any) -> tuple[int, Any]:
    if not _is_tensor(page) or page.device != device:
        where = page.device if _is_tensor(page) else "the host"
        raise UnsupportedValueError(f"{what} is on {where} but the caches are on {device}: gather "
                                    "into a page on the same GPU (TieredStore.put copies it down)")
    if not page.is_contiguous():
        raise InvalidArgumentError(f"{what} is not contiguous: call .contiguous() first")
    got = page.numel() * page.element_size()
    if got != nbytes:
        raise BufferSizeError(f"{what} has {got} bytes; a page of this layout has {nbytes}")
    return page.data_ptr(), page


def _vector_bytes(addrs: list[int], segments: list[tuple[int, int]], chunk: int) -> int:
    """The widest load (16, 8, 4, 2 or 1 bytes) every page, segment, stride and chunk allows."""
    bits = chunk
    for value in addrs:
        bits |= value
    for base, stride in segments:
        bits |= base | stride
    return min(16, bits & -bits) if bits else 16
