"""Lossless codecs: byte-exact round trips, native == Python filter, corrupt payloads caught,
pages stored compressed on the disk tier, and ``auto``'s decision."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from kvtier import HostTierConfig, MissReason, StoreConfig, TieredStore, _fallback, native
from kvtier.codec import (CODEC_IDS, CODEC_NONE, CODEC_SHUFFLE_ZSTD, CodecChooser, CodecError,
                          decode_into, encode)
from kvtier.config import DiskTierConfig
from kvtier.errors import ConfigError
from kvtier.tiers.disk import DATA_FILE, align_up
from kvtier.tiers.pageformat import HEADER_BLOCK

CODECS = sorted(CODEC_IDS.values())
ELEMENTS = st.sampled_from([1, 2, 4])


def round_trip(codec: int, data: bytes, element_bytes: int) -> bytes:
    payload = encode(codec, memoryview(data), element_bytes=element_bytes)
    out = bytearray(len(data))
    decode_into(codec, memoryview(payload), memoryview(out), element_bytes=element_bytes)
    return bytes(out)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(min_size=1, max_size=5000), codec=st.sampled_from(CODECS), element=ELEMENTS)
def test_any_bytes_round_trip_through_every_codec(data, codec, element):
    assert round_trip(codec, data, element) == data


@settings(max_examples=100, deadline=None)
@given(bits=hnp.arrays(np.uint16, hnp.array_shapes(max_dims=3, max_side=48)),
       codec=st.sampled_from(CODECS))
def test_every_fp16_and_bf16_bit_pattern_round_trips(bits, codec):
    raw = bits.tobytes()  # each 16-bit pattern is an fp16 and a bf16 value (NaN, inf, subnormal...)
    assert round_trip(codec, raw, 2) == raw


@settings(max_examples=100, deadline=None)
@given(values=hnp.arrays(np.float16, hnp.array_shapes(max_dims=2, max_side=64),
                         elements=st.floats(width=16)),
       codec=st.sampled_from(CODECS))
def test_fp16_arrays_round_trip(values, codec):
    out = np.frombuffer(round_trip(codec, values.tobytes(), 2), np.float16).reshape(values.shape)
    assert out.tobytes() == values.tobytes()


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=3000), element=ELEMENTS)
def test_native_and_python_filters_produce_identical_bytes(data, element):
    if native.backend != "native":
        pytest.skip("the compiled extension is not installed")
    ours, theirs = bytearray(len(data)), bytearray(len(data))
    native.shuffle(ours, data, element)
    _fallback.shuffle(theirs, data, element)
    assert ours == theirs
    back, back_py = bytearray(len(data)), bytearray(len(data))
    native.unshuffle(back, bytes(ours), element)
    _fallback.unshuffle(back_py, bytes(ours), element)
    assert back == back_py == data


@pytest.mark.parametrize("impl", [native, _fallback], ids=["native", "python"])
def test_filter_rejects_bad_arguments_alike(impl):
    with pytest.raises(ValueError, match="element_bytes must be 1, 2 or 4, got 3"):
        impl.shuffle(bytearray(8), bytes(8), 3)
    with pytest.raises(ValueError, match="size mismatch: dst has 8 bytes, src has 9 bytes"):
        impl.unshuffle(bytearray(8), bytes(9), 2)
    buf = bytearray(16)
    with pytest.raises(ValueError, match="overlap"):
        impl.shuffle(memoryview(buf)[:8], memoryview(buf)[4:12], 2)


def test_byte_planes_put_each_elements_bytes_together():
    page = bytes([1, 2, 3, 4, 5, 6, 7])  # three 2-byte elements and a 1-byte tail
    planes = bytearray(7)
    native.shuffle(planes, page, 2)
    assert planes == bytes([1, 3, 5, 2, 4, 6, 7])


@pytest.mark.parametrize("codec", [c for c in CODECS if c != CODEC_NONE])
def test_damaged_payloads_raise_codec_error_never_return_other_bytes(codec):
    page = (np.arange(4096, dtype=np.float16) / 7).tobytes()
    payload = bytearray(encode(codec, memoryview(page)))
    out = memoryview(bytearray(len(page)))
    with pytest.raises(CodecError):
        decode_into(codec, memoryview(payload[:-3]), out)                 # truncated
    with pytest.raises(CodecError):
        decode_into(codec, memoryview(payload), memoryview(bytearray(len(page) - 1)))  # wrong size
    payload[5] ^= 0x40  # the frame header's declared size: must not allocate what it claims
    with pytest.raises(CodecError):
        decode_into(codec, memoryview(payload), out)


# -- the disk tier stores pages compressed ----------------------------------------------------
SLOT = 16384


def store_config(path: Path, codec: str, **disk) -> StoreConfig:
    return StoreConfig(
        host=HostTierConfig(capacity_bytes=2 * SLOT, slot_bytes=SLOT, prefault=False),
        disk=DiskTierConfig(paths=[str(path)], capacity_bytes=64 * SLOT, min_free_bytes=0,
                            fsync="never", codec=codec, **disk))


def kv_like_page(seed: int, nbytes: int = SLOT) -> bytes:
    """fp16 numbers of one magnitude, as KV is (compressible exponents, noisy mantissas)."""
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1, nbytes // 2).astype(np.float16).tobytes()


@pytest.mark.parametrize("codec", ["none", "zstd", "shuffle-zstd", "auto"])
def test_pages_round_trip_through_disk_with_each_codec_and_after_restart(tmp_path, codec):
    pages = {f"k{i}".encode(): kv_like_page(i, SLOT - 100 * i) for i in range(8)}
    with TieredStore(store_config(tmp_path, codec)) as store:
        for key, value in pages.items():
            assert store.put(key, value)
        for key, value in pages.items():  # six of them come back from disk
            assert bytes(store.get(key)) == value
        extra = store.stats().tier("disk").extra
        assert extra["codec"] == codec
    with TieredStore(store_config(tmp_path, "none")) as store:  # every page says how to read it
        for key, value in pages.items():
            assert bytes(store.get(key)) == value
    if codec in ("zstd", "shuffle-zstd"):
        assert extra["codec_ratio_written"] > 1.05


def test_a_damaged_compressed_page_is_a_corrupt_miss(tmp_path):
    with TieredStore(store_config(tmp_path, "shuffle-zstd")) as store:
        for i in range(4):
            assert store.put(bytes([i]), kv_like_page(i))
        store.flush()
        # slot 0 holds the first demoted page: flip a byte in the middle of its payload
        with open(tmp_path / DATA_FILE, "r+b") as fh:
            fh.seek(HEADER_BLOCK + 4000)
            byte = fh.read(1)
            fh.seek(-1, os.SEEK_CUR)
            fh.write(bytes([byte[0] ^ 0x01]))
        results = [store.get(bytes([i])) for i in range(4)]
        bad = [i for i, r in enumerate(results) if r is None]
        assert len(bad) == 1 and store.miss_reason(bytes(bad)) is MissReason.CORRUPT
        assert all(bytes(r) == kv_like_page(i) for i, r in enumerate(results) if r is not None)


def test_compressed_pages_read_fewer_bytes(tmp_path):
    """A compressed page's transfer is its header plus its payload, not the whole slot."""
    with TieredStore(store_config(tmp_path, "shuffle-zstd")) as store:
        zeros = bytes(SLOT)
        for i in range(3):
            assert store.put(bytes([i]), zeros)
        store.flush()
        disk = store._disk
        formats = [disk.stored_format(slot, SLOT) for slot in range(3)]
    assert all(codec == CODEC_SHUFFLE_ZSTD and align_up(stored) == 4096 for codec, stored in formats)


