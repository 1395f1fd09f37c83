"""Turning user values and output buffers into flat byte views, with clear errors."""

from __future__ import annotations

from typing import Any

from .errors import NonContiguousError, ReadOnlyBufferError, UnsupportedValueError

_ACCEPTED = "bytes, bytearray, memoryview, a numpy array or a CPU torch tensor"


def _torch_view(tensor: Any, what: str) -> memoryview:
    if tensor.device.type != "cpu":
        raise UnsupportedValueError(
            f"{what} is a {tensor.device.type} tensor; this store has no device tier, so copy it to "
            "the CPU first (tensor.cpu()) or configure a device tier"
        )
    if not tensor.is_contiguous():
        raise NonContiguousError(f"{what} is a non-contiguous tensor: call .contiguous() first")
    flat = tensor.detach().reshape(-1)
    import torch  # only reached when the caller already uses torch

    return memoryview(flat.view(torch.uint8).numpy())


def byte_view(value: Any, what: str = "value") -> memoryview:
    """A 1-D unsigned-byte view of ``value``'s memory, without copying.

    Raises ``UnsupportedValueError`` for unsupported types and ``NonContiguousError`` for
    strided arrays/tensors.
    """
    kind = type(value)
    if kind is bytes or kind is bytearray:
        return memoryview(value)
    if kind.__module__.startswith("torch") and hasattr(value, "is_contiguous"):
        return _torch_view(value, what)
    try:
        view = value if kind is memoryview else memoryview(value)
    except TypeError:
        raise UnsupportedValueError(
            f"{what} must be {_ACCEPTED}, got {type(value).__module__}.{type(value).__qualname__}"
        ) from None
    if view.format == "B" and view.ndim == 1 and view.c_contiguous:
        return view
    if not view.c_contiguous:
        raise NonContiguousError(
            f"{what} is not C-contiguous: pass np.ascontiguousarray(x) / x.contiguous() instead"
        )
    try:
        return view.cast("B")
    except TypeError:
        pass
    if hasattr(value, "view") and hasattr(value, "reshape"):  # numpy dtypes memoryview can't cast
        import numpy as np

        return memoryview(value.reshape(-1).view(np.uint8))
    raise UnsupportedValueError(f"{what} has buffer format {view.format!r}, which cannot be viewed as bytes")


def writable_byte_view(out: Any, what: str = "out") -> memoryview:
    """Like ``byte_view`` but the buffer must be writable (``ReadOnlyBufferError`` otherwise)."""
    view = byte_view(out, what)
    if view.readonly:
        raise ReadOnlyBufferError(f"{what} is read-only: pass a bytearray, numpy array or tensor")
    return view
