"""Wanda's importance score |W_ij| * ||X_j||_2 (Sun et al., arXiv 2306.11695): pure tensor math."""

from __future__ import annotations

import torch

__all__ = ["wanda_scores"]


def wanda_scores(weight: torch.Tensor, input_sq_norms: torch.Tensor) -> torch.Tensor:
    """`input_sq_norms[j]` is sum over calibration tokens of x_j^2; any positive common factor gives the same ranking."""
    return weight.detach().float().abs() * input_sq_norms.float().clamp_min(0).sqrt().unsqueeze(0)