@pytest.mark.parametrize("bad, message", [
    (dict(codec="lz4"), "disk.codec must be one of"),
    (dict(codec_level=0), "codec_level must be an int from 1 to 19"),
    (dict(codec_element_bytes=3), "codec_element_bytes must be one of"),
])
def test_bad_codec_settings_are_clear_errors(tmp_path, bad, message):
    with pytest.raises(ConfigError, match=message):
        DiskTierConfig(paths=[str(tmp_path)], **bad)


# -- auto --------------------------------------------------------------------------------------
def chooser_with(*, compress, decompress, ratio, write, read=None, margin=0.05) -> CodecChooser:
    chooser = CodecChooser("auto", margin=margin)
    chooser._compress.value, chooser._decompress.value, chooser._ratio.value = compress, decompress, ratio
    chooser._write.value, chooser._read.value = write, read
    return chooser


def test_auto_compresses_a_slow_tier_and_not_a_fast_one():
    codec = dict(compress=600e6, decompress=900e6, ratio=1.2)
    assert chooser_with(**codec, write=50e6).pick() == CODEC_SHUFFLE_ZSTD   # Redis over a WAN, HDD
    assert chooser_with(**codec, write=3e9).pick() == CODEC_NONE            # NVMe


def test_auto_flips_where_compression_stops_paying():
    # none: 2/B; compressed: 1/C + 1/D + 2/(r B). With C = D = 1 GB/s and r = 1.25 they are
    # equal at B = 200 MB/s; the default 5 % margin asks for 0.95 * 2/B, which moves it to 150.
    codec = dict(compress=1e9, decompress=1e9, ratio=1.25)
    assert chooser_with(**codec, write=199e6, margin=0).pick() == CODEC_SHUFFLE_ZSTD
    assert chooser_with(**codec, write=201e6, margin=0).pick() == CODEC_NONE
    assert chooser_with(**codec, write=149e6).pick() == CODEC_SHUFFLE_ZSTD
    assert chooser_with(**codec, write=151e6).pick() == CODEC_NONE


