"""Applying the base method to a group of targets: score -> exact-count mask (mask-only methods) or solve (weight
updates), each pruned weight written through its target (finite check, +0.0 zeros, undo log) and recorded, one
layer at a time so that only one layer's temporaries are alive."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from ..methods.base import Pattern, PruningMethod, Solved
from ..methods.masks import select_mask
from ..modeling.targets import WeightTarget
from ..modeling.weights import UndoLog
from ..observers.stats import InputStats
from ..reporting.report import LayerRecord, PruneReport

__all__ = ["prune_group"]


@torch.no_grad()
def prune_group(method: PruningMethod, prefix: str, group: dict[str, WeightTarget], stats: dict[str, InputStats],
                pattern_for: Callable[[str], Pattern], undo: UndoLog, report: PruneReport, keep_masks: bool = False,
                row_scales: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Prune every target of `group` (names inside the block at `prefix`) with `method`; returns their keep masks
    when `keep_masks`. `pattern_for(full name)` is each target's planned sparsity; `row_scales` undoes, in a
    score, the row division of targets that produce a channel a stage rescaled (`BlockContext.score_row_scales`)."""
    keeps = {}
    weights = {name: target.weight() for name, target in group.items()}
    if method.updates_weights:
        results = _solve(method, prefix, weights, stats, pattern_for)
    else:
        results = _mask_prune(method, prefix, weights, stats, pattern_for, row_scales)
    for name, new_weight, keep, error in results:  # lazily: one layer's temporaries at a time
        target = group[name]
        target.record(undo)
        target.write(new_weight)
        del new_weight  # a Linear's temporaries must not live on while the next (maybe larger) one is pruned
        report.layers[f"{prefix}.{name}"] = LayerRecord(name=f"{prefix}.{name}", numel=target.numel,
                                                        zeros=target.zeros(), error=error)
        if keep_masks:
            keeps[name] = keep
        del keep
    return keeps


def _solve(method: PruningMethod, prefix: str, weights: dict[str, torch.Tensor], stats: dict[str, InputStats],
           pattern_for: Callable[[str], Pattern]) -> Iterator[Solved]:
    """A weight-updating method's results; layers planned at different sparsities are solved in separate calls."""
    by_pattern: dict[Pattern, dict[str, torch.Tensor]] = {}
    for name, weight in weights.items():
        by_pattern.setdefault(pattern_for(f"{prefix}.{name}"), {})[name] = weight
    for pattern, part in by_pattern.items():
        yield from method.solve(part, stats, pattern)


def _mask_prune(method: PruningMethod, prefix: str, weights: dict[str, torch.Tensor], stats: dict[str, InputStats],
                pattern_for: Callable[[str], Pattern],
                row_scales: dict[str, torch.Tensor] | None) -> Iterator[Solved]:
    """(name, pruned weight, keep mask, output error) of a mask-only method, one layer at a time."""
    for name, weight in weights.items():
        scores = method.score(weight, stats.get(name))
        if row_scales and name in row_scales:
            scores = scores * row_scales[name].to(scores.device).unsqueeze(1)
        pattern = pattern_for(f"{prefix}.{name}")
        keep = select_mask(scores, pattern.sparsity, pattern.n_m, per_row=method.per_row)
        del scores
        new_weight = torch.where(keep, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))
        error = None
        if name in stats:  # sum over rows of ||x||^2-weighted squared removed weights (Wanda's output-error proxy)
            removed = weight.float().square().masked_fill_(keep, 0.0)
            error = float((removed @ stats[name].sq_norms.to(removed.device)).sum())
        yield name, new_weight, keep, error
