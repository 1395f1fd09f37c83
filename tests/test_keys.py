from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

from kvtier import BlockKey, InvalidKeyError, Namespace

NS = Namespace(model="llama-3-8b", fingerprint="rev1", dtype="bfloat16", layout="vllm-fa")


@given(st.lists(st.integers(0, 2**32 - 1), max_size=200), st.integers(1, 32))
def test_prefix_keys_are_chained(tokens, block_tokens):
    keys = NS.prefix_keys(tokens, block_tokens)
    assert len(keys) == len(tokens) // block_tokens
    # A prefix of the tokens yields a prefix of the keys.
    cut = len(tokens) // 2
    assert NS.prefix_keys(tokens[:cut], block_tokens) == keys[: cut // block_tokens]
    assert all(isinstance(k, BlockKey) and len(k) == 32 for k in keys)
    assert all(k.namespace_digest == NS.digest for k in keys)


def test_keys_diverge_after_first_different_block_and_stay_different():
    a = list(range(64))
    b = a[:16] + [9999] + a[17:]
    ka, kb = NS.prefix_keys(a, 16), NS.prefix_keys(b, 16)
    assert ka[0] == kb[0]
    assert all(x != y for x, y in zip(ka[1:], kb[1:]))  # same tokens later, different prefix


def test_partial_trailing_block_has_no_key():
    assert len(NS.prefix_keys(list(range(47)), 16)) == 2


def test_namespaces_isolate_models_tenants_and_shards():
    tokens = list(range(32))
    variants = [
        NS,
        Namespace(model="llama-3-8b", fingerprint="rev2", dtype="bfloat16", layout="vllm-fa"),
        Namespace(model="llama-3-8b", fingerprint="rev1", dtype="float16", layout="vllm-fa"),
        Namespace(model="llama-3-8b", fingerprint="rev1", dtype="bfloat16", layout="vllm-fa",
                  tp_rank=1, tp_world_size=2),
        Namespace(model="llama-3-8b", fingerprint="rev1", dtype="bfloat16", layout="vllm-fa",
                  tenant_salt=b"tenant-a"),
        Namespace(model="llama-3-8b", fingerprint="rev1", dtype="bfloat16", layout="vllm-fa",
                  tenant_salt="tenant-b"),
    ]
    first_keys = {ns.prefix_keys(tokens, 16)[0] for ns in variants}
    assert len(first_keys) == len(variants)
    # Same inputs, same keys: keys are stable across processes (no random seeds).
    assert Namespace(model="llama-3-8b", fingerprint="rev1", dtype="bfloat16",
                     layout="vllm-fa").prefix_keys(tokens, 16) == NS.prefix_keys(tokens, 16)


def test_tenant_salt_does_not_appear_in_keys():
    salt = b"super-secret-salt"
    ns = Namespace(model="m", tenant_salt=salt)
    for key in ns.prefix_keys(list(range(64)), 16):
        assert salt not in bytes(key)


def test_numpy_token_ids_match_lists():
    tokens = np.arange(100, dtype=np.int64)
    assert NS.prefix_keys(tokens, 10) == NS.prefix_keys(list(range(100)), 10)


@pytest.mark.parametrize("tokens", [[-1], [2**32], ["a"], [1.5]])
def test_bad_token_ids_raise(tokens):
    with pytest.raises(InvalidKeyError, match="token ids"):
        NS.prefix_keys(tokens * 16, 16)


@pytest.mark.parametrize("block_tokens", [0, -4, 2.5])
def test_bad_block_tokens_raise(block_tokens):
    with pytest.raises(InvalidKeyError, match="block_tokens"):
        NS.prefix_keys([1, 2, 3], block_tokens)


def test_block_key_round_trip_and_validation():
    key = NS.key(b"\x01" * 16)
    assert BlockKey.from_bytes(bytes(key)) == key
    assert key.chain_digest == b"\x01" * 16
    with pytest.raises(InvalidKeyError):
        NS.key(b"short")
    with pytest.raises(InvalidKeyError):
        BlockKey.from_bytes(b"x" * 31)


def test_namespace_validation():
    with pytest.raises(InvalidKeyError):
        Namespace(model="")
    with pytest.raises(InvalidKeyError):
        Namespace(model="m", tp_rank=2, tp_world_size=2)
