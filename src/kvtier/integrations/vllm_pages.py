"""vLLM's paged KV cache as kvtier pages: gather blocks into contiguous pages, scatter them back.

vLLM hands a connector one tensor per attention layer (``register_kv_caches``). Whatever the
attention backend's layout (CPU: ``[2, num_blocks, heads, block, dim]``-like, FlashAttention:
``[2, num_blocks, block, heads, dim]``, MLA: ``[num_blocks, block, dim]``), exactly one axis is
the block axis (its size is the cache's ``num_blocks``). Moving that axis first gives each block
as one slice per layer. A kvtier page is ``blocks_per_page`` consecutive blocks of a request,
every layer, laid out as::

    page = [layer 0: block 0 .. block n-1][layer 1: ...] ...     (each block in the layer's own
                                                                  element order and dtype)

so one page is one contiguous byte buffer and a store read or write moves it whole. Gathers
and scatters are one indexed copy per layer for a whole batch of pages, on the cache's device
(CPU here; CUDA tensors go through a pinned host staging buffer).
"""

from __future__ import annotations

import hashlib
import math
import mmap
from dataclasses import dataclass
from typing import Mapping

import torch

from ..errors import ConfigError


@dataclass(frozen=True, slots=True)
class _Layer:
    name: str
    blocks: torch.Tensor   # the layer's cache with the block axis first: [num_blocks, *rest]
    offset: int            # byte offset of this layer inside a page
    nbytes: int            # bytes of this layer inside a page (blocks_per_page blocks)


class PagedKV:
    """The engine's per-layer KV tensors, addressed by block, and the page format over them.

    Args:
        kv_caches: layer name -> that layer's KV cache tensor (vLLM's ``register_kv_caches``).
            Layers that share one tensor (KV sharing) are stored once.
        num_blocks: blocks in the cache (the size of each tensor's block axis).
        blocks_per_page: engine blocks per kvtier page.
    """

    def __init__(self, kv_caches: Mapping[str, torch.Tensor], num_blocks: int, blocks_per_page: int) -> None:
        if not kv_caches:
            raise ConfigError("vLLM registered no KV cache tensors with the connector")
        self.blocks_per_page = blocks_per_page
        self.num_blocks = num_blocks
        layers, seen, offset, shapes = [], set(), 0, []
        for name, tensor in kv_caches.items():
            ident = (tensor.data_ptr(), tuple(tensor.shape))
            if ident in seen:
                continue
            seen.add(ident)
            axis = _block_axis(name, tensor, num_blocks)
            blocks = tensor.movedim(axis, 0)
            block_bytes = math.prod(blocks.shape[1:]) * tensor.element_size()
            nbytes = block_bytes * blocks_per_page
            layers.append(_Layer(name, blocks, offset, nbytes))
            shapes.append(f"{axis}:{tuple(tensor.shape[:axis] + tensor.shape[axis + 1:])}:{tensor.dtype}")
            offset += -(-nbytes // 64) * 64  # every layer starts aligned for any dtype view
        self.layers: tuple[_Layer, ...] = tuple(layers)
        self.page_bytes = offset
        self.device = layers[0].blocks.device
        self.dtype = str(layers[0].blocks.dtype).removeprefix("torch.")
        # What a page's bytes depend on: every layer's block shape, axis order and dtype.
        self.layout_id = hashlib.blake2b("|".join(shapes).encode(), digest_size=8).hexdigest()

    def new_pages(self, count: int, *, aligned: bool = False) -> torch.Tensor:
        """A ``[count, page_bytes]`` uint8 host buffer (page-aligned ``mmap`` when ``aligned``,
        so disk reads go straight into it with ``O_DIRECT``; pinned when the cache is on CUDA)."""
        if aligned:
            raw = mmap.mmap(-1, max(1, count * self.page_bytes))
            return torch.frombuffer(raw, dtype=torch.uint8, count=count * self.page_bytes).view(count, self.page_bytes)
        pin = self.device.type == "cuda"
        return torch.empty((count, self.page_bytes), dtype=torch.uint8, pin_memory=pin)

    def gather(self, block_ids: torch.Tensor, pages: torch.Tensor, layer: int | None = None) -> None:
        """Copy blocks into pages: ``pages[i]`` gets blocks ``block_ids[i, :]`` (every layer, or
        only ``layer``).

        Args:
            block_ids: int64 ``[n, blocks_per_page]`` engine block ids (CPU tensor).
            pages: uint8 ``[n, page_bytes]`` host tensor (``new_pages``), written in place.
        """
        flat = block_ids.reshape(-1).to(self.device, non_blocking=True)
        n = block_ids.shape[0]
        for i, spec in enumerate(self.layers):
            if layer is not None and i != layer:
                continue
            rest = spec.blocks.shape[1:]
            dst = pages[:, spec.offset:spec.offset + spec.nbytes].view(spec.blocks.dtype)
            dst.view(n, self.blocks_per_page, *rest).copy_(
                spec.blocks.index_select(0, flat).view(n, self.blocks_per_page, *rest), non_blocking=True)
        self._sync()

    def scatter(self, pages: torch.Tensor, block_ids: torch.Tensor) -> None:
        """Copy pages into blocks: block ``block_ids[i, j]`` gets block ``j`` of ``pages[i]``;
        entries ``< 0`` are skipped (blocks the engine already holds)."""
        keep = block_ids >= 0
        if not bool(keep.any()):
            return
        flat = block_ids[keep].to(self.device, non_blocking=True)
        n = block_ids.shape[0]
        for spec in self.layers:
            rest = spec.blocks.shape[1:]
            src = pages[:, spec.offset:spec.offset + spec.nbytes].view(spec.blocks.dtype)
            src = src.view(n, self.blocks_per_page, *rest)[keep]
            spec.blocks.index_copy_(0, flat, src.to(self.device, non_blocking=True))
        self._sync()

    def layer_index(self, name: str) -> int | None:
        for i, spec in enumerate(self.layers):
            if spec.name == name:
                return i
        return None

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()


def _block_axis(name: str, tensor: torch.Tensor, num_blocks: int) -> int:
    axes = [i for i, size in enumerate(tensor.shape) if size == num_blocks]
    if not axes:
        raise ConfigError(f"cannot find the block axis of layer {name!r}: its KV cache has shape "
                          f"{tuple(tensor.shape)} and none of its axes has the cache's {num_blocks} blocks")
    return axes[0]

