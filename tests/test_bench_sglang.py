"""``kvtier bench --sglang`` (kvtier's HiCache backend vs SGLang's HiCacheFile) at tiny size."""

from __future__ import annotations

import functools
import importlib
import json
from importlib import metadata

import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch", reason="torch is not installed")
try:
    from kvtier.integrations import _sglang_import

    _sglang_import.hicache_interface()
except ImportError as exc:  # pragma: no cover - depends on the environment
    pytest.skip(f"SGLang's storage interface cannot be imported ({exc}); scripts/test.sh installs "
                "it with pip install --no-deps sglang==0.5.23", allow_module_level=True)

from kvtier.bench import sglang as bench
from kvtier.cli import app

cli_bench = importlib.import_module("kvtier.cli.bench")  # the module (kvtier.cli.bench is the command)

TINY = {"page_sizes": (256 << 10,), "bytes_per_run": 1 << 20, "trials": 1, "host_capacity": 4 << 20}
TINY_CLI = ["bench", "--sglang", "--sglang-sizes", "256KiB,512KiB", "--sglang-bytes", "1MiB",
            "--sglang-trials", "2"]


@pytest.fixture
def small_host_tier(monkeypatch):
    """The CLI keeps the backend's 1 GiB host tier; a 4 MiB one saves its prefault here."""
    monkeypatch.setattr(cli_bench, "SGLangBenchSettings",
                        functools.partial(bench.SGLangBenchSettings, host_capacity=4 << 20))


def test_sglang_bench_json_at_tiny_size(tmp_path, small_host_tier):
    out = tmp_path / "sglang.json"
    result = CliRunner().invoke(app, [*TINY_CLI, "--sglang-dir", str(tmp_path / "d"), "--json",
                                      "-o", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert json.loads(result.stdout) == doc
    assert "pages" not in doc and "disk" not in doc  # --sglang runs only this benchmark
    assert doc["sglang"] == metadata.version("sglang")
    assert isinstance(doc["direct_io"], bool) and doc["io_engine"] and doc["native_backend"]
    assert set(doc["paths"]) == {"kvtier", "hicache_file"} and len(doc["load"]) == 2
    assert doc["settings"]["batch"] == 128 and doc["settings"]["codec"] == "none"
    assert doc["torch_threads"] == 1
    rows = doc["results"]
    assert [(r["page_bytes"], r["page_tokens"], r["pages"]) for r in rows] == [
        (256 << 10, 2, 4), (512 << 10, 4, 2)]  # Llama-3-8B shape: 128 KiB per token
    for row in rows:
        for side in ("kvtier", "file"):
            for measure in bench.MEASURES:
                name = f"{side}_{measure}"
                assert row[name] > 0 and len(row["trials"][name]) == 2  # the warm-up is dropped
        for measure in bench.MEASURES:
            assert row[f"{measure}_ratio"] == row[f"kvtier_{measure}"] / row[f"file_{measure}"]
        for measure in ("write", "cold_read"):  # the ceiling: raw O_DIRECT in the same run
            assert row[f"raw_{measure}"] > 0 and len(row["trials"][f"raw_{measure}"]) == 2
            assert row[f"{measure}_vs_raw"] == row[f"kvtier_{measure}"] / row[f"raw_{measure}"]
        # every cold and warm read of every trial (warm-up included) was compared byte for byte
        assert row["verified_pages"] == {"kvtier": 2 * 3 * row["pages"], "hicache_file": 2 * 3 * row["pages"]}
    assert not any((tmp_path / "d").iterdir())  # nothing left behind in the bench directory


def test_sglang_bench_table_output(small_host_tier):
    result = CliRunner().invoke(app, ["bench", "--sglang", "--sglang-sizes", "256KiB",
                                      "--sglang-bytes", "512KiB", "--sglang-trials", "1"],
                                terminal_width=200)
    assert result.exit_code == 0, result.output
    for text in ("HiCacheFile", "durable write: kvtier / HiCacheFile", "cold read", "warm read",
                 "raw O_DIRECT", "cold read: kvtier / raw",
                 "256 KiB (2 tokens)", "pages verified byte-exact", "8 / 8", "posix_fadvise"):
        assert text in result.output, text


def test_a_wrong_byte_fails_the_run(tmp_path, monkeypatch):
    """Reads are verified: a backend that returns other bytes stops the benchmark."""
    real_read = bench._PageSizeBench._file_read

    def corrupting_read(self, backend, keys):
        real_read(self, backend, keys)
        flat = self.target[1, -1].view(-1).view(torch.uint8)  # V of the last token read
        flat[7] = flat[7] ^ 1

    monkeypatch.setattr(bench._PageSizeBench, "_file_read", corrupting_read)
    with pytest.raises(RuntimeError, match="hicache_file read back other bytes"):
        bench.run_sglang_bench(bench.SGLangBenchSettings(directory=str(tmp_path), **TINY))
    assert not any(tmp_path.iterdir())


def test_settings_and_cli_reject_bad_input(tmp_path):
    with pytest.raises(ValueError, match="multiples of one token's KV"):
        bench.SGLangBenchSettings(page_sizes=(100 << 10,))
    assert bench.SGLangBenchSettings(layers=2, kv_heads=1, head_dim=64).token_bytes == 512
    result = CliRunner().invoke(app, ["bench", "--sglang", "--sglang-sizes", "100KiB"])
    assert result.exit_code != 0 and "multiples of one token" in result.output
    result = CliRunner().invoke(app, ["bench", "--sglang", "--codec"])
    assert result.exit_code != 0 and "separate benchmarks" in result.output


def test_drop_page_cache_advises_every_file(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("a/x.bin", "a/y.bin", "z.dat"):
        (tmp_path / name).write_bytes(b"\0" * 8192)
    assert bench.drop_page_cache(tmp_path / "a") == 2
    assert bench.drop_page_cache(tmp_path / "a", tmp_path / "z.dat", tmp_path / "gone") == 3
    assert bench.drop_page_cache(tmp_path) == 3
