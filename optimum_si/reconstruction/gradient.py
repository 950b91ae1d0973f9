"""The gradient refit of a pruned block's kept weights: every pruned Linear of the block trains its weight with the
mask held fixed (W * M in the forward, so a pruned weight gets no gradient and stays exactly zero), by Adam or
`DampedAdam` (optim.py), against the dense block's outputs on the training windows. The block-wise fine-tuning of
EBFT (Guo et al., arXiv 2402.12419; github.com/sunggo/EBFT), run on one block at a time inside the walk.

Pure training: which windows train, which judge, and whether the refit is kept are the stage's (`stage.py`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .. import distributed
from ..modeling.capture import block_output
from ..modeling.targets import is_conv1d
from ..observers.windows import training_step_count, training_steps
from ..optim import training_optimizer
from .config import ReconstructionConfig

__all__ = ["MaskedLinear", "train_kept_weights", "block_loss", "column_step_scales", "relative_drift"]


def block_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error between a block's output and its target, in float32."""
    return (output.float() - target.float()).square().mean()


def relative_drift(weights: Sequence[torch.Tensor], starts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over the matrices of |W - W_start|^2 / |W_start|^2 (Frobenius norms): how far a refit has moved the
    weights, as a fraction of their size, so that wide and narrow Linears weigh alike."""
    terms = [(w - s).square().sum() / s.square().sum().clamp_min(torch.finfo(s.dtype).tiny)
             for w, s in zip(weights, starts)]
    return torch.stack(terms).mean()


def column_step_scales(matrix: torch.Tensor) -> torch.Tensor:
    """Each input column's RMS over the matrix's mean column RMS ([in]; 1 for an all-zero column, whose weights are
    all pruned). Training `W / scales` instead of `W` makes Adam's step on each weight proportional to its column's
    size, so rescaling the input channels (W diag(s), inputs / s, as Sparsity Induction's folded scales do) rescales
    the steps with them: the refit is the same in either basis, up to one factor per matrix."""
    rms = matrix.float().square().mean(dim=0).sqrt()
    live = rms > 0
    mean = rms[live].mean() if bool(live.any()) else rms.new_tensor(1.0)
    return torch.where(live, rms / mean, torch.ones_like(rms))


class MaskedLinear(nn.Module):
    """A pruned Linear (or GPT-2 Conv1D, which computes the same x W^T + b) whose kept weights train: the forward uses
    `weight * mask`, so the pruned entries never move the output nor receive a gradient. With `column_steps`, the
    trained parameter is the weight over `column_step_scales` (the forward multiplies them back)."""

    def __init__(self, module: nn.Module, train_bias: bool, column_steps: bool = False) -> None:
        super().__init__()
        weight = module.weight.detach()
        matrix = (weight.T if is_conv1d(module) else weight).float()  # [out, in]
        self.register_buffer("mask", matrix != 0, persistent=False)
        self.column_scales: torch.Tensor | None = None
        if column_steps:
            self.column_scales = column_step_scales(matrix)
            matrix = matrix / self.column_scales
        self.weight = nn.Parameter(matrix.clone())
        bias = getattr(module, "bias", None)
        if bias is not None and train_bias:
            self.bias: nn.Parameter | torch.Tensor | None = nn.Parameter(bias.detach().float().clone())
        else:
            self.bias = None if bias is None else bias.detach().float()

    def masked_weight(self) -> torch.Tensor:
        if self.column_scales is not None:
            return self.weight * self.column_scales * self.mask
        return self.weight * self.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.linear(x, self.masked_weight().to(x.dtype))
        return y if self.bias is None else y + self.bias.to(y.dtype)


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


def train_kept_weights(block: nn.Module, modules: dict[str, nn.Module], dense_params: list[nn.Parameter],
                       config: ReconstructionConfig, hidden: Sequence[torch.Tensor],
                       kwargs_by_batch: dict[int, dict[str, Any]], targets: Sequence[torch.Tensor],
                       training: list[int], seed: int, start_loss: float = 0.0
                       ) -> tuple[dict[str, MaskedLinear], int, float]:
    """Train the kept weights of `modules` (the block's pruned Linears by name), and `dense_params` in place (the
    norms, with `train_norms`), on the windows `training` (local indices; a data-parallel rank trains on its own
    share, gradients averaged over the ranks at every step). With `config.proximal`, each step's loss adds the pull
    toward the starting weights, `config.proximal * start_loss * relative_drift` (`start_loss`: the block loss
    before the refit on the training windows of every rank, the same number on each, which puts the pull on the
    block loss's scale).

    Returns the trained wrappers (the block holds its original modules again), the number of steps and the seconds
    spent. Raises FloatingPointError (on every rank) when a loss is not finite."""
    started = time.perf_counter()
    column_steps = config.step_scale == "column"
    wrappers = {name: MaskedLinear(module, config.train_norms, column_steps) for name, module in modules.items()}
    flags = {id(p): p.requires_grad for p in block.parameters()}
    for p in block.parameters():  # only what this refit trains gets gradient buffers
        p.requires_grad_(False)
    for p in dense_params:
        p.requires_grad_(True)
    for name, wrapper in wrappers.items():
        _set_submodule(block, name, wrapper)
    params = [p for w in wrappers.values() for p in w.parameters()] + dense_params
    pull = config.proximal * start_loss
    starts = [w.masked_weight().detach().clone() for w in wrappers.values()] if pull else []
    # Each Linear's damping floor is its own typical gradient; Adam's foreach: one kernel per step, not one per tensor.
    optimiser = training_optimizer(config.optimizer, params, config.lr, floor_per_tensor=True, foreach=True)
    generator = torch.Generator().manual_seed(seed)
    group = distributed.active()
    schedule = None
    if config.lr_schedule == "cosine":
        total = training_step_count(training, config.epochs, group)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(total, 1))
    low = config.precision == "bfloat16"
    steps = 0
    try:
        for index in training_steps(training, config.epochs, generator, group):
            finite = True
            optimiser.zero_grad(set_to_none=True)
            if index is not None:
                x = hidden[index]
                with torch.enable_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=low):
                    out = block_output(block(x, **kwargs_by_batch[x.shape[0]]))
                    loss = block_loss(out, targets[index])
                    if pull:
                        loss = loss + pull * relative_drift([w.masked_weight() for w in wrappers.values()], starts)
                finite = bool(torch.isfinite(loss))
                if not finite and group is None:
                    raise FloatingPointError("non-finite reconstruction loss")
                if finite:
                    loss.backward()
            if group is not None:  # raises FloatingPointError on every rank if one rank's loss was not
                group.average_gradients(params, index is not None, finite)
            optimiser.step()
            if schedule is not None:
                schedule.step()
            steps += 1
    finally:
        for name, module in modules.items():
            _set_submodule(block, name, module)
        for p in block.parameters():
            p.requires_grad_(flags[id(p)])
    return wrappers, steps, time.perf_counter() - started
