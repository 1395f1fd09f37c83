"""KVLayout maths and the CPU reference gather/scatter against hand-built paged caches.

The oracle builds each expected page with plain tensor indexing on uint8 views of the cache
(so fp8 and bf16 need no arithmetic support), independently of the segment tables the
library computes. Both byte backends (native C++ and the pure-Python twin) are checked.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from kvtier import _fallback, native  # noqa: E402
from kvtier.errors import (BufferSizeError, InvalidArgumentError, ReadOnlyBufferError,  # noqa: E402
                           UnsupportedValueError)
from kvtier.layout import DTYPES, KVLayout, LayoutMismatchError, gather, scatter  # noqa: E402

from conftest import _native  # noqa: E402

BACKENDS = [pytest.param(_native, id="native", marks=pytest.mark.skipif(_native is None, reason="no _native")),
            pytest.param(_fallback, id="python")]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    monkeypatch.setattr(native, "paged_copy", request.param.paged_copy)
    return request.param


def random_tensor(shape, dtype, gen):
    """A tensor of ``dtype`` whose bytes are random (any bit pattern, NaNs included)."""
    e = DTYPES[str(dtype).removeprefix("torch.")]
    raw = torch.randint(0, 256, (*shape[:-1], shape[-1] * e), dtype=torch.uint8, generator=gen)
    return raw.view(dtype)


def u8(t):
    return t.view(torch.uint8)


def build(layout: KVLayout, gen, *, padded=False):
    """(caches, oracle(ids [P, n]) -> list of expected page bytes) for ``layout``."""
    L, N, B, H, D = (layout.num_layers, layout.num_blocks, layout.block_size, layout.num_kv_heads,
                     layout.head_dim)
    dt = getattr(torch, layout.dtype)

    def rows(ids):  # SGLang token rows of pages ids
        return (torch.as_tensor(ids)[:, None] * B + torch.arange(B)).reshape(-1)

    if layout.kind == "vllm":
        if padded:  # a block stride larger than the block: strides come from the tensor
            caches = [random_tensor((2, N, B + 1, H, D), dt, gen)[:, :, :B] for _ in range(L)]
        else:
            caches = [random_tensor((2, N, B, H, D), dt, gen) for _ in range(L)]

        def oracle(ids):
            return torch.stack([u8(c)[:, ids].reshape(2, -1, H, D * u8(c).shape[-1] // D) for c in caches])
    elif layout.kind == "vllm_cross_layer":
        caches = random_tensor((N, L, 2, B, H, D), dt, gen)

        def oracle(ids):
            got = u8(caches)[ids]  # [n, L, 2, B, H, De]
            return got.permute(1, 2, 0, 3, 4, 5).reshape(L, 2, -1, H, got.shape[-1])
    elif layout.kind == "sglang_layer_first":
        T = N * B + (B if padded else 0)
        caches = ([random_tensor((T, H, D), dt, gen) for _ in range(L)],
                  random_tensor((L, T, H, D), dt, gen))

        def oracle(ids):
            r = rows(ids)
            return torch.stack([torch.stack([u8(caches[0][l])[r], u8(caches[1][l])[r]]) for l in range(L)])
    elif layout.kind == "sglang_page_first":
        T = N * B + (B if padded else 0)
        caches = random_tensor((2, T, L, H, D), dt, gen)

        def oracle(ids):
            return u8(caches)[:, rows(ids)]
    else:  # mla
        caches = random_tensor((L, N, B, D), dt, gen)

        def oracle(ids):
            return torch.stack([u8(caches[l])[ids].reshape(-1, u8(caches).shape[-1]) for l in range(L)])

    return caches, lambda ids: [oracle(list(row)).contiguous().reshape(-1) for row in ids]


def make_layout(kind, L, N, B, H, D, dtype):
    if kind == "mla":
        return KVLayout.mla(L, N, B, kv_lora_rank=D, rope_dim=2, dtype=dtype)
    return getattr(KVLayout, kind)(L, N, B, H, D, dtype)


KINDS = ["vllm", "vllm_cross_layer", "sglang_layer_first", "sglang_page_first", "mla"]


@st.composite
def cases(draw):
    kind = draw(st.sampled_from(KINDS))
    L, N = draw(st.integers(1, 4)), draw(st.integers(1, 12))
    B, H = draw(st.sampled_from([1, 2, 3, 16])), draw(st.integers(1, 3))
    D = draw(st.sampled_from([1, 3, 8, 16]))
    dtype = draw(st.sampled_from(sorted(DTYPES)))
    per_page = draw(st.integers(1, 4))
    pages = draw(st.integers(1, 3))
    ids = draw(st.lists(st.lists(st.integers(0, N - 1), min_size=per_page, max_size=per_page),
                        min_size=pages, max_size=pages))
    padded = draw(st.booleans())
    seed = draw(st.integers(0, 2**31))
    return make_layout(kind, L, N, B, H, D, dtype), ids, padded, seed


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=cases())
def test_gather_matches_hand_built_pages(backend, case):
    layout, ids, padded, seed = case
    caches, oracle = build(layout, torch.Generator().manual_seed(seed), padded=padded)
    n = len(ids[0])
    pages = [torch.empty(layout.page_shape(n), dtype=getattr(torch, layout.dtype)) for _ in ids]
    gather(layout, caches, ids, pages)
    for page, want in zip(pages, oracle(ids)):
        assert page.numel() * page.element_size() == layout.page_bytes(n)
        assert torch.equal(u8(page).reshape(-1), want)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=cases(), data=st.data())
def test_scatter_is_the_inverse_of_gather(backend, case, data):
    layout, _, padded, seed = case
    n = data.draw(st.integers(1, layout.num_blocks))
    flat = data.draw(st.permutations(range(layout.num_blocks)))[:n]
    per_page = data.draw(st.sampled_from([d for d in range(1, n + 1) if n % d == 0]))
    ids = [flat[i:i + per_page] for i in range(0, n, per_page)]
    gen = torch.Generator().manual_seed(seed)
    pages = [bytearray(torch.randint(0, 256, (layout.page_bytes(per_page),), dtype=torch.uint8,
                                     generator=gen).numpy().tobytes()) for _ in ids]
    caches, _ = build(layout, gen, padded=padded)
    zero = [t.zero_() for t in _tensors(caches)]
    scatter(layout, pages, caches, ids)
    back = [bytearray(layout.page_bytes(per_page)) for _ in ids]
    gather(layout, caches, ids, back)
    assert back == pages
    written = sum(int(u8(t).count_nonzero()) for t in zero)
    assert written == sum(sum(1 for b in p if b) for p in pages)  # nothing outside the blocks


def _tensors(caches):
    if isinstance(caches, torch.Tensor):
        return [caches]
    return [t for part in caches for t in _tensors(part)]


def test_one_page_and_host_buffers(backend):
    layout = KVLayout.vllm(2, 8, 4, 2, 8, "bf16")
    caches, oracle = build(layout, torch.Generator().manual_seed(1))
    out = bytearray(layout.page_bytes(3))
    gather(layout, caches, [5, 0, 5], out)  # one page: a flat list; gather may repeat blocks
    assert bytes(out) == oracle([[5, 0, 5]])[0].numpy().tobytes()
    arr = np.empty(layout.page_bytes(3), dtype=np.uint8)
    layout.bind(caches).gather(np.array([5, 0, 5]), arr)
    assert arr.tobytes() == bytes(out)
    gather(layout, caches, [], out)  # nothing to do


def test_sizes_and_formats():
    llama70 = KVLayout.vllm(80, 1000, 16, 8, 128, "bfloat16")
    assert llama70.bytes_per_token == 320 << 10  # DESIGN.md: 320 KiB/token
    assert llama70.page_bytes(16) == 256 * (320 << 10)
    assert llama70.page_shape(16) == (80, 2, 256, 8, 128)
    assert llama70.num_segments == 160 and llama70.chunk_bytes == 16 * 8 * 128 * 2
    same = [KVLayout.vllm(4, 10, 16, 2, 64, "fp16"), KVLayout.vllm_cross_layer(4, 10, 16, 2, 64, "float16"),
            KVLayout.sglang_layer_first(4, 5, 32, 2, 64, "half")]
    assert len({lay.page_format(256 // lay.block_size) for lay in same}) == 1  # interchangeable pages
    page_first = KVLayout.sglang_page_first(4, 5, 32, 2, 64, "fp16")
    assert page_first.page_format(8) != same[0].page_format(16)
    assert page_first.page_shape(2) == (2, 64, 4, 2, 64) and page_first.num_segments == 2
    mla = KVLayout.mla(61, 100, 64, kv_lora_rank=512, rope_dim=64, dtype="fp8")
    assert mla.dtype == "float8_e4m3fn" and mla.head_dim == 576
    assert mla.bytes_per_token == 61 * 576 and mla.page_shape(1) == (61, 64, 576)
    with pytest.raises(InvalidArgumentError, match="dtype"):
        KVLayout.vllm(1, 1, 1, 1, 1, "int8")
    with pytest.raises(InvalidArgumentError, match="num_blocks"):
        KVLayout.vllm(1, 0, 1, 1, 1, "fp16")
    with pytest.raises(InvalidArgumentError, match="kind"):
        KVLayout("paged", 1, 1, 1, 1, 1, "fp16")


def test_bad_input_is_refused_before_copying(backend):
    layout = KVLayout.vllm(2, 8, 4, 2, 8, "fp16")
    caches, _ = build(layout, torch.Generator().manual_seed(2))
    page = bytearray(layout.page_bytes(2))
    with pytest.raises(InvalidArgumentError, match="out of range"):
        gather(layout, caches, [1, 8], page)
    with pytest.raises(InvalidArgumentError, match="out of range"):
        gather(layout, caches, [-1, 0], page)
    with pytest.raises(BufferSizeError):
        gather(layout, caches, [1, 2, 3], page)
    with pytest.raises(InvalidArgumentError, match="twice"):
        scatter(layout, [page, page], caches, [[1, 2], [2, 3]])
    with pytest.raises(InvalidArgumentError, match="2 rows but 1 pages"):
        gather(layout, caches, [[1, 2], [3, 4]], [page])
    with pytest.raises(LayoutMismatchError, match=r"caches\[1\] has shape"):
        gather(layout, [caches[0], caches[1][:, :4]], [1, 2], page)
    with pytest.raises(LayoutMismatchError, match="dtype"):
        gather(layout, [c.view(torch.bfloat16) for c in caches], [1, 2], page)
    with pytest.raises(LayoutMismatchError, match="3 tensors"):
        gather(layout, caches + [caches[0]], [1, 2], page)
    strided = [c.transpose(3, 4).contiguous().transpose(3, 4) for c in caches]  # [.., H, D] not dense
    with pytest.raises(LayoutMismatchError, match="not dense"):
        gather(layout, strided, [1, 2], page)
    with pytest.raises(ReadOnlyBufferError, match="read-only"):
        gather(layout, caches, [1, 2], bytes(page))
    with pytest.raises(InvalidArgumentError, match="integers"):
        gather(layout, caches, [1.0, 2.0], page)
    assert page == bytearray(len(page))  # nothing was copied by any refused call
    mla = KVLayout.mla(1, 4, 2, kv_lora_rank=4, rope_dim=0, dtype="fp16")
    with pytest.raises(UnsupportedValueError):
        gather(mla, [torch.zeros(4, 2, 4, dtype=torch.float16)], [0], torch.zeros(8, dtype=torch.float16, device="meta"))


def test_sglang_pool_accepts_its_spellings(backend):
    layout = KVLayout.sglang_layer_first(2, 4, 2, 1, 4, "fp16")
    gen = torch.Generator().manual_seed(3)
    stacked = random_tensor((2, 2, 9, 1, 4), torch.float16, gen)  # HiCache layer_first, one spare row
    pair = ([stacked[0][0], stacked[0][1]], [stacked[1][0], stacked[1][1]])
    a, b = bytearray(layout.page_bytes(2)), bytearray(layout.page_bytes(2))
    gather(layout, stacked, [3, 1], a)
    gather(layout, pair, [3, 1], b)
    assert a == b and any(a)
    with pytest.raises(LayoutMismatchError, match="token rows"):
        gather(layout, stacked[:, :, :7], [0], bytearray(layout.page_bytes(1)))
