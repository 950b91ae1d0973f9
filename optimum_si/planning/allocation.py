"""Non-uniform sparsity across decoder blocks: OWL, Outlier Weighed Layerwise sparsity (Yin et al., "Outlier Weighed
Layerwise Sparsity (OWL): A Missing Secret Sauce for Pruning LLMs to High Sparsity", ICML 2024, arXiv 2310.05175;
reference code: github.com/luuyin/OWL, `lib/prune_all.py`, `prune_wanda_outlier`; the same mapping is
llm-compressor's `_infer_owl_layer_sparsity`, `sparsity_profile="owl"`).

Pure math, in two steps:

1. `outlier_ratio`: for one block, pool the Wanda metric |W_ij| * ||X_j|| of all its pruned matrices and take the
   percentage of entries strictly above `m` times the pooled mean (`owl_m`, the code's `--Hyper_m`, 5).
2. `owl_sparsities`: min-max normalise the blocks' ratios to [0, 2 * lambda] (`owl_lambda`, the code's `--Lamda`,
   0.08), subtract their mean and add the target density 1 - s: that is each block's density, and its sparsity is
   1 - density. Blocks with more outliers are pruned less; the mean over blocks is exactly the target.

The range. The paper states s_l in [s - lambda, s + lambda]; the code's mapping guarantees max - min = 2 * lambda
and the mean s, but not that bound: with ratios (0, 0, 0, 1) the block sparsities are s + lambda/2 (three times)
and s - 3 * lambda / 2. `owl_sparsities` follows the code by default (what the published tables and llm-compressor
run); `within_lambda=True` shrinks the deviations around s just enough to meet the paper's bound (order and mean
kept). docs/methods.md records the choice.

Who calls this: the statistics must come from the *dense* model (OWL profiles every block, propagating the
calibration inputs through unpruned blocks, before pruning any), so a walk needs one profiling pass and then a
per-module sparsity seam (`sparsity_for(name)`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["outlier_ratio", "owl_sparsities", "DEFAULT_OWL_M", "DEFAULT_OWL_LAMBDA"]

# The README's commands for unstructured sparsity (--Hyper_m 5 --Lamda 0.08); llm-compressor's defaults too.
DEFAULT_OWL_M = 5.0
DEFAULT_OWL_LAMBDA = 0.08


def outlier_ratio(scores: Iterable[torch.Tensor], m: float = DEFAULT_OWL_M) -> float:
    """Percentage (0-100) of the pooled entries of `scores` strictly greater than `m` times their pooled mean.

    `scores` are the Wanda metrics of one block's matrices (any shapes), pooled without concatenation: one pass sums
    them (in float64, so a block of hundreds of millions of entries keeps an exact enough mean), a second counts
    the outliers. A re-iterable that makes each metric on the fly keeps one matrix's metric in memory at a time; a
    one-shot iterator is read into a list first.
    """
    if not m > 0:
        raise ValueError(f"owl_m must be > 0, got {m!r}.")
    if iter(scores) is scores:  # a generator cannot be read twice
        scores = list(scores)
    count, total = 0, 0.0
    for t in scores:
        count += t.numel()
        total += float(t.detach().double().sum())
    if count == 0:
        raise ValueError("outlier_ratio needs at least one score.")
    if not math.isfinite(total):
        raise ValueError("outlier_ratio got non-finite scores.")
    threshold = m * total / count
    above = sum(int((t.detach() > threshold).sum()) for t in scores)
    return 100.0 * above / count


def owl_sparsities(outlier_ratios: Sequence[float], target: float, lam: float = DEFAULT_OWL_LAMBDA, *,
                   within_lambda: bool = False) -> list[float]:
    """Per-block sparsities from the blocks' outlier ratios (any common unit): mean exactly `target` (up to float
    rounding), spread 2 * `lam` (the authors' mapping) or, with `within_lambda`, each within `target` +- `lam`.

    Equal ratios (nothing to tell the blocks apart; the code would divide 0 by 0) give `target` everywhere.
    A block sparsity outside [0, 1) raises ValueError (the code clamps sparsities <= 0 to 0.01, which moves the mean,
    and lets them pass 1); a smaller `lam` or `within_lambda=True` fits them.
    """
    if not 0 < target < 1:
        raise ValueError(f"The target sparsity must be in (0, 1), got {target!r}.")
    if not lam >= 0:
        raise ValueError(f"owl_lambda must be >= 0, got {lam!r}.")
    ratios = [float(r) for r in outlier_ratios]
    if not ratios:
        raise ValueError("owl_sparsities needs the outlier ratio of at least one block.")
    if not all(math.isfinite(r) for r in ratios):
        raise ValueError(f"Outlier ratios must be finite, got {ratios}.")
    low, high = min(ratios), max(ratios)
    if high == low:
        return [float(target)] * len(ratios)
    spread = [(r - low) / (high - low) * 2 * lam for r in ratios]  # in [0, 2 * lam]
    mean = math.fsum(spread) / len(spread)
    # Density_l = spread_l - mean + (1 - target), so sparsity_l = target - (spread_l - mean).
    deviations = [v - mean for v in spread]
    if within_lambda:
        largest = max(abs(d) for d in deviations)
        if largest > lam:
            deviations = [d * lam / largest for d in deviations]
    sparsities = [target - d for d in deviations]
    outside = [(i, s) for i, s in enumerate(sparsities) if not 0 <= s < 1]
    if outside:
        shown = ", ".join(f"block {i}: {s:.4f}" for i, s in outside[:4])
        raise ValueError(
            f"OWL with target {target} and lambda {lam} gives block sparsities outside [0, 1) ({shown}); use a "
            "smaller owl_lambda (or the paper's bound, within_lambda=True).")
    return sparsities
