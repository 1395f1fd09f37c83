"""Every script in examples/ runs, exits 0 and prints what it claims (issue 10).

Each example is run as a user runs it: ``python examples/NAME.py [args]`` with this venv's
Python, in a scratch directory, against the installed kvtier. An example exits non-zero when
what it demonstrates did not happen, so exit code 0 plus its key lines is the check. A new
example must be added to ``EXAMPLES`` (or have a test of its own) and to examples/README.md.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from kvtier.tiers.disk import DATA_FILE

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
TIMEOUT_S = 120
VLLM = importlib.util.find_spec("vllm") is not None


def sglang_interface_importable() -> bool:
    """What tests/test_sglang.py needs (imports torch: asked only when 05 says it skipped)."""
    try:
        from kvtier.integrations import _sglang_import

        _sglang_import.hicache_interface()
    except ImportError:
        return False
    return True


# name -> (arguments, lines the output must contain); {tmp} is the test's scratch directory
EXAMPLES = {
    "01_store_in_ten_lines.py": ([], ["6 pages of 64 KiB stored", "finds 4 leading pages stored",
                                      "page bytes equal: True", "OK"]),
    "02_persistence_across_restart.py": (["{tmp}/kvtier-disk"], [
        "writer: 8 pages put into", "reader (new process): lookup_prefix finds 8 of 8 pages",
        "reader: 8 of 8 pages read back byte-exact, 8 from disk", "OK"]),
    "03_ttl_windows.py": ([], ["read-again: alive", "never-read: gone, miss_reason -> expired",
                               "long: alive", "short: gone, miss_reason -> expired",
                               "misses={'expired': 1}", "OK"]),
    "05_sglang_backend.py": ([], [
        "backend: kvtier.integrations.sglang.KvtierHiCacheStorage", "batch_exists -> 6 leading pages",
        "batch_get_v1 -> [True, True, True, True, True, True]", "byte-exact: True", "OK"]),
    "06_vllm_connector.py": ([], [
        "vllm serve Qwen/Qwen3-8B --kv-transfer-config '{\"kv_connector\": \"KvtierConnector\"",
        '"kv_connector_module_path": "kvtier.integrations.vllm"']
        + (["connector class kvtier.integrations.vllm.KvtierConnector", "OK"] if VLLM
           else ["vLLM is not importable here", "tests/test_vllm.py"])),
    "07_sim_on_the_trace.py": ([], [
        "mooncake_conversation_excerpt.jsonl: 1,000 requests over 5.5 minutes",
        "DRAM 1 TiB, 5-minute window", "DRAM 1 TiB, 1-hour window",
        "DRAM 1 TiB @ 5 min + NVMe 8 TiB     21.2%     21.2%", "OK"]),
}
REDIS_EXAMPLE = "04_redis_shared_tier.py"  # needs a server: test_redis_shared_tier below


def run_example(name: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python examples/NAME args`` in ``cwd``, without KVTIER_* settings from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVTIER_")}
    return subprocess.run([sys.executable, str(EXAMPLES_DIR / name), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)


def assert_shows(proc: subprocess.CompletedProcess[str], lines: list[str]) -> None:
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"exit code {proc.returncode}:\n{output}"
    for line in lines:
        assert line in proc.stdout, f"{line!r} not in the output:\n{output}"


def test_every_example_is_tested_and_listed_in_the_readme():
    scripts = {path.name for path in EXAMPLES_DIR.glob("*.py")}
    assert scripts == set(EXAMPLES) | {REDIS_EXAMPLE}, "add the new example to EXAMPLES"
    readme = (EXAMPLES_DIR / "README.md").read_text()
    assert [name for name in sorted(scripts) if f"examples/{name}" not in readme] == []


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example(name, tmp_path):
    args, lines = EXAMPLES[name]
    proc = run_example(name, [a.format(tmp=tmp_path) for a in args], tmp_path)
    if name.startswith("05_") and proc.returncode == 0 and proc.stdout.startswith("SKIPPED:"):
        assert not sglang_interface_importable(), f"05 skipped, but SGLang imports here:\n{proc.stdout}"
        pytest.skip(proc.stdout.strip())
    assert_shows(proc, lines)
    if name.startswith("02_"):  # the disk tier really lives in the directory it was given
        assert (tmp_path / "kvtier-disk" / DATA_FILE).is_file()


@pytest.mark.redis
def test_redis_shared_tier(redis_url, tmp_path):
    proc = run_example(REDIS_EXAMPLE, [redis_url], tmp_path)
    assert_shows(proc, [f"put 6 pages of tenant A into {redis_url}",
                        "host tier empty at start: True; 6 of 6 pages read byte-exact, 6 from Redis",
                        "reader as tenant B, same tokens: lookup_prefix -> 0, miss_reason -> never_stored",
                        "reader OK", "OK"])
    writer, reader = (int(line.split("pid ")[1].split(")")[0]) for line in proc.stdout.splitlines()
                      if line.startswith(("writer (pid", "reader (pid")))
    assert writer != reader  # two processes shared the pages


def test_redis_example_fails_loudly_without_a_server(tmp_path):
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        url = f"redis://127.0.0.1:{sock.getsockname()[1]}"
    proc = run_example(REDIS_EXAMPLE, [url], tmp_path)
    assert proc.returncode == 1 and f"FAILED: no Redis answers at {url}" in proc.stderr
