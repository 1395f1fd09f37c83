"""Block keys: a namespace digest plus a chained prefix digest (DESIGN.md §3).

``chained_i = xxh3_128(chained_{i-1} || tokens_i)`` with ``chained_{-1}`` = the namespace digest,
tokens encoded as little-endian uint32. Two namespaces (models, dtypes, layouts, tp ranks,
tenants) never produce the same key, and a key at position i names the whole prefix up to i.
"""

from __future__ import annotations

import hashlib
import json
import sys
from array import array
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import xxhash

from .errors import InvalidKeyError

DIGEST_BYTES = 16
_KEY_FORMAT = 1  # bump when the namespace encoding or chaining changes


class BlockKey(bytes):
    """The key of one KV page: 16-byte namespace digest followed by a 16-byte chained digest.

    A ``bytes`` subclass so that hashing and equality run at C speed in the index.
    """

    __slots__ = ()

    def __new__(cls, namespace_digest: bytes, chain_digest: bytes) -> "BlockKey":
        if len(namespace_digest) != DIGEST_BYTES or len(chain_digest) != DIGEST_BYTES:
            raise InvalidKeyError(
                f"BlockKey needs two {DIGEST_BYTES}-byte digests, got "
                f"{len(namespace_digest)} and {len(chain_digest)} bytes"
            )
        return super().__new__(cls, bytes(namespace_digest) + bytes(chain_digest))

    @classmethod
    def from_bytes(cls, raw: bytes) -> "BlockKey":
        """Rebuild a key from its 32-byte serialized form (``bytes(key)``)."""
        if len(raw) != 2 * DIGEST_BYTES:
            raise InvalidKeyError(f"a serialized BlockKey is {2 * DIGEST_BYTES} bytes, got {len(raw)}")
        return cls(raw[:DIGEST_BYTES], raw[DIGEST_BYTES:])

    @property
    def namespace_digest(self) -> bytes:
        return bytes(self[:DIGEST_BYTES])

    @property
    def chain_digest(self) -> bytes:
        return bytes(self[DIGEST_BYTES:])

    def __repr__(self) -> str:
        return f"BlockKey(ns={self[:4].hex()}…, chain={self[DIGEST_BYTES:].hex()})"


def _digest(data: bytes) -> bytes:
    return xxhash.xxh3_128_digest(data)


@dataclass(frozen=True, slots=True)
class Namespace:
    """What a block's bytes depend on besides the tokens; blocks of two namespaces never mix.

    Args:
        model: model id, e.g. ``"meta-llama/Llama-3.1-8B"``.
        fingerprint: weights fingerprint (a revision or a hash of the weights).
        dtype: KV dtype, e.g. ``"bfloat16"``.
        layout: the KV layout id (engine cache layout and page size).
        tp_rank / tp_world_size: tensor-parallel shard of the KV this process holds.
        tenant_salt: optional secret per tenant; tenants with different salts never share blocks.
    """

    model: str
    fingerprint: str = ""
    dtype: str = ""
    layout: str = ""
    tp_rank: int = 0
    tp_world_size: int = 1
    tenant_salt: bytes | str | None = None
    digest: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise InvalidKeyError("Namespace.model must be a non-empty string (the model id)")
        if not (0 <= self.tp_rank < self.tp_world_size):
            raise InvalidKeyError(
                f"Namespace needs 0 <= tp_rank < tp_world_size, got {self.tp_rank} / {self.tp_world_size}"
            )
        salt = self.tenant_salt
        if isinstance(salt, str):
            salt = salt.encode()
        canonical = json.dumps(
            [_KEY_FORMAT, self.model, self.fingerprint, self.dtype, self.layout,
             self.tp_rank, self.tp_world_size],
            separators=(",", ":"),
        ).encode()
        # The salt is mixed in with a keyed hash so it never appears in any derived key.
        material = hashlib.blake2b(canonical, digest_size=DIGEST_BYTES, key=salt or b"").digest()
        object.__setattr__(self, "digest", material)

    def key(self, chain_digest: bytes) -> BlockKey:
        """A key for a digest the engine computed itself (e.g. vLLM block hashes, 16 bytes)."""
        return BlockKey(self.digest, chain_digest)

    def key_for_bytes(self, raw: bytes) -> BlockKey:
        """A key for an arbitrary byte string (how plain ``bytes`` keys enter a namespace)."""
        return BlockKey(self.digest, _digest(self.digest + bytes(raw)))

    def prefix_keys(self, token_ids: Sequence[int] | Iterable[int], block_tokens: int) -> list[BlockKey]:
        """Chained keys of every *full* block of ``block_tokens`` tokens of ``token_ids``.

        A trailing partial block gets no key (engines cache full pages only). Token ids must be
        ints in ``[0, 2**32)``; a numpy array or torch tensor of ints is accepted.
        """
        if not isinstance(block_tokens, int) or block_tokens <= 0:
            raise InvalidKeyError(f"block_tokens must be a positive int, got {block_tokens!r}")
        if hasattr(token_ids, "tolist"):
            token_ids = token_ids.tolist()
        try:
            encoded = array("I", token_ids)
        except (OverflowError, TypeError) as exc:
            raise InvalidKeyError(f"token ids must be ints in [0, 2**32): {exc}") from None
        if sys.byteorder != "little":
            encoded.byteswap()
        raw = encoded.tobytes()
        step = 4 * block_tokens
        chain = self.digest
        keys: list[BlockKey] = []
        for start in range(0, len(raw) - step + 1, step):
            chain = _digest(chain + raw[start:start + step])
            keys.append(BlockKey(self.digest, chain))
        return keys


DEFAULT_NAMESPACE = Namespace(model="default")


def as_block_key(key: object) -> BlockKey:
    """``key`` as a ``BlockKey``: itself, or plain bytes hashed into ``DEFAULT_NAMESPACE``."""
    if type(key) is BlockKey:
        return key
    if isinstance(key, BlockKey):
        return BlockKey.from_bytes(bytes(key))
    if isinstance(key, (bytes, bytearray, memoryview)):
        return DEFAULT_NAMESPACE.key_for_bytes(bytes(key))
    raise InvalidKeyError(
        f"keys are BlockKey or bytes, got {type(key).__name__}: use Namespace.prefix_keys(...) "
        "or encode strings (key.encode())"
    )
