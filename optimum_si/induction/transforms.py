"""Equivalent per-channel scaling and shifting of a decoder block (eq. 3 of arXiv 2602.21652), resolved from the
architecture table and folded into the weights.

For a channel space with scale s > 0 and shift delta, eq. (3): W x + b = (W S)(S^-1 (x - delta)) + (b + W delta).
The consumers' input columns are multiplied by s (and their bias absorbs W delta); the producer divides its output
channel by s (and subtracts delta): a norm's weight/bias, or the rows of the Linear that produces the channel.
For q/k, Q S and K S^-1 leave Q K^T unchanged; with rotary embeddings channel i is tied to channel i + d/2.
The design follows OmniQuant's learnable equivalent transformation (Shao et al., arXiv 2308.13137).

Producers and consumers are [out, in] matrices however they are stored (`ChannelMatrix`): a Linear, a GPT-2 Conv1D
([in, out]), a router's 2-D weight, one expert of a fused 3-D expert parameter, or a block of rows of any of these
(GPT-2's v inside c_attn, an expert's up rows inside gate_up_proj).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from ..modeling.targets import FUSED_EXPERT_PARAMS, expert_targets, is_conv1d
from ..modeling.weights import UndoLog, write_parameter
from .scaling_groups import SCALING_TABLES, ScalingGroupSpec, induction_spec_for

__all__ = ["ChannelMatrix", "ScalingSegment", "ScalingGroup", "resolve_scaling_groups", "fold_scaling"]

_PART = re.compile(r"^(?P<name>.+)\[(?P<index>\d+)/(?P<count>\d+)\]$")


@dataclass(eq=False)
class ChannelMatrix:
    """One [out, in] matrix (or its rows `rows`) that a scaling group rescales, however the model stores it."""

    name: str  # the pruning target whose input statistics are this matrix's input (walker / plan name)
    module: nn.Module
    param: str = "weight"
    transposed: bool = False  # Conv1D: stored [in, out]
    expert: int | None = None  # index into a fused [E, out, in] parameter
    rows: tuple[int, int] | None = None  # rows of the (expert's) matrix
    # Rows of the named target that this matrix is (None: all of it). An expert's up rows are a target of their own;
    # GPT-2's v rows are a third of the target c_attn.
    target_rows: tuple[int, int] | None = None
    target_out: int = 0  # rows of the named target

    def _stored(self) -> torch.Tensor:
        param = getattr(self.module, self.param)
        if self.expert is not None:
            return param[self.expert]
        return param.T if self.transposed else param

    def read(self) -> torch.Tensor:
        """The matrix as float64 [out, in]."""
        matrix = self._stored()
        return (matrix if self.rows is None else matrix[self.rows[0]:self.rows[1]]).double()

    def write(self, value: torch.Tensor, undo: UndoLog | None) -> None:
        if undo is not None:
            undo.record(self.module, self.param)
        part = slice(None) if self.rows is None else slice(*self.rows)
        if self.expert is not None:
            write_parameter(self.module, self.param, value, index=(self.expert, part))
        elif self.transposed:
            write_parameter(self.module, self.param, value.T, index=None if self.rows is None else (slice(None), part))
        else:
            write_parameter(self.module, self.param, value, index=None if self.rows is None else (part,))

    def read_bias(self) -> torch.Tensor | None:
        bias = getattr(self.module, "bias", None) if self.expert is None else None
        if bias is None:
            return None
        return (bias if self.rows is None else bias[self.rows[0]:self.rows[1]]).double()

    def write_bias(self, value: torch.Tensor, undo: UndoLog | None) -> None:
        if undo is not None:
            undo.record(self.module, "bias")
        write_parameter(self.module, "bias", value, index=None if self.rows is None else (slice(*self.rows),))

    @property
    def out_features(self) -> int:
        return int(self._stored().shape[0]) if self.rows is None else self.rows[1] - self.rows[0]

    @property
    def in_features(self) -> int:
        return int(self._stored().shape[1])


@dataclass
class ScalingSegment:
    """The part `part` of a group's scale vector and the matrices it reaches: `columns` read the channels (input
    columns x s), `rows` produce them (rows / s). A per-expert group has one segment per expert."""

    part: slice
    columns: list[ChannelMatrix]
    rows: list[ChannelMatrix] = field(default_factory=list)


@dataclass
class ScalingGroup:
    """A scaling group resolved against one block: modules, parameter size and channel layout."""

    spec: ScalingGroupSpec
    producers: list[nn.Module]  # the norm ("norm"), the q/k norms ("qk" with per-head norms), the rows' modules
    consumers: list[nn.Module]  # the modules the table names as consumers (q/k for "qk"), in table order
    size: int  # number of free scale parameters
    norm_offset: float
    heads: int
    kv_heads: int
    head_dim: int
    segments: list[ScalingSegment] = field(default_factory=list)

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


def _matrices(block: nn.Module, ref: str) -> list[ChannelMatrix]:
    """The matrices a table entry names (see `ScalingGroupSpec`); AttributeError if the block has no such weight."""
    match = _PART.match(ref)
    name = match["name"] if match else ref
    try:
        module, param = block.get_submodule(name), "weight"
    except AttributeError:
        owner, _, param = name.rpartition(".")
        module = block.get_submodule(owner)
        name = owner
    tensor = getattr(module, param, None)
    if not isinstance(tensor, torch.Tensor) or tensor.dim() not in (2, 3):
        raise AttributeError(f"{ref} is not a weight matrix")
    part = (int(match["index"]), int(match["count"])) if match else None
    if tensor.dim() == 3:  # fused experts [E, out, in]: one matrix per expert, named as the plan names its targets
        if getattr(module, "is_transposed", False) or hasattr(module, f"{param}_bias") or param not in \
                FUSED_EXPERT_PARAMS:
            raise NotImplementedError(f"Sparsity Induction has no rule for the fused expert layout of {ref}.")
        targets = expert_targets(name, module, param, tensor.shape)
        if part is not None:
            size = tensor.shape[1] // part[1]
            rows = (part[0] * size, (part[0] + 1) * size)
            targets = [t for t in targets if (t.rows or (0, tensor.shape[1])) == rows]
            if len(targets) != tensor.shape[0]:
                raise NotImplementedError(f"Sparsity Induction cannot scale {ref}: those rows are not one target per "
                                          "expert (interleaved gate/up rows?).")
        return [ChannelMatrix(t.name, module, param, expert=t.expert, rows=t.rows, target_out=t.weight().shape[0])
                for t in targets]
    transposed = is_conv1d(module)
    out = int(tensor.shape[1] if transposed else tensor.shape[0])
    rows = None
    if part is not None:
        size = out // part[1]
        rows = (part[0] * size, (part[0] + 1) * size)
    return [ChannelMatrix(name, module, param, transposed, rows=rows, target_rows=rows, target_out=out)]


def _segments(spec: ScalingGroupSpec, block: nn.Module, heads: int, kv_heads: int) -> list[ScalingSegment]:
    columns = [m for ref in spec.consumers for m in _matrices(block, ref)]
    if spec.kind == "qk":  # q rows x s, k rows / s; with per-head q/k norms the norms take the scale instead
        return [ScalingSegment(slice(None), [], [] if spec.producer else columns)]
    if spec.kind == "norm":
        return [ScalingSegment(slice(None), columns)]
    rows = [m for ref in spec.producer for m in _matrices(block, ref)]
    if len(rows) != len(columns):
        raise ValueError(f"scaling group {spec.name}: {len(rows)} producer matrices for {len(columns)} consumers")
    segments, start = [], 0
    for producer, consumer in zip(rows, columns):
        size = producer.out_features
        expected = size * heads // kv_heads if spec.kv_heads else size
        if consumer.in_features != expected:
            raise ValueError(f"scaling group {spec.name}: {producer.name} has {size} rows but {consumer.name} reads "
                             f"{consumer.in_features} channels")
        segments.append(ScalingSegment(slice(start, start + size), [consumer], [producer]))
        start += size
    return segments


def resolve_scaling_groups(block: nn.Module, model_config, groups: list[str] | None = None) -> list[ScalingGroup]:
    """The scaling groups of `block` (optionally only those named in `groups`), checked against its modules."""
    model_type = getattr(model_config, "model_type", None)
    spec = induction_spec_for(model_type)
    if spec is None or not spec.scaling_groups:
        supported = ", ".join(name for name, s in SCALING_TABLES.items() if s.scaling_groups)
        raise NotImplementedError(
            f"Sparsity Induction has no scaling-group mapping for model_type={model_type!r} (supported: "
            f"{supported}). Prune without induction, or set "
            "InductionConfig(unsupported='skip') to run the base pruner alone on such models."
        )
    heads, kv_heads, head_dim = _head_layout(model_config)
    post_ln = model_type == "opt" and not getattr(model_config, "do_layer_norm_before", True)
    moe_block = spec.experts_path is not None and _has_submodule(block, spec.experts_path)
    resolved = []
    for group_spec in spec.scaling_groups:
        if groups is not None and group_spec.name not in groups:
            continue
        if post_ln and group_spec.kind == "norm":
            continue  # post-LN: the norm output is the residual stream itself, so it cannot absorb a scale
        if group_spec.applies_to != "any" and (group_spec.applies_to == "moe") != moe_block:
            continue
        segments = _segments(group_spec, block, heads, kv_heads)
        if group_spec.kind == "rows":  # the modules holding the producing rows (fused ones named once)
            producers = list({id(m.module): m.module for s in segments for m in s.rows}.values())
        else:
            producers = [block.get_submodule(p) for p in group_spec.producer]
        consumers: list[nn.Module] = []
        for ref in group_spec.consumers:
            for matrix in _matrices(block, ref):
                if all(matrix.module is not c for c in consumers):
                    consumers.append(matrix.module)
        if group_spec.kind == "qk":
            size = (head_dim if producers else kv_heads * head_dim) // (2 if group_spec.rope else 1)
        elif group_spec.kind == "rows":
            size = sum(s.rows[0].out_features for s in segments)
        else:
            size = segments[0].columns[0].in_features
        resolved.append(ScalingGroup(group_spec, producers, consumers, size, spec.norm_offset, heads, kv_heads,
                                     head_dim, segments))
    return resolved


def _has_submodule(block: nn.Module, path: str) -> bool:
    try:
        block.get_submodule(path)
    except AttributeError:
        return False
    return True


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
        q_proj, k_proj = group.segments[0].rows
        q_proj.write(q_proj.read() * q_scale.unsqueeze(1), undo)
        k_proj.write(k_proj.read() / k_scale.unsqueeze(1), undo)
        q_bias, k_bias = q_proj.read_bias(), k_proj.read_bias()
        if q_bias is not None:
            q_proj.write_bias(q_bias * q_scale, undo)
        if k_bias is not None:
            k_proj.write_bias(k_bias / k_scale, undo)
        return

    shift64 = shift.detach().double() if shift is not None else None
    for segment in group.segments:
        part = scale[segment.part]
        part_shift = shift64[segment.part] if shift64 is not None else None
        column_scale = group.consumer_scale(part)
        column_shift = group.consumer_scale(part_shift) if part_shift is not None else None
        for matrix in segment.columns:
            weight = matrix.read()
            if column_shift is not None:
                bias = matrix.read_bias()
                if bias is None:
                    raise ValueError(f"Scaling group {group.name}: {matrix.name} has no bias to absorb a shift.")
                matrix.write_bias(bias + weight @ column_shift, undo)
            matrix.write(weight * column_scale.unsqueeze(0), undo)
        for matrix in segment.rows:  # rows groups: the producer's output channel / s (and - delta)
            matrix.write(matrix.read() / part.unsqueeze(1), undo)
            bias = matrix.read_bias()
            if bias is not None:
                matrix.write_bias((bias - (part_shift if part_shift is not None else 0.0)) / part, undo)

    if group.spec.kind == "norm":
        producer = group.producers[0]
        offset = group.norm_offset
        write(producer, "weight", (producer.weight.double() + offset) / scale - offset)
        if shift64 is not None or getattr(producer, "bias", None) is not None:
            bias = producer.bias.double() if producer.bias is not None else torch.zeros_like(scale)
            write(producer, "bias", (bias - (shift64 if shift64 is not None else 0.0)) / scale)
