"""Per-architecture knowledge, as data: where the decoder blocks live and the true-sequential Linear groups.

Keyed by `config.model_type`. Architectures not listed still work when their block list is found by the
generic `BLOCK_PATTERNS` (or given as `SIConfig.block_name`); they then use one group per block.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ArchitectureSpec", "ARCHITECTURES", "BLOCK_PATTERNS", "spec_for"]


@dataclass(frozen=True)
class ArchitectureSpec:
    block_path: str
    # Linears (relative to a block) in the order a true-sequential pass calibrates them.
    sequential_groups: tuple[tuple[str, ...], ...]


_LLAMA_LIKE = ArchitectureSpec(
    block_path="model.layers",
    sequential_groups=(
        ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        ("self_attn.o_proj",),
        ("mlp.gate_proj", "mlp.up_proj"),
        ("mlp.down_proj",),
    ),
)

ARCHITECTURES: dict[str, ArchitectureSpec] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    "opt": ArchitectureSpec(
        block_path="model.decoder.layers",
        sequential_groups=(
            ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
            ("self_attn.out_proj",),
            ("fc1",),
            ("fc2",),
        ),
    ),
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
