"""``kvtier bench --peers`` (LMCache's CPU and disk backends and SGLang's HiCacheFile beside
kvtier) at tiny size: every side runs in its own process, as in the real benchmark."""

from __future__ import annotations

import functools
import importlib
import json

import pytest
from typer.testing import CliRunner

pytest.importorskip("torch", reason="torch is not installed")

from kvtier.bench import peers as bench
from kvtier.cli import app

cli_bench = importlib.import_module("kvtier.cli.bench")  # the module (kvtier.cli.bench is the command)

TINY_CLI = ["bench", "--peers", "--peers-sizes", "256KiB,512KiB", "--peers-bytes", "1MiB",
            "--peers-trials", "2"]
SIDES = {"lmcache_cpu": "kvtier_host", "lmcache_disk": "kvtier_disk", "hicache_file": "kvtier_sglang"}


@pytest.fixture
def small_sglang_host_tier(monkeypatch):
    """The benchmark keeps the SGLang backend's 1 GiB host tier; 4 MiB saves its prefault here."""
    monkeypatch.setattr(cli_bench, "PeersBenchSettings",
                        functools.partial(bench.PeersBenchSettings, sglang_host_capacity=4 << 20))


def _check_row(row: dict, page_bytes: int) -> None:
    assert row["kvtier_side"] == SIDES[row["peer"]] and row["page_bytes"] == page_bytes
    assert row["pages"] == (1 << 20) // page_bytes
    measures = ("write", "warm_read") if row["peer"] == "lmcache_cpu" else bench.MEASURES
    for measure in bench.MEASURES:
        if measure not in measures:  # DRAM has no cold read
            assert row["kvtier"][measure] is None and row["ratio"][measure] is None
            continue
        assert row["kvtier"][measure] > 0 and len(row["trials"]["kvtier"][measure]) == 2
        if row["skipped"] is None:
            assert row["peer_rates"][measure] > 0 and len(row["trials"]["peer"][measure]) == 2
            assert row["ratio"][measure] == pytest.approx(row["kvtier"][measure] / row["peer_rates"][measure])
        else:
            assert row["peer_rates"][measure] is None and row["ratio"][measure] is None
    # every read was compared byte for byte: all trials (warm-up included), cold and warm reads
    reads = len(measures) - 1
    assert row["verified_pages"]["kvtier"] >= 2 * reads * row["pages"]
    if row["skipped"] is None:
        assert row["verified_pages"]["peer"] >= 2 * reads * row["pages"]


def test_peers_bench_json_at_tiny_size(tmp_path, small_sglang_host_tier):
    out, plot = tmp_path / "peers.json", tmp_path / "peers.png"
    result = CliRunner().invoke(app, [*TINY_CLI, "--peers-dir", str(tmp_path / "d"), "--json",
                                      "-o", str(out), "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert json.loads(result.stdout) == doc
    assert doc["mode"] == "peers" and doc["settings"]["trials"] == 2
    assert doc["directory"] == str(tmp_path / "d") and doc["cpu"]
    assert len(doc["load"]) >= 2 and all(value >= 0 for value in doc["load"])
    assert {row["peer"] for row in doc["rows"]} == set(bench.PEERS)
    for peer in bench.PEERS:
        rows = [row for row in doc["rows"] if row["peer"] == peer]
        assert [row["page_bytes"] for row in rows] == [256 << 10, 512 << 10]
        for row, size in zip(rows, (256 << 10, 512 << 10)):
            _check_row(row, size)
            assert (row["skipped"] is None) == (peer not in doc["skipped"])
    # the kvtier sides always run, each in a process of its own
    assert {"kvtier_host", "kvtier_disk"} <= set(doc["side_s"]) and doc["notes"]["kvtier_disk"]["direct_io"] in (True, False)
    for peer, why in doc["skipped"].items():
        assert why and f"{peer}: skipped ({why.split()[0]}" in result.stderr.replace("\n", " ")
    assert plot.stat().st_size > 0
    if "lmcache_disk" not in doc["skipped"]:
        assert doc["versions"]["lmcache_disk"] == "0.5.6"
        assert doc["notes"]["lmcache_disk"]["use_odirect"] is False


def test_missing_peer_is_skipped_with_its_reason(tmp_path):
    result = CliRunner().invoke(app, [*TINY_CLI, "--peers-only", "lmcache_cpu", "--peers-sizes",
                                      "256KiB", "--peers-dir", str(tmp_path / "d")],
                                env={"KVTIER_PEERS_PYTHON": str(tmp_path / "nowhere" / "python"),
                                     "COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "lmcache_cpu: skipped (no peers virtualenv" in result.output
    assert "benchmarks/peers/setup.sh" in result.output
    assert "LMCache CPU (skipped)" in result.stdout  # the table still shows kvtier's side


def test_unavailable_marker_is_the_reason(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    (venv / "UNAVAILABLE").write_text("pip could not install lmcache==0.5.6\n")
    settings = bench.PeersBenchSettings(directory=str(tmp_path / "d"), page_sizes=(256 << 10,),
                                        bytes_per_run=1 << 20, trials=1, peers=("lmcache_disk",),
                                        peers_python=str(venv / "bin" / "python"))
    result = bench.run_peers_bench(settings)
    assert result.skipped == {"lmcache_disk": f"{bench.SETUP_SCRIPT} could not install it: "
                                             "pip could not install lmcache==0.5.6"}
    (row,) = result.rows
    assert row.skipped and row.kvtier["cold_read"] > 0 and row.peer_rates["cold_read"] is None
    assert result.kvtier_leads  # nothing measured against: no row behind


def test_settings_are_checked():
    with pytest.raises(ValueError, match="multiples of one token"):
        bench.PeersBenchSettings(page_sizes=(100_000,))
    with pytest.raises(ValueError, match="peers must be some of"):
        bench.PeersBenchSettings(peers=("redis",))
    result = CliRunner().invoke(app, ["bench", "--peers", "--sglang"])
    assert result.exit_code != 0 and "separate benchmarks" in result.output
