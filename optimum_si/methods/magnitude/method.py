"""Magnitude pruning: |W|, compared over the whole matrix; needs no data."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..base import PruningMethod

if TYPE_CHECKING:
    import torch

    from ...observers.stats import InputStats

__all__ = ["Magnitude"]


class Magnitude(PruningMethod):
    name = "magnitude"
    needs_data = False
    per_row = False
    # A per-matrix |W| mask sees channel scales, so SI's distribution-level fold moves it (its purpose here).
    fold_changes_mask = True
    citation = ("Zhu & Gupta, To prune, or not to prune: exploring the efficacy of pruning for model compression, "
                "arXiv 1710.01878.")

    def score(self, weight: torch.Tensor, stats: InputStats | None) -> torch.Tensor:
        from .scores import magnitude_scores

        return magnitude_scores(weight)
