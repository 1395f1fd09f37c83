"""Trace formats, `kvtier size` figures, and the sim CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvtier import InvalidArgumentError
from kvtier.cli import app
from kvtier.sim import load_trace
from kvtier.specs import model_spec

EXCERPT = Path(__file__).parent / "data" / "mooncake_conversation_excerpt.jsonl"
runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    return result


# -- kvtier size --------------------------------------------------------------------------
def size_json(*args: str) -> dict:
    result = invoke("size", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_size_reproduces_the_llama_3_70b_textbook_figures():
    assert size_json("--model", "llama-3-70b")["bytes_per_token"] == 320 * 1024
    assert size_json("--model", "llama-3-70b", "--tokens", "2K")["bytes_per_user"] == 640 * 2**20
    assert round(size_json("--model", "llama-3-70b", "--tokens", "32K")["bytes_per_user"] / 1e9, 1) == 10.7
    assert size_json("--model", "llama-3-70b", "--tokens", "128K")["bytes_per_user"] == 40 * 2**30
    assert size_json("--model", "llama-3-70b", "--dtype", "fp8")["bytes_per_token"] == 160 * 1024
    assert size_json("--model", "llama-3-70b", "--tokens", "32768", "--users", "32")["bytes_total"] == 320 * 2**30


def test_size_table_shows_binary_and_decimal_units():
    result = invoke("size", "--model", "llama-3-70b", "--tokens", "32K", "--users", "32")
    assert result.exit_code == 0, result.output
    assert "320 KiB" in result.output and "10 GiB (10.7 GB)" in result.output


def test_size_custom_and_mla_models():
    custom = size_json("--layers", "2", "--kv-heads", "4", "--head-dim", "64", "--dtype", "fp16")
    assert custom["bytes_per_token"] == 2 * 2 * 4 * 64 * 2
    assert size_json("--model", "deepseek-v3")["bytes_per_token"] == 61 * (512 + 64) * 2
    assert size_json("--model", "llama-3-8b", "--layers", "16")["bytes_per_token"] == 2 * 16 * 8 * 128 * 2


@pytest.mark.parametrize("args,message", [
    (("--model", "gpt-17"), "unknown model"),
    (("--model", "llama-3-8b", "--dtype", "fp7"), "unknown dtype"),
    (("--tokens", "lots", "--model", "llama-3-8b"), "cannot parse token count"),
    ((), "give a preset"),
])
def test_size_errors(args, message):
    result = invoke("size", *args)
    assert result.exit_code != 0 and message in result.output


def test_every_preset_has_a_positive_size():
    from kvtier.specs import MODELS

    for name in MODELS:
        assert model_spec(name).kv_bytes_per_token() > 0


# -- trace formats ------------------------------------------------------------------------
def test_mooncake_excerpt_loads():
    trace = load_trace(EXCERPT)
    assert len(trace.requests) == 1000 and trace.block_tokens == 512
    assert trace.requests[0].blocks[0] == 0 and trace.requests[0].timestamp_s == 0


def test_kvtier_jsonl_and_csv_formats_agree(tmp_path):
    rows = [(0, "s1", 600, 20, ["a", "b"]), (1500, "s1", 1000, 30, ["a", "b"]), (2000, "s2", 100, 5, ["z"])]
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text("".join(json.dumps({"timestamp_ms": t, "session_id": s, "input_tokens": i,
                                         "output_tokens": o, "block_hashes": h}) + "\n"
                             for t, s, i, o, h in rows))
    csv = tmp_path / "t.csv"
    csv.write_text("timestamp_ms,session_id,input_tokens,output_tokens,block_hashes\n" + "".join(
        f"{t},{s},{i},{o},{' '.join(h)}\n" for t, s, i, o, h in rows))
    a, b = load_trace(jsonl), load_trace(csv)
    assert a.requests == b.requests
    assert a.requests[1].session == "s1" and a.requests[1].timestamp_s == 1.5


@pytest.mark.parametrize("line,message", [
    ('{"timestamp": 0, "input_length": 600, "output_length": 1, "hash_ids": [1]}', "make 2 blocks"),
    ('{"timestamp": 0, "output_length": 1, "hash_ids": [1]}', "missing field 'input_length'"),
    ('{"timestamp": "soon", "input_length": 1, "output_length": 1, "hash_ids": [1]}', "must be float"),
    ('{"timestamp": 0, "input_length": 1, "output_length": 1, "hash_ids": 7}', "hash_ids must be a list"),
    ("not json", "not JSON"),
    ('{"prompt": "hi"}', "neither Mooncake"),
])
def test_bad_traces_name_the_line_and_the_problem(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(InvalidArgumentError, match=message):
        load_trace(path)


def test_missing_trace_and_bad_format(tmp_path):
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        load_trace(tmp_path / "nope.jsonl")
    with pytest.raises(InvalidArgumentError, match="format must be one of"):
        load_trace(EXCERPT, fmt="parquet")


# -- kvtier sim CLI -------------------------------------------------------------------------
def test_sim_json_has_the_documented_fields(tmp_path):
    plot = tmp_path / "sim.png"
    result = invoke("sim", str(EXCERPT), "--model", "llama-3-8b", "--tier", "host=64GiB",
                    "--tier", "disk=1TiB", "--ttl", "5m", "--ttl", "1h", "--sweep", "host=16GiB..64GiB",
                    "--limit", "300", "--json", "--plot", str(plot))
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output[result.output.index("{"):])
    for name in ("requests", "block_refs", "logical_hit_rate", "physical_hit_rate", "prefix_hit_rate",
                 "token_hit_rate", "misses", "prefill_tokens_saved", "gpu_seconds_saved", "dollars"):
        assert name in doc
    assert doc["requests"] == 300
    assert set(doc["dollars"]) >= {"uncached", "cached", "write", "total", "saved"}
    assert 0 <= doc["physical_hit_rate"] <= doc["logical_hit_rate"] <= 1
    assert [p["capacity_bytes"] for p in doc["sweep"]] == [16 << 30, 32 << 30, 64 << 30] * 2
    assert len(doc["variants"]) == 2
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sim_table_output(tmp_path):
    # A long trace path (CI checks out under a deeper directory) must not wrap the labels.
    trace = tmp_path / ("deep" * 20) / EXCERPT.name
    trace.parent.mkdir()
    trace.write_bytes(EXCERPT.read_bytes())
    result = invoke("sim", str(trace), "--limit", "200", "--tier", "host=8GiB")
    assert result.exit_code == 0, result.output
    assert "logical hit rate" in result.output and "prefix hit rate" in result.output


@pytest.mark.parametrize("args,message", [
    (("--tier", "gpu=1GiB"), "NAME=SIZE"),
    (("--tier", "host=1GiB", "--tier", "host=2GiB"), "distinct"),
    (("--policy", "random"), "unknown policy"),
    (("--ttl", "forever"), "cannot parse duration"),
    (("--sweep", "disk=1GiB..2GiB"), "names tier 'disk'"),
    (("--sweep", "host=2GiB..1GiB"), "LOW <= HIGH"),
    (("--refresh", "sometimes"), "--refresh"),
    (("--gpu", "tpu"), "unknown GPU"),
])
def test_sim_bad_arguments(args, message):
    result = invoke("sim", str(EXCERPT), "--limit", "10", *args)
    assert result.exit_code != 0
    assert message in result.output, result.output
