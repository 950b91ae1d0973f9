"""SparseGPT as a registered method: OBS weight updates with an adaptive mask (the solver is `solver.py`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..base import Pattern, PruningMethod, Solved
from .config import SparseGPTConfig

if TYPE_CHECKING:
    import torch

    from ...observers.stats import InputStats

__all__ = ["SparseGPT"]


class SparseGPT(PruningMethod):
    name = "sparsegpt"
    needs_hessian = True
    per_row = False
    updates_weights = True
    config_class = SparseGPTConfig
    citation = ("Frantar & Alistarh, SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot, "
                "arXiv 2301.00774 (ICML 2023).")
    config: SparseGPTConfig

    def solve(self, weights: dict[str, torch.Tensor], stats: dict[str, InputStats],
              pattern: Pattern) -> Iterator[Solved]:
        """Layers sharing an input (q/k/v, gate/up) share H^-1: they are solved in one call, stacked by rows."""
        import torch

        from .solver import inverse_hessian_factor, sparsegpt_prune

        for names in _stacked_by_input(weights, stats):
            stacked = [weights[n] for n in names]
            result = sparsegpt_prune(
                torch.cat(stacked) if len(stacked) > 1 else stacked[0],
                inverse_hessian_factor(stats[names[0]].hessian, self.config.dampening_frac), pattern.sparsity,
                pattern.n_m, self.config.block_size, segments=[w.shape[0] for w in stacked],
            )
            rows = [w.shape[0] for w in stacked]
            del stacked
            parts = zip(names, result.weight.split(rows), result.keep_mask.split(rows), result.segment_losses)
            del result
            yield from parts

    def card_rows(self, pattern: Pattern) -> list[tuple[str, str]]:
        return [("SparseGPT", f"block size {self.config.block_size}, dampening {self.config.dampening_frac}")]


def _stacked_by_input(weights: dict[str, torch.Tensor], stats: dict[str, InputStats]) -> list[list[str]]:
    """Names of layers grouped by shared input statistics, in order of first appearance."""
    buckets: dict[int, list[str]] = {}
    for name in weights:
        buckets.setdefault(id(stats[name]), []).append(name)
    return list(buckets.values())
