"""Per-architecture knowledge the pruning walk needs, as data: where the decoder blocks live and the true-sequential
Linear groups. (Sparsity Induction's scaling groups are its own table: `optimum_si.induction.scaling_groups`.)

Keyed by `config.model_type`. Architectures not listed still work when their block list is found by the generic
`BLOCK_PATTERNS` (or given as `SIConfig.block_name`); they then prune each block as one group.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ArchitectureSpec", "ARCHITECTURES", "BLOCK_PATTERNS", "spec_for"]


@dataclass(frozen=True)
class ArchitectureSpec:
    block_path: str
    # Linears (relative to a block) in the order a true-sequential pass calibrates them; () for one group per block.
    sequential_groups: tuple[tuple[str, ...], ...] = ()


_LLAMA = ArchitectureSpec(
    block_path="model.layers",
    sequential_groups=(
        ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        ("self_attn.o_proj",),
        ("mlp.gate_proj", "mlp.up_proj"),
        ("mlp.down_proj",),
    ),
)
# Mixtral / Qwen-MoE: experts are pruned with the rest of their block, as one group.
_MOE = ArchitectureSpec(block_path="model.layers")

ARCHITECTURES: dict[str, ArchitectureSpec] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gemma": _LLAMA,
    "gemma2": _LLAMA,
    "gemma3_text": _LLAMA,
    "opt": ArchitectureSpec(
        block_path="model.decoder.layers",
        sequential_groups=(
            ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
            ("self_attn.out_proj",),
            ("fc1",),
            ("fc2",),
        ),
    ),
    "mixtral": _MOE,
    "qwen2_moe": _MOE,
    "qwen3_moe": _MOE,
    "gpt2": ArchitectureSpec(block_path="transformer.h"),
}

# Tried in order when the model type is unknown (the same idea as optimum.gptq's block patterns).
BLOCK_PATTERNS = (
    "model.layers",
    "model.decoder.layers",
    "model.language_model.layers",
    "transformer.h",
    "gpt_neox.layers",
    "transformer.layers",
)


def spec_for(model_type: str | None) -> ArchitectureSpec | None:
    return ARCHITECTURES.get(model_type or "")
