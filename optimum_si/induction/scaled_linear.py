"""`ScaledLinear`: a pruned Linear with learnable input-column and output-row scales, used while Sparsity Induction
trains a block; and the importance histograms of its weights before and after (the paper's Fig. 1)."""

from __future__ import annotations

import torch
from torch import nn

from ..methods.base import Pattern, PruningMethod
from ..methods.masks import select_mask
from ..methods.wanda.scores import wanda_scores
from ..observers.stats import InputStats
from .config import InductionConfig

__all__ = ["ScaledLinear", "importance_histogram", "HISTOGRAM_EDGES"]

# log10 importance-score bins of the report's before/after histograms (the paper's Fig. 1), fixed so that blocks and
# models can be summed and compared.
HISTOGRAM_EDGES = [round(-8.0 + 0.1 * i, 1) for i in range(121)]


@torch.no_grad()
def importance_histogram(wrappers, scaled: bool = False) -> list[int]:
    """Counts of log10(|W| * ||x||) over every weight of `wrappers` (dense weights, scaled by the learned row and
    column scales when `scaled`); scores outside the edges land in the end bins."""
    low, high, bins = HISTOGRAM_EDGES[0], HISTOGRAM_EDGES[-1], len(HISTOGRAM_EDGES) - 1
    counts = torch.zeros(bins, dtype=torch.float64)
    for wrapper in wrappers:
        weight = wrapper.dense_weight
        if scaled:  # |r * W * s| = r * |W| * s exactly (positive scales): the same bits as scaling the scores
            weight = wrapper.log_row.detach().exp().unsqueeze(1) * weight * wrapper.log_col.detach().exp().unsqueeze(0)
        if wrapper.sq_norms is not None:
            scores = wanda_scores(weight, wrapper.sq_norms.to(weight.device))
        else:
            scores = weight.abs()
        logs = scores.clamp_min(1e-30).log10().clamp(low, high - 1e-6)
        counts += torch.histc(logs.float(), bins=bins, min=low, max=high).double().cpu()
    return [int(c) for c in counts.tolist()]


class ScaledLinear(nn.Module):
    """A pruned Linear (or GPT-2 Conv1D, which computes the same x W^T + b) with learnable log input-column and
    output-row scales, used only while inducing."""

    def __init__(self, linear: nn.Module, dense_weight: torch.Tensor, keep: torch.Tensor, pruned_weight: torch.Tensor,
                 sq_norms: torch.Tensor | None, config: InductionConfig, method: PruningMethod, pattern: Pattern,
                 score_row_scale: torch.Tensor | None = None) -> None:
        """`pattern`: this layer's planned sparsity (a non-uniform plan such as OWL gives each block its own) and
        N:M structure, which every mask refresh keeps. `method`: the configured base method."""
        super().__init__()
        self.pattern = pattern
        self.score_row_scale = score_row_scale
        self.out_features, self.in_features = dense_weight.shape  # [out, in], also for a Conv1D stored [in, out]
        self.register_buffer("dense_weight", dense_weight.float(), persistent=False)
        self.register_buffer("pruned_weight", pruned_weight.float(), persistent=False)
        self.register_buffer("keep", keep, persistent=False)
        self.bias = None if linear.bias is None else linear.bias.detach().float()
        self.sq_norms = sq_norms
        device = linear.weight.device
        self.log_col = nn.Parameter(torch.zeros(self.in_features, device=device), requires_grad=config.col_scales)
        self.log_row = nn.Parameter(torch.zeros(self.out_features, device=device), requires_grad=config.row_scales)
        # The configured method (the recipe's knobs, e.g. RIA's a), so a refresh re-selects the mask the base pruner
        # would select, not the registered defaults'.
        self.method = method
        # Mask-only methods may re-select the mask as the column scales move; a method that updated the kept weights
        # (SparseGPT) did so for its own mask, so it keeps that mask.
        self.refreshable = not self.method.updates_weights and config.refresh != "none"
        self._masked = self._compute_masked()

    def _compute_masked(self) -> torch.Tensor:
        return self.pruned_weight if not self.refreshable else self.dense_weight * self.keep

    def masked_weight(self) -> torch.Tensor:
        return self._masked

    def refresh_mask(self, sq_norms: torch.Tensor | None = None) -> None:
        """Re-select the mask of the base metric for the layer with scaled inputs (eq. 11): the method's score of
        W * s (for Wanda |W| * s * ||x||); `sq_norms` replaces the cached input statistics (classical refresh)."""
        if not self.refreshable:
            return
        col = self.log_col.detach().exp()
        norms = sq_norms if sq_norms is not None else self.sq_norms
        stats = InputStats.of_sq_norms(norms) if norms is not None else None
        # |W * s| = |W| * s exactly (s > 0), so every metric sees the scaled layer without a second formula here.
        scores = self.method.score(self.dense_weight * col.unsqueeze(0), stats)
        if self.score_row_scale is not None:
            scores = scores * self.score_row_scale.to(scores.device).unsqueeze(1)
        self.keep = select_mask(scores, self.pattern.sparsity, self.pattern.n_m, per_row=self.method.per_row)
        self._masked = self._compute_masked()  # once per refresh, not once per forward

    def effective_weight(self) -> torch.Tensor:
        return self.log_row.exp().unsqueeze(1) * self.masked_weight() * self.log_col.exp().unsqueeze(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Scaling activations and outputs avoids a weight-sized gradient per step.
        # Under autocast (InductionConfig(precision="bfloat16")) the product comes out in bf16: keep it so (y.dtype), or
        # the fp32 row scale would promote every later operation of the block back to fp32.
        y = nn.functional.linear(x * self.log_col.exp().to(x.dtype), self.masked_weight().to(x.dtype))
        y = y * self.log_row.exp().to(y.dtype)
        return y if self.bias is None else y + self.bias.to(y.dtype)