def test_auto_probes_first_then_within_its_budget():
    chooser = CodecChooser("auto", probe_budget=0.02)
    assert chooser.should_probe()  # nothing measured yet
    page = memoryview(kv_like_page(3))
    chooser.encode(CODEC_SHUFFLE_ZSTD, page, probe=True)
    assert chooser.estimates().decompress_Bps is not None  # a probe also times one decode
    spent = chooser._probe_s
    chooser.observe_io(True, 1 << 20, spent / 0.02 * 0.5)   # I/O so far: half the budget's base
    assert not chooser.should_probe()
    chooser.observe_io(True, 1 << 20, spent / 0.02)
    assert chooser.should_probe()


def test_fixed_codecs_never_probe_and_always_pick_themselves():
    for name, ident in CODEC_IDS.items():
        chooser = CodecChooser(name)
        assert chooser.pick() == ident and not chooser.should_probe()


# -- real KV pages (SmolLM2-135M, K after RoPE and V; see kvtier/data/kvpages/README.md) -------
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_real_kv_pages_round_trip_and_shuffle_beats_plain_zstd(dtype):
    from kvtier.kvdata import kv_pages

    for raw in kv_pages(dtype):
        page = memoryview(raw)
        sizes = {}
        for name, codec in CODEC_IDS.items():
            payload = encode(codec, page, element_bytes=2)
            sizes[name] = len(payload)
            out = bytearray(page.nbytes)
            decode_into(codec, memoryview(payload), memoryview(out), element_bytes=2)
            assert out == raw
        # lossless fp16 KV: ~1.1x (only the exponent plane compresses); bf16 a little more
        assert sizes["shuffle-zstd"] < sizes["zstd"] < sizes["none"]
        assert 1.05 < sizes["none"] / sizes["shuffle-zstd"] < 2.0


def test_real_kv_pages_are_what_the_manifest_says():
    from kvtier.kvdata import kv_manifest, kv_pages

    manifest = kv_manifest()
    layers, two, tokens, heads, dim = manifest["shape"]
    assert (layers, two, heads, dim) == (30, 2, 3, 64)
    assert manifest["page_bytes"] == layers * two * tokens * heads * dim * 2
    pages = np.frombuffer(b"".join(kv_pages("float16")), np.float16).reshape(-1, *manifest["shape"])
    assert np.isfinite(pages).all() and (pages != 0).mean() > 0.99  # real numbers, not padding
    with pytest.raises(ValueError, match="supported"):
        kv_pages("fp8")
