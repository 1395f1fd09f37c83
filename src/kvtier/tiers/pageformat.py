"""The header every persisted page carries, so a reader can prove the bytes are the right ones.

Layout (little-endian, at the start of a 4096-byte header block that precedes the payload)::

    magic      4s   b"KVTP"
    version    u16  FORMAT_VERSION
    codec      u8   0 = none (the codec issue adds more)
    flags      u8   reserved, 0
    raw_len    u64  length of the page as the caller stored it
    stored_len u64  length of the payload on the medium (== raw_len for codec none)
    checksum   u64  xxh3-64 of the raw page
    key        32s  the BlockKey (namespace digest + chain digest)
    head_sum   u64  xxh3-64 of all the bytes above

A reader accepts a page only if the header checksum, magic, version, key and lengths match
what the index expects and the payload's checksum matches: anything else is ``corrupt``.
"""

from __future__ import annotations

import struct

from .. import native

MAGIC = b"KVTP"
FORMAT_VERSION = 1
CODEC_NONE = 0
HEADER_BLOCK = 4096  # the header occupies one O_DIRECT-aligned block
_BODY = struct.Struct("<4sHBBQQQ32s")
_SUM = struct.Struct("<Q")
HEADER_BYTES = _BODY.size + _SUM.size


def pack_header(buf: memoryview, key: bytes, raw_len: int, stored_len: int, checksum: int,
                codec: int = CODEC_NONE) -> None:
    """Write the header into the first ``HEADER_BYTES`` of ``buf``."""
    _BODY.pack_into(buf, 0, MAGIC, FORMAT_VERSION, codec, 0, raw_len, stored_len, checksum, key)
    _SUM.pack_into(buf, _BODY.size, native.checksum(buf[:_BODY.size]))


def header_matches(buf: memoryview, key: bytes, raw_len: int, checksum: int) -> bool:
    """Whether ``buf`` starts with an intact header for exactly this key, length and checksum."""
    try:
        magic, version, codec, _flags, got_len, stored_len, got_sum, got_key = _BODY.unpack_from(buf, 0)
        (head_sum,) = _SUM.unpack_from(buf, _BODY.size)
    except struct.error:
        return False
    return (head_sum == native.checksum(buf[:_BODY.size]) and magic == MAGIC
            and version == FORMAT_VERSION and codec == CODEC_NONE and got_key == key
            and got_len == raw_len == stored_len and got_sum == checksum)


def read_header(buf: memoryview) -> dict | None:
    """The decoded header (for ``kvtier inspect``), or ``None`` if it is not intact."""
    try:
        magic, version, codec, _flags, raw_len, stored_len, checksum, key = _BODY.unpack_from(buf, 0)
        (head_sum,) = _SUM.unpack_from(buf, _BODY.size)
    except struct.error:
        return None
    if magic != MAGIC or head_sum != native.checksum(buf[:_BODY.size]):
        return None
    return {"version": version, "codec": codec, "raw_len": raw_len, "stored_len": stored_len,
            "checksum": checksum, "key": key}
