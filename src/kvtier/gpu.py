"""The GPU runtime of kvtier: whether CUDA is usable here, the compiled kernels, pinning.

torch is the GPU runtime (tensors, streams, events, the caching allocators);
``kvtier._cuda`` (csrc/cuda/, built by setup.py where nvcc is present) adds the paged
gather/scatter kernels and raw runtime calls, all taking addresses, sizes and stream
handles as ints. Nothing here imports torch or touches CUDA at import time.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from .errors import KvtierError

__all__ = ["GpuUnavailableError", "GpuStatus", "status", "available", "require", "cuda_module",
           "paged_copy", "pin_host", "unpin_host"]


class GpuUnavailableError(KvtierError, RuntimeError):
    """A CUDA path was asked for where CUDA is not usable; the message says why (no
    ``kvtier._cuda`` built, no driver, no device, or a CPU-only torch)."""


@dataclass(frozen=True, slots=True)
class GpuStatus:
    """What this process can do on the GPU."""

    built: bool              # kvtier._cuda was compiled and imports
    runtime_version: int     # CUDA runtime it links statically (e.g. 13000), 0 if not built
    devices: int             # CUDA devices the runtime sees (0 without a driver)
    torch_cuda: bool         # torch is installed with CUDA and sees a device
    reason: str | None       # why CUDA paths are unusable, None when they work

    @property
    def available(self) -> bool:
        return self.reason is None


_module: ModuleType | None = None
_module_error: str | None = None
_loaded = False


def cuda_module() -> ModuleType | None:
    """``kvtier._cuda``, or None when it was not built (see ``status().reason``)."""
    global _module, _module_error, _loaded
    if not _loaded:
        try:
            from . import _cuda  # type: ignore[attr-defined]  # compiled, no stub
        except ImportError as exc:
            _module_error = (f"kvtier._cuda is not built ({exc}); reinstall kvtier where nvcc is "
                             "installed (and KVTIER_NO_CUDA is unset)")
        else:
            _module = _cuda
        _loaded = True
    return _module


def _torch_cuda() -> tuple[bool, str | None]:
    try:
        import torch
    except ImportError:
        return False, "torch is not installed (it is kvtier's GPU runtime)"
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        return False, f"torch {torch.__version__} ({build}) sees no CUDA device"
    return True, None


def status() -> GpuStatus:
    """Probe (cheaply, without creating a CUDA context) what works here."""
    mod = cuda_module()
    devices, reason = 0, _module_error
    if mod is not None:
        devices, why = mod.device_status()
        if not devices:
            reason = f"CUDA runtime {mod.RUNTIME_VERSION}: {why}"
    torch_ok, torch_why = _torch_cuda() if "torch" in sys.modules or mod is not None and devices else (False, None)
    if reason is None and not torch_ok:
        reason = torch_why
    return GpuStatus(mod is not None, getattr(mod, "RUNTIME_VERSION", 0), devices, torch_ok, reason)


def available() -> bool:
    """Whether the CUDA paths (kernels, device copies, device tier) work in this process."""
    return status().available


def require() -> ModuleType:
    """``kvtier._cuda`` when CUDA paths work, else ``GpuUnavailableError`` saying why."""
    st = status()
    if st.reason is not None:
        raise GpuUnavailableError(f"CUDA is not usable here: {st.reason}")
    return cuda_module()  # type: ignore[return-value]


def paged_copy(gather: bool, table: Any, num_pages: int, blocks_per_page: int, num_segments: int,
               chunk_bytes: int, vector_bytes: int, device: Any, stream: Any = None) -> None:
    """Enqueue one gather/scatter launch on ``stream`` (default: ``device``'s current stream).

    ``table``: int64 numpy array ``[pages (num_pages) | segments (2 * num_segments) |
    block_ids (num_pages * blocks_per_page)]`` of device addresses and ids (csrc/paged.h);
    it is staged through pinned memory and uploaded on the same stream, so the call never
    waits for the GPU.
    """
    mod = require()
    import torch

    stream = torch.cuda.current_stream(device) if stream is None else stream
    host = torch.from_numpy(table).pin_memory()
    with torch.cuda.stream(stream):
        dev = host.to(device, non_blocking=True)  # freed into `stream`'s pool: reuse is ordered
    base = dev.data_ptr()
    seg_at = base + 8 * num_pages
    ids_at = seg_at + 16 * num_segments
    mod.paged_copy(gather, base, seg_at, ids_at, num_pages, blocks_per_page, num_segments,
                   chunk_bytes, vector_bytes, _index(device), stream.cuda_stream)


def _index(device: Any) -> int:
    if device.index is not None:
        return device.index
    import torch

    return torch.cuda.current_device()


def pin_host(address: int, nbytes: int) -> str | None:
    """Page-lock ``nbytes`` of host memory at ``address`` for DMA (``cudaHostRegister``) when
    a GPU is usable; returns None when pinned, else why not (never raises)."""
    mod = cuda_module()
    if mod is not None:
        devices, why = mod.device_status()
        if not devices:
            return why
        try:
            mod.host_register(address, nbytes)
        except RuntimeError as exc:
            return str(exc)
        return None
    if "torch" not in sys.modules:  # never import torch (seconds) just to find no GPU
        return _module_error
    ok, why = _torch_cuda()
    if not ok:
        return why
    import torch

    err = torch.cuda.cudart().cudaHostRegister(address, nbytes, 1)  # cudaHostRegisterPortable
    return None if int(err) == 0 else f"cudaHostRegister failed with error {int(err)}"


def unpin_host(address: int) -> None:
    """Undo ``pin_host`` (best effort: the memory is about to be unmapped anyway)."""
    mod = cuda_module()
    if mod is not None:
        try:
            mod.host_unregister(address)
        except RuntimeError:
            pass
        return
    import torch

    torch.cuda.cudart().cudaHostUnregister(address)
