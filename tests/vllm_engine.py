"""Run one real vLLM engine (CPU build) with or without kvtier and report what happened, as JSON.

Run with the vLLM virtualenv's Python (scripts/vllm-env.sh); the tests and the TTFT benchmark
start it as a subprocess, so every run is a fresh engine process:

    .venv-vllm/bin/python tests/vllm_engine.py '{"model": DIR, "prompts": [[ids...], ...], ...}'

Settings (JSON object, argv[1]):
    model            model directory (tests/vllm_models.py)
    prompts          list of prompts, each a list of token ids
    max_tokens       greedy tokens generated per prompt (default 8)
    kvtier           kv_connector_extra_config for KvtierConnector, or null: no connector
    via_plugin       name the connector without kv_connector_module_path (entry point)
    prefix_caching   vLLM's own prefix cache (default false, so hits come from kvtier)
    sequential       one generate() call per prompt, in order (default true)
    cache_salts      optional list, one cache_salt per prompt
    multiprocessing  VLLM_ENABLE_V1_MULTIPROCESSING (default false: in-process engine)

Output (stdout, last line): {"outputs": [[ids...]], "cached": [num_cached_tokens...],
"first_cached": [...] (of each prompt's first, 1-token request), "ttft_s": [...],
"counters": {...} (kvtier's connector counters), "store": {...} (the worker store's stats)}
"""

from __future__ import annotations

import json
import os
import sys
import time

settings = json.loads(sys.argv[1])
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if settings.get("multiprocessing") else "0"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    kwargs = dict(model=settings["model"], dtype="bfloat16", enforce_eager=True,
                  kv_cache_memory_bytes=settings.get("kv_cache_bytes", 128 << 20),
                  enable_prefix_caching=settings.get("prefix_caching", False),
                  max_model_len=settings.get("max_model_len", 2048), seed=0)
    if settings.get("kvtier") is not None:
        transfer = {"kv_connector": "KvtierConnector", "kv_role": "kv_both",
                    "kv_connector_extra_config": settings["kvtier"]}
        if not settings.get("via_plugin"):
            transfer["kv_connector_module_path"] = "kvtier.integrations.vllm"
        kwargs["kv_transfer_config"] = transfer
    started = time.perf_counter()
    llm = LLM(**kwargs)
    init_s = time.perf_counter() - started
    params = SamplingParams(temperature=0.0, max_tokens=settings.get("max_tokens", 8), ignore_eos=True)
    salts = settings.get("cache_salts") or [None] * len(settings["prompts"])
    prompts = []
    for ids, salt in zip(settings["prompts"], salts):
        prompt = TokensPrompt(prompt_token_ids=ids)
        if salt is not None:
            prompt["cache_salt"] = salt
        prompts.append(prompt)
    outputs, cached, ttft, first_cached = [], [], [], []
    groups = [[p] for p in prompts] if settings.get("sequential", True) else [prompts]
    for group in groups:
        t0 = time.perf_counter()
        if len(group) == 1:  # time to first token: a 1-token generation of the same prompt
            first = llm.generate(group, SamplingParams(temperature=0.0, max_tokens=1), use_tqdm=False)
            ttft.append(time.perf_counter() - t0)
            first_cached.append(first[0].num_cached_tokens)
            if settings.get("ttft_only"):
                outputs.append(list(first[0].outputs[0].token_ids))
                cached.append(first[0].num_cached_tokens)
                continue
        for out in llm.generate(group, params, use_tqdm=False):
            outputs.append(list(out.outputs[0].token_ids))
            cached.append(out.num_cached_tokens)
    report = {"outputs": outputs, "cached": cached, "first_cached": first_cached, "ttft_s": ttft,
              "init_s": init_s}
    if settings.get("kvtier") is not None and not settings.get("multiprocessing"):
        from kvtier.integrations.vllm import live_connectors

        counters: dict[str, int] = {}
        store = None
        for connector in live_connectors():
            for name, value in connector.counters.items():
                counters[name] = counters.get(name, 0) + value
            connector._side.flush()
            stats = connector.store_stats()
            if stats is not None:
                store = {"hits": stats.hits, "misses": stats.misses, "puts": stats.puts,
                         "tiers": {t.name: {"entries": t.entries, "hits": t.hits} for t in stats.tiers},
                         "backend": stats.native_backend}
        report["counters"] = counters
        report["store"] = store
    print(json.dumps(report), flush=True)
    llm.llm_engine.engine_core.shutdown()  # closes the connector (and its store) like vllm serve does
    os._exit(0)


if __name__ == "__main__":
    main()
