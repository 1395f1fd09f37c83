"""``kvtier bench``'s default mode (the workload benchmark) at tiny size, so it cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvtier.bench.workload import WorkloadSettings, run_workload
from kvtier.cli import app

EXCERPT = Path(__file__).parent / "data" / "mooncake_conversation_excerpt.jsonl"
PNG = b"\x89PNG\r\n\x1a\n"
# 368 KiB pages (SmolLM2-135M, 16 tokens); a slow prefill, so loading always beats recomputing;
# a host tier of four pages, so most hits come from disk.
TINY = dict(model="smollm2-135m", block_tokens=16, sessions=4, turns=3, system_prompts=2,
            system_tokens=64, turn_tokens=32, prefill_tokens_per_s=100.0, host_bytes=4 * 16 * 23040,
            disk_bytes=64 << 20, restore_tokens=(16, 64), restore_trials=1, verify_every=1)


def check_consistent(doc: dict) -> None:
    """What every workload result must satisfy, whatever the workload."""
    loaded = sum(doc["loaded"].values())
    assert doc["pages"] == loaded + doc["recomputed"]
    assert 0 <= doc["logical_hits"] <= doc["pages"] and loaded <= doc["logical_hits"]
    assert doc["hit_rate"] == pytest.approx(loaded / doc["pages"])
    assert doc["logical_hit_rate"] == pytest.approx(doc["logical_hits"] / doc["pages"])
    assert 0 <= doc["prefill_tokens"] <= doc["tokens"]
    assert doc["modelled_ttft_s"] <= doc["baseline_ttft_s"] + sum(doc["restore_s"].values())
    assert set(doc["restore_s"]) == set(doc["loaded"])
    assert sum(doc["stopped_by"].values()) <= doc["requests"]
    for point in doc["restore"]:
        assert point["host_s"] > 0 and point["disk_s"] > 0
        assert point["recompute_s"] == pytest.approx(point["tokens"] / doc["prefill_tokens_per_s"])


def test_cli_workload_json_and_plot(tmp_path):
    out, plot = tmp_path / "run.json", tmp_path / "bench.png"
    result = CliRunner().invoke(app, [
        "bench", "--model", "smollm2-135m", "--block-tokens", "16", "--sessions", "3", "--turns", "2",
        "--host-capacity", "2MiB", "--disk-capacity", "32MiB", "--prefill-tps", "100",
        "--restore-tokens", "16,32", "--disk-dir", str(tmp_path / "d"), "--plot", str(plot),
        "--json", "-o", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc == json.loads(result.stdout)
    assert doc["mode"] == "workload" and doc["requests"] == 6 and doc["page_bytes"] == 16 * 23040
    assert [p["tokens"] for p in doc["restore"]] == [16, 32] and [p["pages"] for p in doc["restore"]] == [1, 2]
    check_consistent(doc)
    assert doc["loaded"] and doc["verified_pages"] > 0
    assert plot.read_bytes()[:8] == PNG
    assert not any((tmp_path / "d").iterdir())  # the scratch directory is removed


def test_pages_come_back_from_host_and_disk_and_windows_close():
    result = run_workload(WorkloadSettings(**TINY, ttl_s=200.0, think_s=150.0))
    doc = result.to_json()
    check_consistent(doc)
    assert doc["loaded"].get("host", 0) > 0 and doc["loaded"].get("disk", 0) > 0
    assert result.verified_pages == sum(doc["loaded"].values())  # verify_every=1: every page
    assert doc["stopped_by"].get("expired", 0) > 0  # a 200 s window, 150 s mean think time
    assert doc["tier_bytes"]["disk"]["in"] > 0 and doc["tier_bytes"]["disk"]["out"] > 0


def test_no_window_means_no_expiry_and_a_fast_gpu_means_recompute():
    kept = run_workload(WorkloadSettings(**TINY, ttl_s=None)).to_json()
    assert "expired" not in kept["stopped_by"]
    fast = run_workload(WorkloadSettings(**{**TINY, "prefill_tokens_per_s": 1e12}, ttl_s=None)).to_json()
    check_consistent(fast)
    assert fast["loaded"] == {} and fast["declined"] > 0  # stored, but recomputing is faster
    assert fast["stopped_by"].get("recompute_chosen", 0) > 0
    assert fast["logical_hits"] == kept["logical_hits"]  # same requests, same reuse


def test_trace_replay(tmp_path):
    out = tmp_path / "run.json"
    result = CliRunner().invoke(app, [
        "bench", "--trace", str(EXCERPT), "--requests", "30", "--page-bytes", "64KiB",
        "--prefill-tps", "1000", "--host-capacity", "1MiB", "--disk-capacity", "64MiB",
        "--restore-tokens", "512,1024", "--plot", "", "--json", "-o", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    check_consistent(doc)
    assert doc["requests"] == 30 and doc["block_tokens"] == 512 and doc["source"] == str(EXCERPT)
    assert doc["logical_hits"] > 0 and doc["loaded"]  # conversations reuse their prefixes
    assert [p["pages"] for p in doc["restore"]] == [1, 2]


def test_table_output(tmp_path):
    result = CliRunner().invoke(app, [
        "bench", "--model", "smollm2-135m", "--block-tokens", "16", "--sessions", "2", "--turns", "2",
        "--host-capacity", "2MiB", "--disk-capacity", "16MiB", "--prefill-tps", "100",
        "--restore-tokens", "16", "--plot", str(tmp_path / "p.png")])
    assert result.exit_code == 0, result.output
    for text in ("request pages", "hit rate: logical", "time to bring back a cached prefix",
                 "compared byte for byte", "plot:"):
        assert text in result.output


@pytest.mark.parametrize("args, message", [
    (["--ttl", "soon"], "cannot parse duration"),
    (["--model", "gpt-99"], "unknown model"),
    (["--prefill-gpu", "tpu"], "unknown GPU"),
    (["--trace", "/nonexistent/trace.jsonl"], "no such file"),
    (["--restore-tokens", "0"], "restore_tokens"),
    (["--host-capacity", "lots"], "cannot parse size"),
])
def test_bad_options_are_clear_errors(args, message):
    result = CliRunner().invoke(app, ["bench", *args])
    assert result.exit_code == 2 and message in result.output, result.output
