"""Z-Pruner's importance score (Bhuiyan et al., arXiv 2508.15828): pure tensor math (see `method.py` for the reading
of the paper and the authors' code)."""

from __future__ import annotations

import torch

__all__ = ["zpruner_scores", "zpruner_alpha", "DEFAULT_ACTIVATION_EXPONENT"]

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
    mean, std = normalised.mean(), normalised.std()
    # A constant matrix has std 0 (or a few ulps of rounding): every entry then sits at the mean, z = 0, rather than
    # 0/0 or rounding noise blown up to O(1).
    if float(std) <= 16 * torch.finfo(torch.float32).eps * float(normalised.abs().max()):
        return normalised.zero_()
    return normalised.sub_(mean).div_(std).abs_().pow_(3)
