"""``kvtier bench --remote`` at tiny size against real redis-server processes (tests/redisd.py)."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from kvtier.bench.remote import BENCHMARK_KEY, RemoteBenchSettings, raw_client, run_remote_bench
from kvtier.cli import app
from kvtier.config import RemoteTierConfig
from kvtier.tiers.remote import RemoteTier

pytestmark = pytest.mark.redis
TINY = dict(page_sizes=(64 << 10,), batch=4, trials=2, bytes_per_run=512 << 10)
TINY_CLI = ["--remote-sizes", "64KiB,128KiB", "--remote-batch", "4", "--remote-trials", "2",
            "--remote-bytes", "512KiB"]
HAVE_REDIS_BENCHMARK = shutil.which("redis-benchmark") is not None


def keys_left(url: str, **credentials: str) -> list[bytes]:
    import redis

    with redis.Redis.from_url(url, **credentials) as client:
        return client.keys("*")


def check_row(row: dict, page_bytes: int, batch: int, trials: int, *, benchmark: bool) -> None:
    assert row["page_bytes"] == page_bytes and row["batch"] == batch
    assert row["pages"] > 0 and row["pages"] % batch == 0
    assert row["verified_pages"] == row["pages"]  # the warm-up read every page back, byte-equal
    for name in ("write", "read", "raw_write", "raw_read", "default_write", "default_read"):
        assert row[name] > 0 and len(row["trials"][name]) == trials
    assert row["write_ratio"] == row["write"] / row["raw_write"] > 0
    assert row["read_ratio"] == row["read"] / row["raw_read"] > 0
    assert row["default_read_ratio"] == row["read"] / row["default_read"] > 0
    if benchmark:
        assert row["bench_write"] > 0 and row["bench_read"] > 0
        assert row["bench_read_ratio"] == row["read"] / row["bench_read"]
    else:
        assert row["bench_write"] is row["bench_read"] is row["bench_write_ratio"] is None


def test_the_ceiling_client_is_set_up_as_the_tiers(redis_url):
    """The raw loop is the comparable ceiling only while its client is configured as the tier's
    (packer, read size, timeouts, retries): this fails when RemoteTier._connect changes alone."""
    config = RemoteTierConfig(url=f"{redis_url}/1", password="", codec="none")
    tier = RemoteTier(config)
    theirs = tier._redis().connection_pool.connection_kwargs
    tier.close()
    ours = raw_client(config).connection_pool.connection_kwargs
    assert set(ours) == set(theirs)
    for name, value in theirs.items():
        if isinstance(value, (bool, int, float, str, type(None))):
            assert ours[name] == value, name
        else:
            assert type(ours[name]) is type(value), name
            assert getattr(ours[name], "__dict__", {}).keys() == getattr(value, "__dict__", {}).keys()
    for name, attribute in (("command_packer", "_buffer_cutoff"), ("retry", "_retries")):
        assert getattr(ours[name], attribute) == getattr(theirs[name], attribute), name
    defaults = raw_client(config, like_tier=False).connection_pool.connection_kwargs
    assert "command_packer" not in defaults and "socket_read_size" not in defaults


def test_python_api_at_tiny_size(redis_url):
    result = run_remote_bench(RemoteBenchSettings(url=redis_url, **TINY))
    doc = result.to_json()
    assert doc["server"].startswith("redis ") and doc["client"].startswith("redis-py ")
    assert doc["settings"]["url"] == redis_url and "password" not in doc["settings"]
    assert [row["page_bytes"] for row in doc["results"]] == [64 << 10]
    check_row(doc["results"][0], 64 << 10, 4, 2, benchmark=HAVE_REDIS_BENCHMARK)
    assert (doc["redis_benchmark"] is not None) == HAVE_REDIS_BENCHMARK
    assert (doc["redis_benchmark_note"] == "") == HAVE_REDIS_BENCHMARK
    assert keys_left(redis_url) == []  # the tier's keys, the raw keys and redis-benchmark's key


def test_cli_json_at_tiny_size(redis_url, tmp_path):
    out = tmp_path / "remote.json"
    result = CliRunner().invoke(app, ["bench", "--remote", redis_url, *TINY_CLI, "--json", "-o", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert json.loads(result.stdout) == doc
    assert "pages" not in doc and "disk" not in doc and "speeds" not in doc  # only the remote bench
    assert doc["settings"]["batch"] == 4 and doc["settings"]["trials"] == 2
    for row, size in zip(doc["results"], (64 << 10, 128 << 10), strict=True):
        check_row(row, size, 4, 2, benchmark=HAVE_REDIS_BENCHMARK)
    assert keys_left(redis_url) == []


def test_cli_table(redis_url):
    result = CliRunner().invoke(app, ["bench", "--remote", redis_url, *TINY_CLI])
    assert result.exit_code == 0, result.output
    for text in ("remote tier", "64 KiB ×4", "128 KiB ×4", "write / raw", "read / raw",
                 "raw redis-py GET", "redis-py defaults SET", "read / defaults", "redis-benchmark GET"):
        assert text in result.output
    assert keys_left(redis_url) == []


def test_a_db_in_the_url_is_where_every_key_goes(redis_url):
    doc = run_remote_bench(RemoteBenchSettings(url=f"{redis_url}/2", **TINY)).to_json()
    check_row(doc["results"][0], 64 << 10, 4, 2, benchmark=HAVE_REDIS_BENCHMARK)
    assert keys_left(redis_url) == [] and keys_left(f"{redis_url}/2") == []


def test_without_redis_benchmark(redis_url):
    doc = run_remote_bench(RemoteBenchSettings(url=redis_url, use_redis_benchmark=False, **TINY)).to_json()
    check_row(doc["results"][0], 64 << 10, 4, 2, benchmark=False)
    assert doc["redis_benchmark"] is None and "not run" in doc["redis_benchmark_note"]


def test_an_existing_redis_benchmark_key_is_left_alone(redis_url):
    import redis

    with redis.Redis.from_url(redis_url) as client:
        client.set(BENCHMARK_KEY, b"mine")
        doc = run_remote_bench(RemoteBenchSettings(url=redis_url, **TINY)).to_json()
        assert client.get(BENCHMARK_KEY) == b"mine" and client.dbsize() == 1
    assert doc["redis_benchmark"] is None and "already exists" in doc["redis_benchmark_note"]
    check_row(doc["results"][0], 64 << 10, 4, 2, benchmark=False)


def test_password_from_the_environment(tmp_path):
    from redisd import RedisServer

    with RedisServer(tmp_path, password="s3cret pw") as server:
        runner = CliRunner()
        refused = runner.invoke(app, ["bench", "--remote", server.url, *TINY_CLI, "--json"])
        assert refused.exit_code == 1 and "remote bench failed" in refused.output
        result = runner.invoke(app, ["bench", "--remote", server.url, *TINY_CLI, "--json"],
                               env={"KVTIER_REMOTE_PASSWORD": "s3cret pw"})
        assert result.exit_code == 0, result.output
        assert "s3cret" not in result.stdout
        for row in json.loads(result.stdout)["results"]:
            check_row(row, row["page_bytes"], 4, 2, benchmark=HAVE_REDIS_BENCHMARK)
        assert keys_left(server.url, password="s3cret pw") == []


def test_unreachable_server_fails_cleanly():
    from redisd import free_port

    result = CliRunner().invoke(app, ["bench", "--remote", f"redis://127.0.0.1:{free_port()}", *TINY_CLI])
    assert result.exit_code == 1 and "remote bench failed" in result.output


@pytest.mark.parametrize("args, message", [
    (["--remote", "http://example.com"], "remote.url must be"),
    (["--remote", "redis://127.0.0.1:1", "--remote-sizes", "lots"], "cannot parse size"),
    (["--remote", "redis://127.0.0.1:1", "--codec"], "separate benchmarks"),
])
def test_cli_rejects_bad_arguments(args, message):
    result = CliRunner().invoke(app, ["bench", *args])
    assert result.exit_code == 2 and message in result.output
