"""The benchmark runs in the suite at tiny size, so it cannot rot."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from kvtier.cli import app

TINY_DISK = ["--disk-page-sizes", "256KiB", "--disk-bytes", "4MiB", "--disk-trials", "1"]


def test_bench_json_at_tiny_size(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--micro", "--page-sizes", "64KiB,256KiB", "--capacity", "4MiB",
                                      "--seconds", "0.01", "--trials", "1", "--metadata-ops", "500",
                                      *TINY_DISK, "--disk-dir", str(tmp_path / "d"),
                                      "--json", "-o", str(out), "--plot", str(tmp_path / "micro.png")])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert [p["page_bytes"] for p in doc["pages"]] == [64 << 10, 256 << 10]
    for page in doc["pages"]:
        for name in ("put", "put_ceiling", "get_into", "get", "get_ceiling", "batch_put",
                     "batch_get_into"):
            assert page[name] > 0
        assert page["put_ratio"] == page["put"] / page["put_ceiling"]
    assert doc["native_backend"] in ("native", "python")
    meta = doc["metadata"]
    assert meta["lookup_prefix_keys"] == 512 and meta["lookup_prefix_us"] > 0
    assert min(meta["contains_ops_s"], meta["put_ops_s"], meta["get_into_ops_s"]) > 0
    disk = doc["disk"]
    assert [(r["page_bytes"], r["batch"]) for r in disk["results"]] == [(256 << 10, 1), (256 << 10, 16)]
    for row in disk["results"]:
        for name in ("write", "write_ceiling", "read", "read_ceiling"):
            assert row[name] > 0
        assert row["read_ratio"] == row["read"] / row["read_ceiling"]
    assert disk["ceiling_tool"] in ("fio", "native loop") and isinstance(disk["direct_io"], bool)
    assert not any((tmp_path / "d").iterdir())  # nothing left behind in the bench directory
    assert (tmp_path / "micro.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_table_output():
    result = CliRunner().invoke(app, ["bench", "--micro", "--page-sizes", "64KiB", "--capacity", "1MiB",
                                      "--seconds", "0.01", "--trials", "1", "--metadata-ops", "500",
                                      *TINY_DISK])
    assert result.exit_code == 0, result.output
    assert "lookup_prefix of 512 keys" in result.output
    assert "host tier" in result.output and "64 KiB" in result.output
    assert "disk tier" in result.output and "read / raw" in result.output


def test_bench_without_disk_skips_it(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--micro", "--page-sizes", "64KiB", "--capacity", "1MiB",
                                      "--seconds", "0.01", "--trials", "1", "--metadata-ops", "500",
                                      "--no-disk", "--json", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "disk" not in json.loads(out.read_text())


def test_bench_rejects_unaligned_disk_pages():
    result = CliRunner().invoke(app, ["bench", "--micro", "--disk-page-sizes", "5000"])
    assert result.exit_code != 0 and "multiples of 4096" in result.output


def test_bench_rejects_bad_sizes():
    result = CliRunner().invoke(app, ["bench", "--micro", "--page-sizes", "lots"])
    assert result.exit_code != 0
    assert "cannot parse size" in result.output


TINY_CODEC = ["bench", "--codec", "--codec-bytes", "2MiB", "--codec-trials", "1"]


def test_codec_bench_json_at_tiny_size(tmp_path):
    out = tmp_path / "codec.json"
    result = CliRunner().invoke(app, [*TINY_CODEC, "--disk-dir", str(tmp_path / "d"), "--json",
                                      "-o", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert json.loads(result.stdout) == doc
    assert "pages" not in doc and "metadata" not in doc  # --codec runs only the codec bench
    speeds = {(row["dtype"], row["codec"]): row for row in doc["speeds"]}
    assert set(speeds) == {(d, c) for d in ("float16", "bfloat16") for c in ("none", "zstd", "shuffle-zstd")}
    for dtype in ("float16", "bfloat16"):
        none, zstd, shuffled = (speeds[dtype, c] for c in ("none", "zstd", "shuffle-zstd"))
        assert none["ratio"] == 1.0 and none["compress"] is None and none["decompress"] is None
        assert 1.0 < zstd["ratio"] < shuffled["ratio"]  # real pages compress; byte planes help
        for row in (zstd, shuffled):
            assert row["compress"] > 0 and row["decompress"] > 0 and row["memcpy"] > 0
            assert row["compress_ratio"] == row["compress"] / row["memcpy"]
            assert row["ratio"] == row["raw_bytes"] / row["stored_bytes"]
    assert speeds["bfloat16", "shuffle-zstd"]["ratio"] > speeds["float16", "shuffle-zstd"]["ratio"]
    disk = doc["disk"]
    assert disk["write_ceiling"] > 0 and disk["read_ceiling"] > 0
    assert disk["ceiling_tool"] in ("fio", "native loop") and isinstance(disk["direct_io"], bool)
    assert disk["page_bytes"] == 737_280 and disk["batch"] == 16 and disk["pages"] == 16
    rows = {row["codec"]: row for row in disk["results"]}
    assert list(rows) == ["none", "zstd", "shuffle-zstd", "auto"]
    for name, row in rows.items():
        assert row["write"] > 0 and row["read"] > 0
        assert row["write_vs_none"] == row["write"] / rows["none"]["write"]
        assert row["read_ratio"] == row["read"] / disk["read_ceiling"]
    assert rows["none"]["ratio_written"] == 1.0
    assert 1.0 < rows["zstd"]["ratio_written"] < rows["shuffle-zstd"]["ratio_written"]
    assert isinstance(disk["auto_at_least_none"], bool)
    assert not any((tmp_path / "d").iterdir())  # nothing left behind in the bench directory


def test_codec_bench_table_output():
    result = CliRunner().invoke(app, [*TINY_CODEC, "--no-disk"])
    assert result.exit_code == 0, result.output
    for name in ("none", "zstd", "shuffle-zstd", "memcpy", "float16", "bfloat16"):
        assert name in result.output
    assert "disk tier per codec" not in result.output  # --no-disk skips the end-to-end part


def test_codec_bench_disk_table(tmp_path):
    result = CliRunner().invoke(app, [*TINY_CODEC, "--disk-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "disk tier per codec" in result.output and "auto vs none, same run" in result.output
    for name in ("shuffle-zstd", "auto", "raw"):
        assert name in result.output


def test_codec_bench_rejects_bad_bytes():
    result = CliRunner().invoke(app, ["bench", "--codec", "--codec-bytes", "lots"])
    assert result.exit_code != 0 and "cannot parse size" in result.output


def test_disk_read_ab_script_runs(tmp_path):
    """scripts/disk_read_ab.py (the aligned vs unaligned read A/B quoted in ARCHITECTURE.md)
    at one trial of 1 MiB pages, so it cannot rot."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "disk_read_ab.py"
    done = subprocess.run([sys.executable, str(script), str(tmp_path), "1024", "1"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split("\n")
    for name in ("aligned", "unaligned"):
        line = next(line for line in lines if line.strip().startswith(name + ":"))
        assert float(line.split(":")[1].split()[0]) > 0
    assert not (tmp_path / "store").exists()
