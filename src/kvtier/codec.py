"""Lossless page codecs for the slower tiers, and ``auto``: compress only where it pays.

Codecs (the id is what a page header records, so every page says how to read it back):

* ``none`` (0): the page as stored by the caller.
* ``zstd`` (1): zstd at ``level`` (python-zstandard; GIL released while it works).
* ``shuffle-zstd`` (2): the page split into byte planes first (``native.shuffle``: byte ``k``
  of every 2- or 4-byte element together; bit planes for 1-byte elements such as fp8), then
  zstd. KV pages are arrays of fp16/bf16/fp8 numbers whose exponent bytes repeat and whose
  mantissa bytes look random; splitting them lets zstd find the repetition.

Every codec is lossless: ``decode_into(encode(page)) == page`` byte for byte, for any bytes
(element size is a compression hint, never a correctness condition). Checksums always cover
the raw page, so a payload that decodes to anything else reads as ``corrupt``.

``auto`` (``CodecChooser``) is a decision, not a format: per batch it picks ``none`` or
``shuffle-zstd`` from what it has measured in the same process, the codec's throughput and
ratio on the pages it has actually seen, and the tier's own bandwidth. See ``CodecChooser``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import zstandard

from . import native
from .errors import KvtierError

CODEC_NONE, CODEC_ZSTD, CODEC_SHUFFLE_ZSTD = 0, 1, 2
CODEC_IDS = {"none": CODEC_NONE, "zstd": CODEC_ZSTD, "shuffle-zstd": CODEC_SHUFFLE_ZSTD}
CODEC_NAMES = {v: k for k, v in CODEC_IDS.items()}
CODEC_CHOICES = (*CODEC_IDS, "auto")
ELEMENT_BYTES = (1, 2, 4)

_local = threading.local()  # zstd contexts are not thread-safe: one per thread and level


class CodecError(KvtierError, ValueError):
    """A payload did not decode to a page of the expected length (readers treat it as corrupt)."""


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache = _local.__dict__.setdefault("compressors", {})
    if level not in cache:
        cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return cache[level]


def _decompressor() -> zstandard.ZstdDecompressor:
    if not hasattr(_local, "decompressor"):
        _local.decompressor = zstandard.ZstdDecompressor()
    return _local.decompressor


def encode(codec: int, page: memoryview, *, element_bytes: int = 2, level: int = 1) -> bytes | memoryview:
    """The payload that stores ``page`` under ``codec`` (``page`` itself for ``none``)."""
    if codec == CODEC_NONE:
        return page
    if codec == CODEC_SHUFFLE_ZSTD:
        planes = native.alloc_bytearray(page.nbytes)
        native.shuffle(planes, page, element_bytes)
        page = memoryview(planes)
    elif codec != CODEC_ZSTD:
        raise CodecError(f"unknown codec id {codec}; known: {CODEC_NAMES}")
    return _compressor(level).compress(page)


def decode_into(codec: int, payload: memoryview, out: memoryview, *, element_bytes: int = 2) -> None:
    """Decode ``payload`` into ``out`` (exactly the raw page's size); ``CodecError`` if the
    payload is damaged or decodes to a different length."""
    if codec == CODEC_NONE:
        if payload.nbytes != out.nbytes:
            raise CodecError(f"stored {payload.nbytes} bytes for a {out.nbytes}-byte page")
        native.copy(out, payload)
        return
    if codec not in (CODEC_ZSTD, CODEC_SHUFFLE_ZSTD):
        raise CodecError(f"unknown codec id {codec}; known: {CODEC_NAMES}")
    try:  # check the frame's declared size first: a damaged one must not allocate gigabytes
        declared = zstandard.frame_content_size(payload)
        if declared != out.nbytes:
            raise CodecError(f"payload declares {declared} bytes, the page has {out.nbytes}")
        raw = _decompressor().decompress(payload, max_output_size=out.nbytes)
    except zstandard.ZstdError as exc:
        raise CodecError(f"zstd payload does not decode: {exc}") from None
    if len(raw) != out.nbytes:
        raise CodecError(f"payload decodes to {len(raw)} bytes, the page has {out.nbytes}")
    if codec == CODEC_SHUFFLE_ZSTD:
        native.unshuffle(out, raw, element_bytes)
    else:
        native.copy(out, raw)


class _Ewma:
    """An exponentially weighted moving average (``None`` until the first sample)."""

    __slots__ = ("alpha", "value")

    def __init__(self, alpha: float = 0.2) -> None:
        self.alpha, self.value = alpha, None

    def add(self, sample: float) -> None:
        self.value = sample if self.value is None else self.value + self.alpha * (sample - self.value)


@dataclass
class CodecEstimates:
    """What ``auto`` knows, all measured in this process: bytes per second of raw page data
    through the codec, the raw/stored ratio, and the tier's bandwidth in stored bytes/s."""

    compress_Bps: float | None
    decompress_Bps: float | None
    ratio: float | None
    write_Bps: float | None
    read_Bps: float | None


class CodecChooser:
    """Picks the codec a tier writes next.

    A fixed codec is always picked. ``auto`` compares, per raw byte, the time to write a page
    and read it back once::

        none:         1/write + 1/read
        shuffle-zstd: 1/compress + 1/(ratio*write) + 1/decompress + 1/(ratio*read)

    and compresses only when that is at least ``margin`` faster, so it never makes the tier
    slower end to end by its own estimate. Every estimate is an EWMA of measurements: codec
    speeds and ratio from pages it encoded and decoded, the tier's bandwidth from its own
    transfers (``observe_io``). While it writes ``none`` it still *probes* (encodes one page
    and decodes it) when it has no codec figures yet, and then as long as probing has cost
    at most ``probe_budget`` of the tier's I/O time, so a slow disk or a changed workload is
    noticed without taxing a fast one.
    """

    def __init__(self, mode: str = "auto", *, element_bytes: int = 2, level: int = 1,
                 margin: float = 0.05, probe_budget: float = 0.02) -> None:
        if mode not in CODEC_CHOICES:
            raise ValueError(f"codec must be one of {', '.join(CODEC_CHOICES)}, got {mode!r}")
        self.mode, self.element_bytes, self.level = mode, element_bytes, level
        self.margin, self.probe_budget = margin, probe_budget
        self.candidate = CODEC_SHUFFLE_ZSTD
        self._compress, self._decompress, self._ratio = _Ewma(), _Ewma(), _Ewma()
        self._write, self._read = _Ewma(), _Ewma()
        self._probe_s = 0.0
        self._io_s = 0.0
        self.raw_bytes = 0      # raw page bytes written
        self.stored_bytes = 0   # payload bytes written (after the codec)
        self._lock = threading.Lock()

    # -- decisions ---------------------------------------------------------------------------
    def pick(self) -> int:
        """The codec for the next batch of pages."""
        if self.mode != "auto":
            return CODEC_IDS[self.mode]
        return self.candidate if self._compression_pays() else CODEC_NONE

    def should_probe(self) -> bool:
        """Whether to encode one page of a ``none`` batch anyway, to keep the figures fresh."""
        if self.mode != "auto":
            return False
        with self._lock:
            if self._ratio.value is None or self._decompress.value is None:
                return True
            return self._probe_s <= self.probe_budget * self._io_s

    def _compression_pays(self) -> bool:
        e = self.estimates()
        if None in (e.compress_Bps, e.decompress_Bps, e.ratio, e.write_Bps):
            return False
        read = e.read_Bps or e.write_Bps
        plain = 1 / e.write_Bps + 1 / read
        packed = 1 / e.compress_Bps + 1 / e.decompress_Bps + (1 / e.write_Bps + 1 / read) / e.ratio
        return packed < plain * (1 - self.margin)

    # -- measurements ------------------------------------------------------------------------
    def encode(self, codec: int, page: memoryview, *, probe: bool = False) -> tuple[int, bytes | memoryview]:
        """Encode ``page`` with ``codec`` and learn from it; returns the codec actually used
        and the payload (``none`` and the page itself where compression saved nothing)."""
        if codec == CODEC_NONE:
            return CODEC_NONE, page
        start = time.perf_counter()
        payload = encode(codec, page, element_bytes=self.element_bytes, level=self.level)
        seconds = time.perf_counter() - start
        with self._lock:
            self._compress.add(page.nbytes / max(seconds, 1e-9))
            self._ratio.add(page.nbytes / max(len(payload), 1))
            if probe:
                self._probe_s += seconds
        if probe and self._decompress.value is None:  # one decode, to know what reads cost
            self.decode_into(codec, memoryview(payload), memoryview(native.alloc_bytearray(page.nbytes)),
                             probe=True)
        if len(payload) >= page.nbytes:
            return CODEC_NONE, page
        return codec, payload

    def decode_into(self, codec: int, payload: memoryview, out: memoryview, *, probe: bool = False) -> None:
        """``decode_into`` for a page this tier stored, timed."""
        start = time.perf_counter()
        decode_into(codec, payload, out, element_bytes=self.element_bytes)
        if codec != CODEC_NONE:
            seconds = time.perf_counter() - start
            with self._lock:
                self._decompress.add(out.nbytes / max(seconds, 1e-9))
                if probe:
                    self._probe_s += seconds

    def observe_io(self, write: bool, nbytes: int, seconds: float) -> None:
        """The tier moved ``nbytes`` stored bytes in ``seconds`` of I/O (busy) time."""
        if nbytes <= 0 or seconds <= 0:
            return
        with self._lock:
            (self._write if write else self._read).add(nbytes / seconds)
            self._io_s += seconds

    def observe_written(self, raw: int, stored: int) -> None:
        with self._lock:
            self.raw_bytes += raw
            self.stored_bytes += stored

    def estimates(self) -> CodecEstimates:
        return CodecEstimates(self._compress.value, self._decompress.value, self._ratio.value,
                              self._write.value, self._read.value)

    def stats(self) -> dict[str, object]:
        """For ``stats().tier(...).extra``: the mode, what it picks now, and its figures."""
        e = self.estimates()
        mb = (lambda v: None if v is None else round(v / 1e6, 1))
        return {"codec": self.mode, "codec_now": CODEC_NAMES[self.pick()],
                "codec_ratio_written": (round(self.raw_bytes / self.stored_bytes, 4)
                                        if self.stored_bytes else None),
                "codec_ratio_est": None if e.ratio is None else round(e.ratio, 4),
                "compress_MBps": mb(e.compress_Bps), "decompress_MBps": mb(e.decompress_Bps),
                "write_MBps": mb(e.write_Bps), "read_MBps": mb(e.read_Bps)}
