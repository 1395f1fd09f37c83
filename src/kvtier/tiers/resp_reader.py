"""Pipelined GET replies read straight from the socket into the caller's page buffers.

RESP2 or RESP3: a GET answers a bulk string (``$<length>``), a null (``$-1`` or ``_``) or an
error (``-``); anything else (a RESP3 push frame) fails the call and drops the connection.

redis-py reads each bulk reply into a new ``bytes`` object. For a page that is an allocation
(page faults when malloc hands out fresh memory) plus, in the tier, a copy into the caller's
buffer: on the development VM that put the tier's 256 KiB reads at 40-65 % of a plain GET
loop. ``BulkReader`` parses the replies itself: the ``$<length>`` line and the value's
header land in a small buffer; the payload goes from the socket into the caller's page
with ``recv_into``, so a page read costs one pass over its bytes, plus the checksum.

It reads from a redis-py connection's socket, after that connection sent the commands. The
connection's parser is never used for these replies, so both stay consistent as long as every
reply is consumed; on any error the caller must disconnect the connection (bytes may be left).
"""

from __future__ import annotations

import socket
from typing import Callable

from redis.exceptions import ResponseError

_SMALL_READ = 4096  # at most this much is read into the buffer at once: payloads bypass it


class BulkReader:
    """The replies of one pipeline, read from ``sock``. Not thread-safe (one connection)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray(2 * _SMALL_READ)
        self._view = memoryview(self._buf)
        self._start = self._end = 0

    def _fill(self) -> None:
        if self._start == self._end:
            self._start = self._end = 0
        elif self._end + _SMALL_READ > len(self._buf):  # move the unread bytes to the front
            left = self._end - self._start
            self._buf[:left] = self._buf[self._start:self._end]
            self._start, self._end = 0, left
        got = self._sock.recv_into(self._view[self._end:self._end + _SMALL_READ])
        if not got:
            raise ConnectionError("Redis closed the connection in the middle of a reply")
        self._end += got

    def line(self) -> bytes:
        """The next reply line, without its CRLF."""
        while True:
            at = self._buf.find(b"\r\n", self._start, self._end)
            if at >= 0:
                line = bytes(self._buf[self._start:at])
                self._start = at + 2
                return line
            if self._end - self._start > _SMALL_READ:
                raise ConnectionError("Redis sent a reply line longer than 4 KiB")
            self._fill()

    def read_into(self, dst: memoryview) -> None:
        """Exactly ``len(dst)`` bytes into ``dst``: what is buffered, then from the socket."""
        take = min(self._end - self._start, dst.nbytes)
        dst[:take] = self._view[self._start:self._start + take]
        self._start += take
        rest = dst[take:]
        while rest.nbytes:
            got = self._sock.recv_into(rest)
            if not got:
                raise ConnectionError("Redis closed the connection in the middle of a value")
            rest = rest[got:]

    def end_of_value(self) -> None:
        """Consume the CRLF after a bulk value."""
        while self._end - self._start < 2:
            self._fill()
        if self._buf[self._start:self._start + 2] != b"\r\n":
            raise ConnectionError("Redis reply: a bulk value not followed by CRLF")
        self._start += 2


def read_bulk(reader: BulkReader, head_bytes: int, target: Callable[[memoryview], memoryview | None],
              ) -> tuple[memoryview, memoryview] | None | ResponseError:
    """One GET reply: ``None`` for a missing key, a ``ResponseError`` for an error reply, else
    ``(head, payload)``: the value's first ``head_bytes`` (or all of a shorter value) and the
    rest. ``target(head)`` chooses where the rest goes, given the head: a buffer of exactly
    the rest's length (the caller's page), or ``None`` for a new buffer."""
    line = reader.line()
    kind = line[:1]
    if kind == b"-":
        return ResponseError(line[1:].decode(errors="replace"))
    if kind == b"_":  # RESP3's null (redis-py may speak RESP3): the key is absent
        return None
    if kind != b"$":
        raise ConnectionError(f"Redis reply: expected a bulk string to GET, got {line[:40]!r}")
    length = int(line[1:])
    if length < 0:
        return None
    head = memoryview(bytearray(min(head_bytes, length)))
    reader.read_into(head)
    rest = length - head.nbytes
    dst = target(head) if rest else None
    if dst is None or dst.nbytes != rest:
        dst = memoryview(bytearray(rest))
    reader.read_into(dst)
    reader.end_of_value()
    return head, dst
