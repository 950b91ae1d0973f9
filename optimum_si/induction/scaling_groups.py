"""Sparsity Induction's per-architecture knowledge, as data: the scaling groups of each block (which channel space
is scaled, who produces it, who consumes it), the norm offset of Gemma-style norms, and where a block's experts live.

Keyed by `config.model_type`; an architecture without a row here is pruned without SI (or refused, as
`InductionConfig(unsupported=...)` says). Resolved against each block by `optimum_si.induction.transforms`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ScalingGroupSpec", "InductionSpec", "SCALING_TABLES", "induction_spec_for"]


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
class InductionSpec:
    scaling_groups: tuple[ScalingGroupSpec, ...]
    norm_offset: float = 0.0  # Gemma's RMSNorm multiplies by (1 + weight)
    # A block whose module at this path exists is a mixture-of-experts block (selects `applies_to="moe"` groups).
    experts_path: str | None = None


_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
_ATTN_OUT = ScalingGroupSpec("attn_out", "rows", ("self_attn.v_proj",), ("self_attn.o_proj",), kv_heads=True)
_MLP_OUT = ScalingGroupSpec("mlp_out", "rows", ("mlp.up_proj",), ("mlp.down_proj",))
_QK_ROPE = ScalingGroupSpec("qk", "qk", (), ("self_attn.q_proj", "self_attn.k_proj"), rope=True)
_QK_NORMED = ScalingGroupSpec("qk", "qk", ("self_attn.q_norm", "self_attn.k_norm"),
                              ("self_attn.q_proj", "self_attn.k_proj"), rope=True)


def _llama_like(mlp_norm: str, qk: ScalingGroupSpec, norm_offset: float = 0.0) -> InductionSpec:
    return InductionSpec(
        scaling_groups=(
            ScalingGroupSpec("attn_in", "norm", ("input_layernorm",), _QKV),
            _ATTN_OUT,
            ScalingGroupSpec("mlp_in", "norm", (mlp_norm,), ("mlp.gate_proj", "mlp.up_proj")),
            _MLP_OUT,
            qk,
        ),
        norm_offset=norm_offset,
    )


def _moe(qk: ScalingGroupSpec, shared_expert: bool = False) -> InductionSpec:
    """Mixtral / Qwen-MoE in transformers 5: attention as in Llama; the MLP is a router (`mlp.gate`, a 2-D weight
    [E, H]) and fused experts (`gate_up_proj [E, 2I, H]`, `down_proj [E, H, I]`), plus Qwen2-MoE's shared expert.

    mlp_in: the post-attention norm output feeds the router *and* every expert, so its scale must reach the router's
    columns too (the logits, hence the routing, stay the same) and the shared expert's gate. mlp_out: act(gate) * up
    is linear in up, so each expert's up rows / s and its own down columns x s cancel (E x I scales).
    """
    mlp_in = ("mlp.gate", "mlp.experts.gate_up_proj")
    mlp_out_producer: tuple[str, ...] = ("mlp.experts.gate_up_proj[1/2]",)
    mlp_out_consumer: tuple[str, ...] = ("mlp.experts.down_proj",)
    if shared_expert:
        mlp_in += ("mlp.shared_expert.gate_proj", "mlp.shared_expert.up_proj", "mlp.shared_expert_gate")
        mlp_out_producer += ("mlp.shared_expert.up_proj",)
        mlp_out_consumer += ("mlp.shared_expert.down_proj",)
    return InductionSpec(
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


SCALING_TABLES: dict[str, InductionSpec] = {
    "llama": _llama_like("post_attention_layernorm", _QK_ROPE),
    "mistral": _llama_like("post_attention_layernorm", _QK_ROPE),
    "qwen2": _llama_like("post_attention_layernorm", _QK_ROPE),
    "qwen3": _llama_like("post_attention_layernorm", _QK_NORMED),
    "gemma": _llama_like("post_attention_layernorm", _QK_ROPE, norm_offset=1.0),
    # Gemma 2/3 normalise the attention output before the residual; the MLP reads pre_feedforward_layernorm.
    "gemma2": _llama_like("pre_feedforward_layernorm", _QK_ROPE, norm_offset=1.0),
    "gemma3_text": _llama_like("pre_feedforward_layernorm", _QK_NORMED, norm_offset=1.0),
    # Pre-LN OPT only (do_layer_norm_before=True); post-LN checkpoints (OPT-350M) drop the norm groups.
    "opt": InductionSpec(
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
    "gpt2": InductionSpec(
        scaling_groups=(
            ScalingGroupSpec("attn_in", "norm", ("ln_1",), ("attn.c_attn",), shift=True),
            ScalingGroupSpec("attn_out", "rows", ("attn.c_attn[2/3]",), ("attn.c_proj",), shift=True),
            ScalingGroupSpec("mlp_in", "norm", ("ln_2",), ("mlp.c_fc",), shift=True),
            ScalingGroupSpec("qk", "qk", (), ("attn.c_attn[0/3]", "attn.c_attn[1/3]")),
        ),
    ),
}


def induction_spec_for(model_type: str | None) -> InductionSpec | None:
    return SCALING_TABLES.get(model_type or "")
