"""kvtier sim: hand-built traces with known answers, and properties on the real trace excerpt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvtier.sim import Prices, SimConfig, TierSpec, load_trace, simulate
from kvtier.specs import GPUSpec, ModelSpec

EXCERPT = Path(__file__).parent / "data" / "mooncake_conversation_excerpt.jsonl"
# 4 bytes of KV per token -> one 512-token block is 2048 bytes.
TINY = ModelSpec("tiny", layers=1, kv_heads=1, head_dim=1, active_params=1e9)
BLOCK = 2048
GPU = GPUSpec("test-gpu", tflops=100, hbm_gbs=1000, pcie_gbs=10, mfu=0.5)


def write_trace(tmp_path, requests) -> Path:
    """requests: (seconds, [block ids]); every block is a full 512-token block."""
    path = tmp_path / "trace.jsonl"
    path.write_text("".join(
        json.dumps({"timestamp": int(t * 1000), "input_length": 512 * len(blocks),
                    "output_length": 10, "hash_ids": blocks}) + "\n" for t, blocks in requests))
    return path


def run(tmp_path, requests, *tiers, **cfg):
    trace = load_trace(write_trace(tmp_path, requests))
    return simulate(trace, SimConfig(tiers=tuple(tiers), model=TINY, gpu=GPU, **cfg))


def test_lru_known_answer(tmp_path):
    r = run(tmp_path, [(0, [1, 2]), (1, [1, 3]), (2, [2])], TierSpec("host", 2 * BLOCK))
    assert (r.block_refs, r.logical_hits, r.physical_hits, r.prefix_hits) == (5, 2, 1, 1)
    assert r.misses == {"never_stored": 3, "evicted:host": 1}
    assert r.eviction_regret == 1 and r.evictions["host"] == 2
    assert r.logical_hit_rate == 2 / 5 and r.physical_hit_rate == 1 / 5


def test_ttl_policy_evicts_earliest_deadline_not_least_recent(tmp_path):
    requests = [(0, [1]), (1, [2]), (2, [1]), (3, [3]), (4, [1])]
    lru = run(tmp_path, requests, TierSpec("host", 2 * BLOCK, ttl_s=100), policy="lru")
    ttl = run(tmp_path, requests, TierSpec("host", 2 * BLOCK, ttl_s=100), policy="ttl")
    assert lru.physical_hits == 2 and lru.misses["evicted:host"] == 0  # LRU kept block 1
    assert ttl.physical_hits == 1 and ttl.misses["evicted:host"] == 1  # 1 had the earliest deadline


@pytest.mark.parametrize("refresh,hit_at_15s", [("read", True), ("write", False)])
def test_ttl_window_refresh_modes(tmp_path, refresh, hit_at_15s):
    r = run(tmp_path, [(0, [1]), (8, [1]), (15, [1])], TierSpec("host", 10 * BLOCK, ttl_s=10),
            refresh=refresh)
    assert r.physical_hits == 1 + hit_at_15s
    assert r.misses.get("expired:host", 0) == (0 if hit_at_15s else 1)
    assert r.expirations["host"] == (0 if hit_at_15s else 1)


def test_expired_blocks_live_on_in_the_disk_tier(tmp_path):
    r = run(tmp_path, [(0, [1]), (10, [1])], TierSpec("host", 10 * BLOCK, ttl_s=5), TierSpec("disk", 10 * BLOCK))
    assert r.hits_by_tier == {"disk": 1} and r.demotions == 1 and r.promotions == 1
    assert r.misses == {"never_stored": 1}


def test_demotion_promotion_and_eviction_from_the_last_tier(tmp_path):
    r = run(tmp_path, [(0, [1]), (1, [2]), (2, [1]), (3, [2]), (4, [3]), (5, [1])],
            TierSpec("host", BLOCK), TierSpec("disk", BLOCK))
    # t=1: 1 -> disk. t=2: disk hit on 1, promoted; 2 -> disk evicts 1 from disk (1 is in host).
    # t=3: disk hit on 2, promoted; 1 -> disk. t=4: miss on 3; 2 -> disk. t=5: 1 was evicted.
    assert r.hits_by_tier == {"disk": 2}
    assert r.misses == {"never_stored": 3, "evicted:disk": 1}


def test_prefix_hit_needs_every_earlier_block(tmp_path):
    r = run(tmp_path, [(0, [1, 2, 3]), (1, [9, 2, 3])], TierSpec("host", 100 * BLOCK))
    assert r.physical_hits == 2 and r.prefix_hits == 0 and r.hit_tokens == 0
    assert r.physical_token_hit_rate == 1024 / (6 * 512) and r.hit_rate_by_tier() == {"host": 2 / 6}
    r = run(tmp_path, [(0, [1, 2, 3]), (1, [1, 2, 9])], TierSpec("host", 100 * BLOCK))
    assert r.prefix_hits == 2 and r.hit_tokens == 1024 and r.token_hit_rate == 1024 / (6 * 512)


def test_dollars_and_gpu_seconds(tmp_path):
    r = run(tmp_path, [(0, [1, 2]), (1, [1, 2])], TierSpec("host", 100 * BLOCK),
            prices=Prices(uncached=3.0, cached=0.3, write=3.75))
    dollars = r.dollars()
    assert dollars["cached"] == pytest.approx(1024 * 0.3e-6)
    assert dollars["write"] == pytest.approx(1024 * 3.75e-6)
    assert dollars["uncached"] == 0
    assert dollars["no_cache"] == pytest.approx(2048 * 3e-6)
    assert dollars["saved"] == pytest.approx(dollars["no_cache"] - dollars["total"])
    prefill = 2 * 1e9 / (100e12 * 0.5)
    restore = 4 / 10e9
    assert r.gpu_seconds_saved == pytest.approx(1024 * (prefill - restore))


def test_a_full_tier_that_admits_nothing_charges_uncached(tmp_path):
    r = run(tmp_path, [(0, [1]), (1, [1])], TierSpec("host", BLOCK - 1))
    assert r.physical_hits == 0 and r.write_tokens == 0
    assert r.dollars()["uncached"] == pytest.approx(1024 * 3e-6)


# -- the real trace excerpt ------------------------------------------------------------------
@pytest.fixture(scope="module")
def excerpt():
    return load_trace(EXCERPT)


def _host(trace, capacity, ttl=None, policy="lru"):
    return simulate(trace, SimConfig(tiers=(TierSpec("host", capacity, ttl),), model=TINY, gpu=GPU,
                                     policy=policy))


def test_excerpt_infinite_capacity_reaches_the_logical_hit_rate(excerpt):
    r = _host(excerpt, 1 << 50)
    assert r.requests == 1000 and r.block_refs == sum(len(q.blocks) for q in excerpt.requests)
    assert r.physical_hit_rate == r.logical_hit_rate == r.prefix_hit_rate > 0.2
    assert set(r.misses) == {"never_stored"}


def test_excerpt_lru_hit_rate_is_monotone_in_capacity(excerpt):
    rates = [_host(excerpt, blocks * BLOCK) for blocks in (16, 64, 256, 1024, 4096, 16384)]
    physical = [r.physical_hit_rate for r in rates]
    prefix = [r.prefix_hit_rate for r in rates]
    assert physical == sorted(physical) and prefix == sorted(prefix)
    assert physical[0] < physical[-1]


@pytest.mark.parametrize("policy", ["lru", "ttl"])
def test_excerpt_one_hour_window_beats_five_minutes(excerpt, policy):
    five = _host(excerpt, 1 << 50, ttl=300, policy=policy)
    hour = _host(excerpt, 1 << 50, ttl=3600, policy=policy)
    assert hour.physical_hit_rate >= five.physical_hit_rate
    assert five.misses["expired:host"] > hour.misses.get("expired:host", 0)
