"""RIA's importance score (Zhang et al., ICLR 2024): pure tensor math (see `method.py` for the reading of the paper
and the authors' code)."""

from __future__ import annotations

import torch

__all__ = ["ria_scores", "DEFAULT_ACTIVATION_EXPONENT"]

# The reference code's `--a` default and the paper's setting.
DEFAULT_ACTIVATION_EXPONENT = 0.5


def ria_scores(weight: torch.Tensor, input_sq_norms: torch.Tensor,
               activation_exponent: float = DEFAULT_ACTIVATION_EXPONENT) -> torch.Tensor:
    """RIA importance of `weight` [out, in] (fp32, same shape; higher = kept).

    `input_sq_norms[j]` is the sum over calibration tokens of x_j^2. The reference uses a per-sample mean of the
    same quantity; the two differ by one positive factor for the whole matrix, which changes no ranking.
    """
    magnitude = weight.detach().float().abs()
    # Dividing by a clamped sum gives 0 (not NaN) for an all-zero row or column: its entries are all 0 themselves.
    tiny = torch.finfo(torch.float32).tiny
    relative = magnitude / magnitude.sum(1, keepdim=True).clamp_min(tiny)
    relative.add_(magnitude.div_(magnitude.sum(0, keepdim=True).clamp_min(tiny)))
    activation = input_sq_norms.float().clamp_min(0).pow(activation_exponent / 2)  # ||X_j||^a
    return relative.mul_(activation.to(relative.device).unsqueeze(0))
