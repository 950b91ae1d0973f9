"""Wanda: |W_ij| * ||X_j||_2, compared per output row (Sun et al., arXiv 2306.11695)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..base import PruningMethod

if TYPE_CHECKING:
    import torch

    from ...observers.stats import InputStats

__all__ = ["Wanda"]


class Wanda(PruningMethod):
    name = "wanda"
    # Its metric needs only ||x_j||, which the teacher pass of SI's global target measures as well (docs/si-design.md).
    si_statistics = "dense"
    citation = ("Sun et al., A Simple and Effective Pruning Approach for Large Language Models (Wanda), "
                "arXiv 2306.11695 (ICLR 2024).")

    def score(self, weight: torch.Tensor, stats: InputStats | None) -> torch.Tensor:
        from .scores import wanda_scores

        if stats is None:
            raise ValueError("Wanda needs the calibration statistics of the layer's input.")
        return wanda_scores(weight, stats.sq_norms)
