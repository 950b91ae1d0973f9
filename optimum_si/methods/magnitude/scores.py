"""Magnitude pruning's importance score |W| (Zhu & Gupta, arXiv 1710.01878): pure tensor math."""

from __future__ import annotations

import torch

__all__ = ["magnitude_scores"]


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().float().abs()
