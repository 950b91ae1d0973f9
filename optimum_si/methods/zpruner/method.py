"""Z-Pruner (Bhuiyan et al., "Z-Pruner: Post-Training Pruning of Large Language Models for Efficiency without
Retraining", arXiv 2508.15828, IEEE AICCSA 2025; reference code: github.com/sazzadadib/Z-Pruner, `lib/prune.py`,
`z_pruner`).

Score of weight (i, j) of a Linear W [out, in] (pruning-reference.md §1.7):

    R = W / ||W_i.||_2          (each row L2-normalised; signed)
    C = W / ||W_.j||_2          (each column L2-normalised; signed)
    z_R = (R - mean R) / std R  (one mean and one standard deviation over the whole matrix, unbiased std)
    z_C likewise
    f = fraction of entries with |W| < 0.1 * mean |W|
    alpha = 0.7 * (1 - 0.3 * f)
    Z_ij = (alpha * |z_R,ij|^3 + (1 - alpha) * |z_C,ij|^3) * ||X_j||_2 ^ 1.5

Decisions and ambiguities (docs/methods.md gives the sources):
- Comparison group. pruning-reference.md says the masks are per output row; the reference code prunes per row only
  with `--per_outneuron`, and its README commands (which produced its tables) do not pass it, so it prunes per matrix
  (`W_metric <= sorted[k]` over the flattened matrix). The default here follows the code (per matrix);
  `ZPrunerConfig(per_row=True)` is the per-row variant.
- N:M. pruning-reference.md mentions optional 2:4 channel reallocation and LSA; the reference code parses those
  flags (inherited from RIA's code) but `z_pruner` never reads N:M, so `--sparsity_type 2:4` prunes it unstructured.
  Here N:M applies the generic per-row group selection (pruning-reference.md §1.4) to the Z-Pruner score: an
  extension, not a reproduction. No channel permutation.
- The z-scores use the signed normalised weights, as the code does (not |W|); |z|^3 then ranks both tails.
- The code's `root_tanh_scaling` activation term is computed and never used; it is left out.
- Exact-count selection (the walker's), fp32 throughout (the reference runs the weight part in the model's dtype),
  and a zero row or column, or a constant matrix, scores 0 instead of the reference's 0/0 = NaN.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..exponent_scored import ActivationExponentMethod
from .config import ZPrunerConfig

if TYPE_CHECKING:
    import torch

__all__ = ["ZPruner"]


class ZPruner(ActivationExponentMethod):
    """Z-Pruner as a registered method (`SIConfig(method="zpruner")`): the reference code's defaults, ||X||^1.5 and
    per-matrix masks. The recipe sets the knobs: `SIConfig(method="zpruner", method_args={"exponent": ...,
    "per_row": ...})`; `ZPruner(exponent=..., per_row=..., name=...)` makes a variant to register under its own name."""

    name = "zpruner"
    display_name = "Z-Pruner"
    exponent_field = "exponent"
    config_class = ZPrunerConfig
    citation = ("Bhuiyan et al., Z-Pruner: Post-Training Pruning of Large Language Models for Efficiency without "
                "Retraining, arXiv 2508.15828 (IEEE AICCSA 2025).")

    def scores(self, weight: torch.Tensor, input_sq_norms: torch.Tensor) -> torch.Tensor:
        from .scores import zpruner_scores

        return zpruner_scores(weight, input_sq_norms, self.activation_exponent)
