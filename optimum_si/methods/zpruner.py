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
  `zpruner_per_row=True` is the per-row variant.
- N:M. pruning-reference.md mentions optional 2:4 channel reallocation and LSA; the reference code parses those
  flags (inherited from RIA's code) but `z_pruner` never reads N:M, so `--sparsity_type 2:4` prunes it unstructured.
  Here N:M applies the generic per-row group selection (pruning-reference.md §1.4) to the Z-Pruner score: an
  extension, not a reproduction. No channel permutation.
- The z-scores use the signed normalised weights, as the code does (not |W|); |z|^3 then ranks both tails.
- The code's `root_tanh_scaling` activation term is computed and never used; it is left out.
- Exact-count selection (the engine's), fp32 throughout (the reference runs the weight part in the model's dtype),
  and a zero row or column, or a constant matrix, scores 0 instead of the reference's 0/0 = NaN.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .exponent_scored import ActivationExponentMethod
from .registry import register_method

if TYPE_CHECKING:
    import torch

__all__ = ["ZPruner", "zpruner_scores", "zpruner_alpha", "DEFAULT_ACTIVATION_EXPONENT"]

# The reference code's hard-coded constants (none of them is a command-line option there).
DEFAULT_ACTIVATION_EXPONENT = 1.5
_ALPHA_MAX = 0.7  # weight of the row part when no weight is "small"
_ALPHA_SMALL_SLOPE = 0.3  # how much a fully "small" matrix shifts weight to the column part
_SMALL_FRACTION_OF_MEAN = 0.1  # |W| below this fraction of mean |W| counts as small


def zpruner_alpha(weight: torch.Tensor) -> float:
    """The data-dependent mix of the row part: 0.7 * (1 - 0.3 * fraction of |W| below 0.1 * mean |W|)."""
    magnitude = weight.detach().float().abs()
    small = float((magnitude < _SMALL_FRACTION_OF_MEAN * magnitude.mean()).float().mean())
    return _ALPHA_MAX * (1.0 - _ALPHA_SMALL_SLOPE * small)


def zpruner_scores(weight: torch.Tensor, input_sq_norms: torch.Tensor,
                   activation_exponent: float = DEFAULT_ACTIVATION_EXPONENT) -> torch.Tensor:
    """Z-Pruner importance of `weight` [out, in] (fp32, same shape; higher = kept).

    `input_sq_norms[j]` is the sum over calibration tokens of x_j^2; the reference's per-sample mean differs by one
    positive factor for the whole matrix, which changes no ranking.
    """
    import torch

    w = weight.detach().float()
    tiny = torch.finfo(torch.float32).tiny
    alpha = zpruner_alpha(w)
    # Fresh tensors, so the in-place steps below never touch the caller's weight; at most three [out, in] fp32
    # temporaries live at once (the weight's fp32 copy, the row part, the column part).
    scores = _cubed_z(w / w.norm(dim=1, keepdim=True).clamp_min(tiny)).mul_(alpha)
    scores.add_(_cubed_z(w / w.norm(dim=0, keepdim=True).clamp_min(tiny)), alpha=1.0 - alpha)
    activation = input_sq_norms.float().clamp_min(0).pow(activation_exponent / 2)  # ||X_j||^1.5
    return scores.mul_(activation.to(scores.device).unsqueeze(0))


def _cubed_z(normalised: torch.Tensor) -> torch.Tensor:
    """|z|^3 of every entry, z-scored with the mean and unbiased std of the whole matrix (in place, returned)."""
    import torch

    mean, std = normalised.mean(), normalised.std()
    # A constant matrix has std 0 (or a few ulps of rounding): every entry then sits at the mean, z = 0, rather than
    # 0/0 or rounding noise blown up to O(1).
    if float(std) <= 16 * torch.finfo(torch.float32).eps * float(normalised.abs().max()):
        return normalised.zero_()
    return normalised.sub_(mean).div_(std).abs_().pow_(3)


@register_method
class ZPruner(ActivationExponentMethod):
    """Z-Pruner as a registered method (`SIConfig(method="zpruner")`): the reference code's defaults, ||X||^1.5 and
    per-matrix masks. The recipe sets the knobs: `SIConfig(method="zpruner", zpruner_exponent=..., zpruner_per_row=...)`;
    `ZPruner(activation_exponent=..., per_row=..., name=...)` makes a variant to register under its own name."""

    name = "zpruner"
    display_name = "Z-Pruner"
    default_exponent = DEFAULT_ACTIVATION_EXPONENT
    config_fields = {"zpruner_exponent": "activation_exponent", "zpruner_per_row": "per_row"}
    citation = ("Bhuiyan et al., Z-Pruner: Post-Training Pruning of Large Language Models for Efficiency without "
                "Retraining, arXiv 2508.15828 (IEEE AICCSA 2025).")

    def scores(self, weight: torch.Tensor, input_sq_norms: torch.Tensor) -> torch.Tensor:
        return zpruner_scores(weight, input_sq_norms, self.activation_exponent)
