"""``kvtier bench --all`` (workload, micro and peers in one run, then the targets) at tiny size,
and the target checks on hand-built documents."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from kvtier.bench.targets import DISK_GOAL, HOST_GOAL, check_targets
from kvtier.cli import app

PNG = b"\x89PNG\r\n\x1a\n"


def test_all_runs_every_part_and_reports_the_targets(tmp_path):
    pytest.importorskip("torch", reason="the peers part needs torch")
    out, plot = tmp_path / "all.json", tmp_path / "showcase.png"
    result = CliRunner().invoke(app, [
        "bench", "--all",
        "--model", "smollm2-135m", "--block-tokens", "16", "--sessions", "2", "--turns", "2",
        "--host-capacity", "2MiB", "--disk-capacity", "32MiB", "--prefill-tps", "100",
        "--restore-tokens", "16", "--disk-dir", str(tmp_path / "d"),
        "--page-sizes", "256KiB", "--capacity", "4MiB", "--seconds", "0.01", "--trials", "1",
        "--metadata-ops", "100", "--disk-page-sizes", "256KiB", "--disk-bytes", "2MiB",
        "--disk-trials", "1",
        "--peers-only", "hicache_file", "--peers-sizes", "256KiB", "--peers-bytes", "1MiB",
        "--peers-trials", "1", "--peers-dir", str(tmp_path / "p"),
        "--plot", str(plot), "-o", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["mode"] == "all"
    assert doc["workload"]["mode"] == "workload" and doc["workload"]["requests"] == 4
    assert [p["page_bytes"] for p in doc["micro"]["pages"]] == [256 << 10]
    assert [r["page_bytes"] for r in doc["micro"]["disk"]["results"]] == [256 << 10] * 2
    assert doc["peers"]["mode"] == "peers" and [r["peer"] for r in doc["peers"]["rows"]] == ["hicache_file"]
    targets = {t["name"]: t for t in doc["targets"]}
    assert len(targets) == 3
    host = targets["host tier vs memcpy"]
    assert host["cells"] == 4 and host["worst"] == min(
        doc["micro"]["pages"][0][f"{m}_ratio"] for m in ("put", "get_into", "batch_put", "batch_get_into"))
    assert host["met"] == (host["worst"] >= HOST_GOAL)
    disk = targets["disk tier vs raw O_DIRECT"]
    assert disk["cells"] == 4 and disk["met"] == (disk["worst"] >= DISK_GOAL)
    assert targets["kvtier vs peers (kvtier / peer)"]["cells"] in (0, 3)  # 0: HiCacheFile skipped
    for name in ("showcase.png", "showcase-micro.png", "showcase-peers.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG
    assert "targets · the worst measured cell" in result.stdout and "host tier vs" in result.stdout


def _doc(host_ratios: list[float], disk_ratios: list[float], peer_ratios: list[float | None]) -> dict:
    return {
        "micro": {
            "pages": [{"page_bytes": 64 << 10, "put_ratio": 0.1, "get_into_ratio": 0.1,
                       "batch_put_ratio": 0.1, "batch_get_into_ratio": 0.1}]  # under 256 KiB: ignored
            + [{"page_bytes": (256 << 10) << i, "put_ratio": r, "get_into_ratio": 1.0,
                "batch_put_ratio": 1.0, "batch_get_into_ratio": 1.0} for i, r in enumerate(host_ratios)],
            "disk": {"results": [{"page_bytes": 1 << 20, "batch": 16, "write_ratio": r, "read_ratio": 1.0}
                                 for r in disk_ratios]}},
        "peers": {"rows": [{"peer": "lmcache_cpu", "page_bytes": 1 << 20, "skipped": None,
                            "ratio": {"write": r, "cold_read": None}} for r in peer_ratios]
                  + [{"peer": "lmcache_disk", "page_bytes": 1 << 20, "skipped": "not installed",
                      "ratio": {"write": 0.01}}]},
    }


def test_targets_report_the_worst_cell_and_where():
    host, disk, peers = check_targets(_doc([0.95, 0.89], [0.9, 0.86], [1.2, 0.7]))
    assert (host.worst, host.where, host.cells, host.below, host.met) == (
        0.89, "put, 512 KiB", 8, 1, False)
    assert (disk.worst, disk.cells, disk.below, disk.met) == (0.86, 4, 0, True)
    assert (peers.worst, peers.where, peers.cells, peers.below, peers.met) == (
        0.7, "lmcache_cpu, write, 1 MiB", 2, 1, False)  # the skipped peer does not count


def test_targets_of_parts_not_run_are_not_measured():
    host, disk, peers = check_targets({"micro": {"pages": []}})
    assert all(t.met is None and t.worst is None and t.cells == 0 for t in (host, disk, peers))
    assert check_targets(_doc([0.9], [0.85], [1.0]))[0].met is True  # goals are inclusive
