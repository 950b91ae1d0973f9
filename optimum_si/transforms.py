"""Equivalent per-channel scaling and shifting of a decoder block (eq. 3 of arXiv 2602.21652), resolved from the
architecture table and folded into the weights.

For a channel space with scale s > 0 and shift delta, eq. (3): W x + b = (W S)(S^-1 (x - delta)) + (b + W delta).
The consumers' input columns are multiplied by s (and their bias absorbs W delta); the producer divides its output
channel by s (and subtracts delta): a norm's weight/bias, or the rows of the Linear that produces the channel.
For q/k, Q S and K S^-1 leave Q K^T unchanged; with rotary embeddings channel i is tied to channel i + d/2.
The design follows OmniQuant's learnable equivalent transformation (Shao et al., arXiv 2308.13137).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .architectures import ScalingGroupSpec, spec_for
from .weights import UndoLog, write_parameter

__all__ = ["ScalingGroup", "resolve_scaling_groups", "fold_scaling"]


@dataclass
class ScalingGroup:
    """A scaling group resolved against one block: modules, parameter size and channel layout."""

    spec: ScalingGroupSpec
    producers: list[nn.Module]
    consumers: list[nn.Linear]
    size: int  # number of free scale parameters
    norm_offset: float
    heads: int
    kv_heads: int
    head_dim: int

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def can_shift(self) -> bool:
        return self.spec.shift

    # ------------------------------------------------------------------ channel layouts
    def _tied(self, p: torch.Tensor) -> torch.Tensor:
        """Rotary embeddings rotate channel i with i + d/2 in each head: both must share one scale."""
        if not self.spec.rope:
            return p
        return torch.cat([p, p], dim=-1)

    def consumer_scale(self, p: torch.Tensor) -> torch.Tensor:
        """Per input column scale of the consumers (norm / rows groups)."""
        if self.spec.kv_heads:
            # o_proj column (h * d + i) reads v channel ((h // n_rep) * d + i).
            return p.view(self.kv_heads, self.head_dim).repeat_interleave(self.heads // self.kv_heads, 0).reshape(-1)
        return p

    def qk_scales(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(query-side, key-side) scale vectors: per q_proj/k_proj row, or per q_norm/k_norm channel."""
        if self.producers:  # per-head q/k norms share one weight of head_dim channels across heads
            full = self._tied(p)
            return full, full
        per_kv = self._tied(p.view(self.kv_heads, -1))
        return per_kv.repeat_interleave(self.heads // self.kv_heads, 0).reshape(-1), per_kv.reshape(-1)


def _head_layout(model_config) -> tuple[int, int, int]:
    heads = model_config.num_attention_heads
    kv_heads = getattr(model_config, "num_key_value_heads", None) or heads
    head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // heads
    return heads, kv_heads, head_dim


def resolve_scaling_groups(block: nn.Module, model_config, groups: list[str] | None = None) -> list[ScalingGroup]:
    """The scaling groups of `block` (optionally only those named in `groups`), checked against its modules."""
    model_type = getattr(model_config, "model_type", None)
    spec = spec_for(model_type)
    if spec is None or not spec.scaling_groups:
        raise NotImplementedError(
            f"Sparsity Induction has no scaling-group mapping for model_type={model_type!r} (supported: "
            "llama, mistral, qwen2, qwen3, gemma, gemma2, gemma3_text, opt). Prune without induction, or set "
            "SIConfig(induction_unsupported='skip') to run the base pruner alone on such models."
        )
    heads, kv_heads, head_dim = _head_layout(model_config)
    post_ln = model_type == "opt" and not getattr(model_config, "do_layer_norm_before", True)
    resolved = []
    for group_spec in spec.scaling_groups:
        if groups is not None and group_spec.name not in groups:
            continue
        if post_ln and group_spec.kind == "norm":
            continue  # post-LN: the norm output is the residual stream itself, so it cannot absorb a scale
        producers = [block.get_submodule(p) for p in group_spec.producer]
        consumers = [block.get_submodule(c) for c in group_spec.consumers]
        if group_spec.kind == "qk":
            size = (head_dim if producers else kv_heads * head_dim) // (2 if group_spec.rope else 1)
        elif group_spec.kind == "rows":
            size = producers[0].out_features
        else:
            size = consumers[0].in_features
        resolved.append(ScalingGroup(group_spec, producers, consumers, size, spec.norm_offset, heads, kv_heads, head_dim))
    return resolved


@torch.no_grad()
def fold_scaling(
    group: ScalingGroup, scale: torch.Tensor, shift: torch.Tensor | None = None, undo: UndoLog | None = None
) -> None:
    """Apply the equivalent transform of `group` with parameter vectors `scale` (> 0) and `shift` in place.

    The dense function of the block is unchanged (up to rounding). Every write goes through `write_parameter`.
    """
    scale = scale.detach().double()
    if not bool((scale > 0).all()) or not bool(torch.isfinite(scale).all()):
        raise ValueError(f"Scaling group {group.name}: scales must be finite and positive.")
    if shift is not None and not group.can_shift:
        raise ValueError(f"Scaling group {group.name} cannot absorb a shift (no bias to absorb it).")

    def write(module: nn.Module, name: str, value: torch.Tensor) -> None:
        if undo is not None:
            undo.record(module, name)
        write_parameter(module, name, value)

    if group.spec.kind == "qk":
        q_scale, k_scale = group.qk_scales(scale)
        if group.producers:
            q_norm, k_norm = group.producers
            offset = group.norm_offset
            write(q_norm, "weight", (q_norm.weight.double() + offset) * q_scale - offset)
            write(k_norm, "weight", (k_norm.weight.double() + offset) / k_scale - offset)
            return
        q_proj, k_proj = group.consumers
        write(q_proj, "weight", q_proj.weight.double() * q_scale.unsqueeze(1))
        write(k_proj, "weight", k_proj.weight.double() / k_scale.unsqueeze(1))
        if q_proj.bias is not None:
            write(q_proj, "bias", q_proj.bias.double() * q_scale)
        if k_proj.bias is not None:
            write(k_proj, "bias", k_proj.bias.double() / k_scale)
        return

    column_scale = group.consumer_scale(scale)
    column_shift = group.consumer_scale(shift.detach().double()) if shift is not None else None
    for linear in group.consumers:
        weight = linear.weight.double()
        if column_shift is not None:
            write(linear, "bias", linear.bias.double() + weight @ column_shift)
        write(linear, "weight", weight * column_scale.unsqueeze(0))

    producer = group.producers[0]
    shift64 = shift.detach().double() if shift is not None else None
    if group.spec.kind == "norm":
        offset = group.norm_offset
        write(producer, "weight", (producer.weight.double() + offset) / scale - offset)
        if shift64 is not None or getattr(producer, "bias", None) is not None:
            bias = producer.bias.double() if producer.bias is not None else torch.zeros_like(scale)
            write(producer, "bias", (bias - (shift64 if shift64 is not None else 0.0)) / scale)
    else:  # rows
        write(producer, "weight", producer.weight.double() / scale.unsqueeze(1))
        if producer.bias is not None:
            write(producer, "bias", (producer.bias.double() - (shift64 if shift64 is not None else 0.0)) / scale)
