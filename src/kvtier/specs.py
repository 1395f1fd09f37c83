"""Model and GPU specs: KV bytes per token (``kvtier size``) and the prefill roofline (``kvtier sim``).

KV bytes per token = 2 (K and V) × layers × kv_heads × head_dim × bytes per element; for MLA
models (DeepSeek V2/V3) the cache holds one latent per layer instead:
layers × (kv_lora_rank + rope_dim) × bytes per element.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .errors import InvalidArgumentError

DTYPE_BYTES: dict[str, float] = {
    "fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2,
    "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1, "int8": 1, "fp4": 0.5, "int4": 0.5,
}


def dtype_bytes(dtype: str) -> float:
    """Bytes per KV element of ``dtype`` (``bf16``, ``fp8``, ...)."""
    try:
        return DTYPE_BYTES[dtype.lower()]
    except KeyError:
        raise InvalidArgumentError(f"unknown dtype {dtype!r}; known: {sorted(DTYPE_BYTES)}") from None


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What sets a model's KV size and prefill cost.

    Args:
        name: preset name or a label.
        layers: transformer layers holding KV.
        kv_heads / head_dim: grouped-query KV heads and their size (ignored for MLA).
        kv_lora_rank / rope_dim: MLA latent sizes; both > 0 makes the spec MLA.
        active_params: parameters used per token (MoE: active, not total); prefill FLOPs are
            ``2 × active_params`` per token.
        dtype: default KV dtype.
    """

    name: str
    layers: int
    kv_heads: int = 0
    head_dim: int = 0
    kv_lora_rank: int = 0
    rope_dim: int = 0
    active_params: float = 0.0
    dtype: str = "bf16"

    def __post_init__(self) -> None:
        if self.layers <= 0:
            raise InvalidArgumentError(f"{self.name}: layers must be > 0, got {self.layers}")
        if not self.is_mla and (self.kv_heads <= 0 or self.head_dim <= 0):
            raise InvalidArgumentError(
                f"{self.name}: needs kv_heads and head_dim > 0 (or kv_lora_rank and rope_dim for MLA)"
            )
        dtype_bytes(self.dtype)

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0 and self.rope_dim > 0

    def kv_bytes_per_token(self, dtype: str | None = None) -> int:
        """KV-cache bytes one token occupies (all layers, K and V or the MLA latent)."""
        per_element = dtype_bytes(dtype or self.dtype)
        if self.is_mla:
            return int(self.layers * (self.kv_lora_rank + self.rope_dim) * per_element)
        return int(2 * self.layers * self.kv_heads * self.head_dim * per_element)

    def describe(self) -> str:
        if self.is_mla:
            return f"{self.layers} layers × MLA latent ({self.kv_lora_rank} + rope {self.rope_dim})"
        return f"{self.layers} layers × {self.kv_heads} KV heads × head_dim {self.head_dim}"


MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec("llama-3-8b", layers=32, kv_heads=8, head_dim=128, active_params=8.03e9),
    ModelSpec("llama-3-70b", layers=80, kv_heads=8, head_dim=128, active_params=70.6e9),
    ModelSpec("llama-3.1-405b", layers=126, kv_heads=8, head_dim=128, active_params=405.9e9),
    ModelSpec("qwen2.5-7b", layers=28, kv_heads=4, head_dim=128, active_params=7.62e9),
    ModelSpec("qwen2.5-72b", layers=80, kv_heads=8, head_dim=128, active_params=72.7e9),
    ModelSpec("qwen3-32b", layers=64, kv_heads=8, head_dim=128, active_params=32.8e9),
    ModelSpec("mistral-7b", layers=32, kv_heads=8, head_dim=128, active_params=7.24e9),
    ModelSpec("mixtral-8x7b", layers=32, kv_heads=8, head_dim=128, active_params=12.9e9),
    ModelSpec("deepseek-v3", layers=61, kv_lora_rank=512, rope_dim=64, active_params=37e9),
    ModelSpec("smollm2-135m", layers=30, kv_heads=3, head_dim=64, active_params=0.135e9),
)}


def model_spec(name: str | None = None, *, layers: int | None = None, kv_heads: int | None = None,
               head_dim: int | None = None, kv_lora_rank: int | None = None,
               rope_dim: int | None = None, active_params: float | None = None) -> ModelSpec:
    """A preset by name, with any field overridden; or a custom spec when ``name`` is None."""
    overrides = {k: v for k, v in dict(layers=layers, kv_heads=kv_heads, head_dim=head_dim,
                                       kv_lora_rank=kv_lora_rank, rope_dim=rope_dim,
                                       active_params=active_params).items() if v is not None}
    if name is None:
        if "layers" not in overrides:
            raise InvalidArgumentError("give a preset (--model) or at least --layers and "
                                       "--kv-heads/--head-dim (or MLA dims)")
        return ModelSpec("custom", **overrides)
    try:
        base = MODELS[name.lower()]
    except KeyError:
        raise InvalidArgumentError(f"unknown model {name!r}; presets: {', '.join(MODELS)}") from None
    return replace(base, **overrides) if overrides else base


@dataclass(frozen=True, slots=True)
class GPUSpec:
    """Roofline numbers of one accelerator and the links KV travels over.

    Args:
        tflops: dense BF16 tensor TFLOP/s (the vendor's peak, without sparsity).
        mfu: fraction of ``tflops`` a real prefill achieves.
        hbm_gbs: HBM bandwidth, GB/s.
        pcie_gbs: host↔device bandwidth per direction, GB/s (what a host-tier restore moves at).
        usd_per_hour: rental price, for GPU-hours saved in dollars.
    """

    name: str
    tflops: float
    hbm_gbs: float
    pcie_gbs: float
    mfu: float = 0.5
    usd_per_hour: float = 0.0

    def prefill_seconds_per_token(self, model: ModelSpec) -> float:
        """Compute time to prefill one token: 2 × active params FLOPs at ``mfu`` of peak
        (the attention term is left out, so long contexts cost more than this)."""
        if model.active_params <= 0:
            raise InvalidArgumentError(f"{model.name}: active_params is needed for prefill cost")
        return 2 * model.active_params / (self.tflops * 1e12 * self.mfu)


GPUS: dict[str, GPUSpec] = {gpu.name: gpu for gpu in (
    GPUSpec("h100", tflops=989, hbm_gbs=3350, pcie_gbs=55, usd_per_hour=2.5),
    GPUSpec("h200", tflops=989, hbm_gbs=4800, pcie_gbs=55, usd_per_hour=3.5),
    GPUSpec("a100", tflops=312, hbm_gbs=2039, pcie_gbs=25, usd_per_hour=1.5),
    GPUSpec("l40s", tflops=362, hbm_gbs=864, pcie_gbs=25, usd_per_hour=1.0),
)}


def gpu_spec(name: str) -> GPUSpec:
    try:
        return GPUS[name.lower()]
    except KeyError:
        raise InvalidArgumentError(f"unknown GPU {name!r}; presets: {', '.join(GPUS)}") from None
