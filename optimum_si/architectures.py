"""Per-architecture knowledge, as data: where the decoder blocks live, the true-sequential Linear groups, and the
Sparsity Induction scaling groups (which channel is scaled, who produces it, who consumes it).

Keyed by `config.model_type`. Architectures not listed still work when their block list is found by the
generic `BLOCK_PATTERNS` (or given as `SIConfig.block_name`); they then use one group per block.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ArchitectureSpec", "ScalingGroupSpec", "ARCHITECTURES", "BLOCK_PATTERNS", "spec_for"]


@dataclass(frozen=True)
class ScalingGroupSpec:
    """One channel space that Sparsity Induction may scale (and shift) without changing the dense function.

    kind:
      - "norm": the output of a norm (`producer`) feeding `consumers` (their input columns are scaled).
      - "rows": the rows of a Linear (`producer`) feeding `consumers` directly (through attention for v -> o, through
        the gated product or a ReLU for up -> down); `kv_heads` marks v_proj under GQA.
      - "qk": query/key head channels: q_proj rows (or q_norm) x s, k_proj rows (or k_norm) / s. `consumers` is
        (q_proj, k_proj); `producer` is (q_norm, k_norm) where the model normalises q/k per head, else empty.
    `shift` marks groups whose shift can be absorbed (needs biases on producer and consumers); `rope` ties channel i
    with channel i + head_dim/2, so the rotary embedding still commutes with the scale.

    Names are relative to the block and name a Linear, a GPT-2 `Conv1D`, a module holding a 2-D `weight` (MoE
    routers) or a fused 3-D expert parameter (`mlp.experts.gate_up_proj`: one matrix per expert). A suffix `[i/n]`
    takes the i-th of n equal row blocks of that matrix: GPT-2's fused `c_attn[2/3]` is v, `gate_up_proj[1/2]` the
    up rows of every expert. A rows group over expert matrices has one scale per expert and channel (E x rows).
    `applies_to` ("moe" / "dense") limits a group to blocks whose MLP is (or is not) a mixture of experts, for models
    that mix both kinds of block.
    """

    name: str
    kind: str
    producer: tuple[str, ...]
    consumers: tuple[str, ...]
    kv_heads: bool = False
    shift: bool = False
    rope: bool = False
    applies_to: str = "any"


@dataclass(frozen=True)
class ArchitectureSpec:
    block_path: str
    # Linears (relative to a block) in the order a true-sequential pass calibrates them.
    sequential_groups: tuple[tuple[str, ...], ...]
    scaling_groups: tuple[ScalingGroupSpec, ...] = ()
    norm_offset: float = 0.0  # Gemma's RMSNorm multiplies by (1 + weight)
    # A block whose module at this path exists is a mixture-of-experts block (selects `applies_to="moe"` groups).
    experts_path: str | None = None


_LLAMA_SEQUENTIAL = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    ("self_attn.o_proj",),
    ("mlp.gate_proj", "mlp.up_proj"),
    ("mlp.down_proj",),
)
_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
_ATTN_OUT = ScalingGroupSpec("attn_out", "rows", ("self_attn.v_proj",), ("self_attn.o_proj",), kv_heads=True)
_MLP_OUT = ScalingGroupSpec("mlp_out", "rows", ("mlp.up_proj",), ("mlp.down_proj",))
_QK_ROPE = ScalingGroupSpec("qk", "qk", (), ("self_attn.q_proj", "self_attn.k_proj"), rope=True)
_QK_NORMED = ScalingGroupSpec("qk", "qk", ("self_attn.q_norm", "self_attn.k_norm"),
                              ("self_attn.q_proj", "self_attn.k_proj"), rope=True)


def _llama_like(mlp_norm: str, qk: ScalingGroupSpec, norm_offset: float = 0.0) -> ArchitectureSpec:
    return ArchitectureSpec(
        block_path="model.layers",
        sequential_groups=_LLAMA_SEQUENTIAL,
        scaling_groups=(
            ScalingGroupSpec("attn_in", "norm", ("input_layernorm",), _QKV),
            _ATTN_OUT,
            ScalingGroupSpec("mlp_in", "norm", (mlp_norm,), ("mlp.gate_proj", "mlp.up_proj")),
            _MLP_OUT,
            qk,
        ),
        norm_offset=norm_offset,
    )


def _moe(qk: ScalingGroupSpec, shared_expert: bool = False) -> ArchitectureSpec:
    """Mixtral / Qwen-MoE in transformers 5: attention as in Llama; the MLP is a router (`mlp.gate`, a 2-D weight
    [E, H]) and fused experts (`gate_up_proj [E, 2I, H]`, `down_proj [E, H, I]`), plus Qwen2-MoE's shared expert.

    mlp_in: the post-attention norm output feeds the router *and* every expert, so its scale must reach the router's
    columns too (the logits, hence the routing, stay the same) and the shared expert's gate. mlp_out: act(gate) * up
    is linear in up, so each expert's up rows / s and its own down columns x s cancel (E x I scales).
    true-sequential groups stay empty: non-SI runs keep pruning the whole block as one group, as before this row.
    """
    mlp_in = ("mlp.gate", "mlp.experts.gate_up_proj")
    mlp_out_producer: tuple[str, ...] = ("mlp.experts.gate_up_proj[1/2]",)
    mlp_out_consumer: tuple[str, ...] = ("mlp.experts.down_proj",)
    if shared_expert:
        mlp_in += ("mlp.shared_expert.gate_proj", "mlp.shared_expert.up_proj", "mlp.shared_expert_gate")
        mlp_out_producer += ("mlp.shared_expert.up_proj",)
        mlp_out_consumer += ("mlp.shared_expert.down_proj",)
    return ArchitectureSpec(
        block_path="model.layers",
        sequential_groups=(),
        scaling_groups=(
            ScalingGroupSpec("attn_in", "norm", ("input_layernorm",), _QKV),
            _ATTN_OUT,
            ScalingGroupSpec("mlp_in", "norm", ("post_attention_layernorm",), mlp_in, applies_to="moe"),
            ScalingGroupSpec("mlp_out", "rows", mlp_out_producer, mlp_out_consumer, applies_to="moe"),
            # Qwen-MoE's mlp_only_layers / decoder_sparse_step keep some blocks dense (a Llama MLP).
            ScalingGroupSpec("mlp_in", "norm", ("post_attention_layernorm",), ("mlp.gate_proj", "mlp.up_proj"),
                             applies_to="dense"),
            ScalingGroupSpec("mlp_out", "rows", ("mlp.up_proj",), ("mlp.down_proj",), applies_to="dense"),
            qk,
        ),
        experts_path="mlp.experts",
    )


ARCHITECTURES: dict[str, ArchitectureSpec] = {
    "llama": _llama_like("post_attention_layernorm", _QK_ROPE),
    "mistral": _llama_like("post_attention_layernorm", _QK_ROPE),
    "qwen2": _llama_like("post_attention_layernorm", _QK_ROPE),
    "qwen3": _llama_like("post_attention_layernorm", _QK_NORMED),
    "gemma": _llama_like("post_attention_layernorm", _QK_ROPE, norm_offset=1.0),
    # Gemma 2/3 normalise the attention output before the residual; the MLP reads pre_feedforward_layernorm.
    "gemma2": _llama_like("pre_feedforward_layernorm", _QK_ROPE, norm_offset=1.0),
    "gemma3_text": _llama_like("pre_feedforward_layernorm", _QK_NORMED, norm_offset=1.0),
    "opt": ArchitectureSpec(
        block_path="model.decoder.layers",
        sequential_groups=(
            ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
            ("self_attn.out_proj",),
            ("fc1",),
            ("fc2",),
        ),
        # Pre-LN OPT only (do_layer_norm_before=True); post-LN checkpoints (OPT-350M) drop the norm groups.
        scaling_groups=(
            ScalingGroupSpec("attn_in", "norm", ("self_attn_layer_norm",), _QKV, shift=True),
            ScalingGroupSpec("attn_out", "rows", ("self_attn.v_proj",), ("self_attn.out_proj",), shift=True),
            ScalingGroupSpec("mlp_in", "norm", ("final_layer_norm",), ("fc1",), shift=True),
            ScalingGroupSpec("mlp_out", "rows", ("fc1",), ("fc2",)),  # ReLU is positively homogeneous: s > 0 only
            ScalingGroupSpec("qk", "qk", (), ("self_attn.q_proj", "self_attn.k_proj")),
        ),
    ),
    "mixtral": _moe(_QK_ROPE),
    "qwen2_moe": _moe(_QK_ROPE, shared_expert=True),
    "qwen3_moe": _moe(_QK_NORMED),
    # GPT-2: Conv1D layers (stored [in, out]), q/k/v fused in c_attn, LayerNorms with biases, GELU MLP. GELU is not
    # positively homogeneous, so c_fc rows cannot pass a scale to c_proj: no mlp_out group. Shifts fold into the
    # LayerNorm and Conv1D biases; v's shift passes through attention because each softmax row sums to 1.
    "gpt2": ArchitectureSpec(
        block_path="transformer.h",
        sequential_groups=(),  # as before this row: non-SI runs prune the whole block as one group
        scaling_groups=(
            ScalingGroupSpec("attn_in", "norm", ("ln_1",), ("attn.c_attn",), shift=True),
            ScalingGroupSpec("attn_out", "rows", ("attn.c_attn[2/3]",), ("attn.c_proj",), shift=True),
            ScalingGroupSpec("mlp_in", "norm", ("ln_2",), ("mlp.c_fc",), shift=True),
            ScalingGroupSpec("qk", "qk", (), ("attn.c_attn[0/3]", "attn.c_attn[1/3]")),
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
