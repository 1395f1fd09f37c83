"""Exceptions raised by kvtier.

Full tiers, missing blocks and unreachable remotes are normal results (``False`` / ``None``),
never exceptions. Exceptions are for bad input and misuse; each names what to do about it.
"""

from __future__ import annotations


class KvtierError(Exception):
    """Base class of every error kvtier raises on purpose."""


class ConfigError(KvtierError, ValueError):
    """A configuration value is invalid (wrong type, out of range, unknown name)."""


class InvalidArgumentError(KvtierError, ValueError):
    """An argument is out of range (e.g. a negative ``ttl_s``)."""


class InvalidKeyError(KvtierError, TypeError):
    """A key is neither a ``BlockKey`` nor ``bytes``, or token ids are out of range."""


class UnsupportedValueError(KvtierError, TypeError):
    """A value is not a buffer kvtier can store (bytes-like, numpy array or CPU torch tensor)."""


class NonContiguousError(KvtierError, ValueError):
    """A value or output buffer is not C-contiguous; call ``.contiguous()``/``np.ascontiguousarray``."""


class ValueTooLargeError(KvtierError, ValueError):
    """A value is larger than the tier's slot size; raise ``slot_bytes`` or use smaller pages."""


class BufferSizeError(KvtierError, ValueError):
    """An output buffer's size does not match the stored page (``get_into``)."""


class ReadOnlyBufferError(KvtierError, ValueError):
    """An output buffer given to ``get_into`` is read-only."""


class StoreClosedError(KvtierError, RuntimeError):
    """The store was used after ``close()``."""


class TierInUseError(KvtierError, RuntimeError):
    """A persistent tier's directory is already open in another process (or store)."""


class RemoteAuthError(KvtierError, PermissionError):
    """The remote tier's server refused kvtier's credentials (or requires some and none were
    given); set ``remote.username`` / ``remote.password`` (``KVTIER_REMOTE_PASSWORD``)."""
