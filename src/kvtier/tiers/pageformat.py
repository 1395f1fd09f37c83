"""The header every persisted page carries, so a reader can prove the bytes are the right ones.

Layout (little-endian, at the start of a 4096-byte header block that precedes the payload)::

    magic      4s   b"KVTP"
    version    u16  FORMAT_VERSION
    codec      u8   kvtier.codec id: 0 none, 1 zstd, 2 shuffle-zstd
    flags      u8   element size the shuffle used (1, 2 or 4); 0 for other codecs
    raw_len    u64  length of the page as the caller stored it
    stored_len u64  length of the payload on the medium (== raw_len for codec none, less otherwise)
    checksum   u64  xxh3-64 of the raw page
    key        32s  the BlockKey (namespace digest + chain digest)
    head_sum   u64  xxh3-64 of all the bytes above

A reader accepts a page only if the header checksum, magic, version, key and lengths match
what the index expects and the payload (decoded by its codec) matches the checksum: anything
else is ``corrupt``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .. import native
from ..codec import CODEC_NAMES, CODEC_NONE, CODEC_SHUFFLE_ZSTD, ELEMENT_BYTES

MAGIC = b"KVTP"
FORMAT_VERSION = 1
HEADER_BLOCK = 4096  # the header occupies one O_DIRECT-aligned block
_BODY = struct.Struct("<4sHBBQQQ32s")
_SUM = struct.Struct("<Q")
HEADER_BYTES = _BODY.size + _SUM.size


@dataclass(frozen=True)
class PageFormat:
    """How a page's payload is stored: codec id, payload length, shuffle element size."""

    codec: int
    stored_len: int
    element_bytes: int = 0



def format_valid(codec: int, raw_len: int, stored_len: int, element_bytes: int) -> bool:
    """Whether a (codec, lengths, flags) combination is one kvtier could have written."""
    if codec == CODEC_NONE:
        return stored_len == raw_len and element_bytes == 0
    if codec not in CODEC_NAMES or not 0 < stored_len < raw_len:
        return False
    return element_bytes in ELEMENT_BYTES if codec == CODEC_SHUFFLE_ZSTD else element_bytes == 0


def pack_header(buf: memoryview, key: bytes, raw_len: int, stored_len: int, checksum: int,
                codec: int = CODEC_NONE, element_bytes: int = 0) -> None:
    """Write the header into the first ``HEADER_BYTES`` of ``buf``."""
    _BODY.pack_into(buf, 0, MAGIC, FORMAT_VERSION, codec, element_bytes, raw_len, stored_len,
                    checksum, key)
    _SUM.pack_into(buf, _BODY.size, native.checksum(buf[:_BODY.size]))


def parse_header(buf: memoryview, key: bytes, raw_len: int, checksum: int) -> PageFormat | None:
    """The payload's format if ``buf`` starts with an intact, valid header for exactly this
    key, raw length and checksum; ``None`` otherwise."""
    try:
        magic, version, codec, flags, got_len, stored_len, got_sum, got_key = _BODY.unpack_from(buf, 0)
        (head_sum,) = _SUM.unpack_from(buf, _BODY.size)
    except struct.error:
        return None
    if (head_sum != native.checksum(buf[:_BODY.size]) or magic != MAGIC or version != FORMAT_VERSION
            or got_key != key or got_len != raw_len or got_sum != checksum
            or not format_valid(codec, raw_len, stored_len, flags)):
        return None
    return PageFormat(codec, stored_len, flags)


def header_matches(buf: memoryview, key: bytes, raw_len: int, checksum: int) -> bool:
    """Whether ``buf`` starts with an intact header for exactly this key, length and checksum."""
    return parse_header(buf, key, raw_len, checksum) is not None


def read_header(buf: memoryview) -> dict | None:
    """The decoded header (for ``kvtier inspect``), or ``None`` if it is not intact."""
    try:
        magic, version, codec, flags, raw_len, stored_len, checksum, key = _BODY.unpack_from(buf, 0)
        (head_sum,) = _SUM.unpack_from(buf, _BODY.size)
    except struct.error:
        return None
    if magic != MAGIC or head_sum != native.checksum(buf[:_BODY.size]):
        return None
    return {"version": version, "codec": codec, "element_bytes": flags, "raw_len": raw_len,
            "stored_len": stored_len, "checksum": checksum, "key": key}
