"""What gets pruned inside a decoder block: every weight-bearing parameter is a `WeightTarget`, or skipped on purpose.

A target is one 2-D matrix seen as [out, in] (rows = outputs, columns = inputs, the layout every score, mask and
solver works in), however the model stores it:

- `nn.Linear.weight` [out, in]: the matrix itself.
- GPT-2's `Conv1D.weight` [in, out] (y = x W + b): read and written transposed.
- Fused mixture-of-experts parameters (transformers 5: `mlp.experts.gate_up_proj [E, 2I, H]`,
  `mlp.experts.down_proj [E, H, I]`): one target per expert and per projection, so each expert is pruned with its
  own statistics (the tokens routed to it). The concatenated gate/up rows are two targets sharing one input, like
  `gate_proj`/`up_proj` of a dense MLP; report names follow the unfused layout (`mlp.experts.3.up_proj`).

Routers (`mlp.gate`, `shared_expert_gate`, ...) stay dense unless `targets` names them: they are tiny, and a pruned
router re-routes every token (llm-compressor leaves them dense too). Any other weight-bearing parameter that no
rule here understands is refused before a weight changes, never skipped silently.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch
from torch import nn

from .weights import UndoLog, write_parameter

__all__ = ["WeightTarget", "BlockPlan", "plan_block", "check_floating", "config_experts", "ROUTER_NAMES", "FUSED_EXPERT_PARAMS",
           "EXPERT_COUNT_KEYS", "is_conv1d", "expert_targets"]

# Last name component of router / gating modules that stay dense by default.
ROUTER_NAMES = ("gate", "router", "shared_expert_gate")
# 3-D expert parameters [E, out, in] and how their rows split into the unfused projections (name, part, parts).
FUSED_EXPERT_PARAMS: dict[str, tuple[tuple[str, int, int], ...]] = {
    "gate_up_proj": (("gate_proj", 0, 2), ("up_proj", 1, 2)),
    "up_proj": (("up_proj", 0, 1),),
    "down_proj": (("down_proj", 0, 1),),
}

# transformers config fields that count a mixture-of-experts model's routed experts.
EXPERT_COUNT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")


def config_experts(model_config: object) -> int:
    """The number of routed experts a transformers config declares (0 for a dense model)."""
    counts = [getattr(model_config, key, None) for key in EXPERT_COUNT_KEYS]
    return max([c for c in counts if isinstance(c, int) and not isinstance(c, bool)] or [0])


@dataclass(eq=False)
class WeightTarget:
    """One prunable [out, in] matrix: `module.<param>` (Linear, Conv1D) or rows `rows` of expert `expert` of a
    fused 3-D parameter."""

    name: str  # inside the block, e.g. "self_attn.q_proj", "attn.c_attn", "mlp.experts.3.up_proj"
    module: nn.Module
    param: str = "weight"
    transposed: bool = False  # stored [in, out] (Conv1D)
    expert: int | None = None
    rows: tuple[int, int] | None = None  # row range inside the expert's matrix

    @property
    def is_linear(self) -> bool:
        """A plain `nn.Linear` (not a Conv1D, not an expert slice of a fused parameter)."""
        return isinstance(self.module, nn.Linear) and self.expert is None

    @property
    def stats_key(self) -> tuple[int, str, int | None]:
        """Targets with the same key read the same input (gate and up rows of one expert)."""
        return id(self.module), self.param, self.expert

    def weight(self) -> torch.Tensor:
        """The matrix as [out, in] (a view of the stored parameter; the parameter itself for a Linear)."""
        param = getattr(self.module, self.param)
        if self.expert is None:
            return param.T if self.transposed else param
        matrix = param[self.expert]
        return matrix if self.rows is None else matrix[self.rows[0]:self.rows[1]]

    @property
    def in_features(self) -> int:
        return int(self.weight().shape[1])

    @property
    def numel(self) -> int:
        return self.weight().numel()

    def zeros(self) -> int:
        return int((self.weight() == 0).sum())

    def record(self, undo: UndoLog) -> None:
        undo.record(self.module, self.param)

    @torch.no_grad()
    def write(self, value: torch.Tensor) -> None:
        """Store `value` ([out, in]) through `write_parameter` (finite check, +0.0 zeros, the parameter's dtype)."""
        if self.expert is None:
            write_parameter(self.module, self.param, value.T if self.transposed else value)
            return
        index = (self.expert,) if self.rows is None else (self.expert, slice(*self.rows))
        write_parameter(self.module, self.param, value, index=index)


@dataclass
class BlockPlan:
    """The targets of one block, and every weight-bearing parameter left dense with the reason."""

    targets: dict[str, WeightTarget]
    skipped: dict[str, str]


def _matches(names: tuple[str, ...], patterns: list[str] | None) -> bool:
    return bool(patterns) and any(fnmatch.fnmatchcase(n, p) for n in names for p in patterns)


def is_conv1d(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return (type(module).__name__ == "Conv1D" and isinstance(weight, torch.Tensor)
            and tuple(weight.shape) == (getattr(module, "nx", None), getattr(module, "nf", None)))


def expert_targets(name: str, module: nn.Module, param: str, shape: torch.Size) -> list[WeightTarget]:
    parts = FUSED_EXPERT_PARAMS[param]
    if not getattr(module, "is_concatenated", True):  # interleaved gate/up rows: one target per expert
        parts = ((param, 0, 1),)
    prefix = f"{name}." if name else ""
    targets = []
    for expert in range(shape[0]):
        for part_name, part, count in parts:
            size = shape[1] // count
            rows = None if count == 1 else (part * size, (part + 1) * size)
            targets.append(WeightTarget(f"{prefix}{expert}.{part_name}", module, param, expert=expert, rows=rows))
    return targets


def check_floating(integer: list[str]) -> None:
    """Refuse weights planned for pruning that are not floating point (`integer`: "name (dtype)" of each)."""
    if integer:
        raise ValueError(
            f"{integer[0]}{f' and {len(integer) - 1} more' if len(integer) > 1 else ''} "
            f"{'is an integer weight' if len(integer) == 1 else 'are integer weights'}; optimum-si prunes (and runs) "
            "floating-point weights. Load the model in a floating dtype, or save it in one (a quantized checkpoint "
            "must be dequantized first)."
        )


def plan_block(block: nn.Module, prefix: str, targets: list[str] | None, ignore: list[str]) -> BlockPlan:
    """Every weight-bearing parameter of `block` (2-D or more, not a bias) as a target or a skip with its reason.

    `targets` / `ignore` are fnmatch patterns over full names (`<prefix>.<module>`, and for experts also
    `<prefix>.<module>.<param>` and the per-expert name). Raises ValueError, before anything is touched, for a
    weight this module cannot prune (name it in `ignore` to keep it dense)."""
    planned: dict[str, WeightTarget] = {}
    skipped: dict[str, str] = {}
    unknown: list[str] = []
    integer: list[str] = []
    for module_name, module in block.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if param.dim() < 2 or param_name.endswith("bias"):
                continue  # norms, biases, scalars: not weights a mask applies to
            full_module = f"{prefix}.{module_name}" if module_name else prefix
            full_param = f"{full_module}.{param_name}"
            leaf = module_name.rpartition(".")[2]
            if isinstance(module, nn.Linear) and param_name == "weight" or is_conv1d(module) and param_name == "weight":
                found = [WeightTarget(module_name, module, transposed=not isinstance(module, nn.Linear))]
            elif param.dim() == 3 and param_name in FUSED_EXPERT_PARAMS:
                if getattr(module, "is_transposed", False):  # [E, in, out] (GPT-OSS): no rule for it yet
                    if _matches((full_module, full_param), ignore):
                        skipped[full_param] = "ignore pattern"
                    else:
                        unknown.append(f"{full_param} (experts stored transposed [E, in, out])")
                    continue
                found = expert_targets(module_name, module, param_name, param.shape)
            elif leaf in ROUTER_NAMES and param.dim() == 2:
                found = [WeightTarget(module_name, module, param=param_name)]
            else:
                if _matches((full_module, full_param), ignore):
                    skipped[full_param] = "ignore pattern"
                else:
                    unknown.append(f"{full_param} {tuple(param.shape)}")
                continue
            for target in found:
                full_target = f"{prefix}.{target.name}"
                names = (full_target, full_module, full_param)
                if _matches(names, ignore):
                    skipped[full_target] = "ignore pattern"
                elif targets is not None and not _matches(names, targets):
                    skipped[full_target] = "not in targets"
                elif leaf in ROUTER_NAMES and targets is None:
                    skipped[full_target] = "router (kept dense by default)"
                elif not param.is_floating_point():
                    integer.append(f"{full_param} ({str(param.dtype).removeprefix('torch.')})")
                else:
                    planned[target.name] = target
    check_floating(sorted(set(integer)))
    if unknown:
        raise ValueError(
            f"{prefix} has weight(s) that optimum-si cannot prune: {', '.join(unknown[:4])}"
            f"{' ...' if len(unknown) > 4 else ''}. Keep them dense with SIConfig(ignore=[...]) naming them, or report "
            "the architecture so its layout can be added."
        )
    return BlockPlan(planned, skipped)
