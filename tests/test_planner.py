"""The load-vs-recompute planner, alone and through ``TieredStore.plan``."""

from __future__ import annotations

import pytest

from kvtier import HostTierConfig, StoreConfig, TieredStore
from kvtier.config import DiskTierConfig
from kvtier.planner import LOAD, RECOMPUTE, TierSpeed, make_plan

PAGE = 1 << 20  # bytes per page
TOKENS = 256    # tokens per page


def plan_for(tiers, bandwidths, tps=10_000.0, latency=0.0):
    speeds = {name: TierSpeed(bw, latency) for name, bw in bandwidths.items()}
    return make_plan(tiers, [PAGE] * len(tiers), speeds, prefill_tokens_per_s=tps, block_tokens=TOKENS)


def test_the_decision_flips_exactly_where_load_time_equals_recompute_time():
    # 4 disk pages: load = 4 MiB / bw, recompute = 4 * 256 / 10,000 tok/s = 0.1024 s,
    # equal at bw = 4 MiB / 0.1024 s
    equal = 4 * PAGE / (4 * TOKENS / 10_000)
    faster = plan_for(["disk"] * 4, {"disk": equal * 1.000001})
    slower = plan_for(["disk"] * 4, {"disk": equal * 0.999999})
    assert faster.load_blocks == 4 and faster.ranges[0].action == LOAD
    assert slower.load_blocks == 0 and slower.ranges[0].action == RECOMPUTE
    assert faster.ranges[0].load_s == pytest.approx(faster.ranges[0].recompute_s, rel=1e-5)


def test_latency_counts_once_per_run():
    equal_bw = 2 * PAGE / (2 * TOKENS / 10_000 - 0.01)  # 10 ms of latency eats part of the budget
    assert plan_for(["disk"] * 2, {"disk": equal_bw * 1.0001}, latency=0.01).load_blocks == 2
    assert plan_for(["disk"] * 2, {"disk": equal_bw * 0.9999}, latency=0.01).load_blocks == 0


def test_a_fast_host_prefix_loads_and_a_slow_disk_tail_is_recomputed():
    plan = plan_for(["host", "host", "disk", "disk", None, "host"], {"host": 10e9, "disk": 1e6})
    assert [(r.start, r.stop, r.tier, r.action) for r in plan.ranges] == [
        (0, 2, "host", LOAD), (2, 4, "disk", RECOMPUTE), (4, 6, None, RECOMPUTE)]
    assert plan.load_blocks == 2 and plan.hit_blocks == 4 and plan.tokens_to_prefill == 4 * TOKENS
    assert plan.estimated_s < plan.recompute_all_s


def test_a_slow_run_is_still_loaded_when_a_fast_run_after_it_pays_for_it():
    # engines load a contiguous prefix: disk (slightly slow) then lots of host (very fast)
    tiers = ["disk"] + ["host"] * 8
    plan = plan_for(tiers, {"disk": 0.9 * PAGE / (TOKENS / 10_000), "host": 10e9})
    assert plan.load_blocks == 9
    assert plan.ranges[0].load_s > plan.ranges[0].recompute_s  # a loss, outweighed by the host run


def test_nothing_stored_means_recompute_everything():
    plan = plan_for([None, None], {})
    assert plan.load_blocks == 0 and plan.tokens_to_prefill == 2 * TOKENS
    assert plan_for([], {}).ranges == ()


@pytest.mark.parametrize("kwargs, message", [
    (dict(prefill_tokens_per_s=0, block_tokens=16), "prefill_tokens_per_s must be > 0"),
    (dict(prefill_tokens_per_s=1.0, block_tokens=0), "block_tokens must be >= 1"),
])
def test_bad_figures_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_plan(["host"], [PAGE], {"host": TierSpeed(1e9)}, **kwargs)


SLOT = 64 << 10


def test_store_plan_uses_where_pages_are_and_injected_or_measured_speeds(tmp_path):
    config = StoreConfig(
        host=HostTierConfig(capacity_bytes=2 * SLOT, slot_bytes=SLOT, prefault=False),
        disk=DiskTierConfig(paths=[str(tmp_path)], capacity_bytes=64 * SLOT, min_free_bytes=0,
                            fsync="never", codec="none", promote_on_read=False),
        block_tokens=16)
    with TieredStore(config) as store:
        keys = [f"p{i}".encode() for i in range(5)]
        for i, key in enumerate(keys[:4]):
            assert store.put(key, bytes([i]) * SLOT)  # p0, p1 end up on disk only
        slow_disk = {"disk": TierSpeed(1e3), "host": TierSpeed(1e12)}
        plan = store.plan(keys, 1_000.0, speeds=slow_disk)
        # the disk run comes first and is not worth it; engines load a prefix, so nothing loads
        assert [(r.tier, r.action) for r in plan.ranges] == [("disk", RECOMPUTE), ("host", RECOMPUTE),
                                                             (None, RECOMPUTE)]
        assert plan.load_blocks == 0 and plan.hit_blocks == 4
        assert store.plan(keys, 1_000.0, speeds={"disk": TierSpeed(1e12)}).load_blocks == 4
        assert store.stats().gets == 0  # planning is not reading
        # measured: after disk reads the engine has a disk->host figure, and plan() uses it
        assert store.get(keys[0]) is not None
        route = store.stats().routes["disk->host"]
        assert route.bytes >= SLOT and route.bandwidth_Bps > 0
        assert store._measured_speed("disk").bandwidth_Bps == route.bandwidth_Bps
        assert store.plan(keys, 1_000.0, block_tokens=32).block_tokens == 32
