"""SparseGPT as a registered method: OBS weight updates with an adaptive mask (the solver is optimum_si.sparsegpt)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from .base import PruningMethod, Solved
from .registry import register_method

if TYPE_CHECKING:
    import torch

    from ..config import SIConfig
    from ..stats import InputStats

__all__ = ["SparseGPT"]


@register_method
class SparseGPT(PruningMethod):
    name = "sparsegpt"
    needs_hessian = True
    per_row = False
    updates_weights = True
    citation = ("Frantar & Alistarh, SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot, "
                "arXiv 2301.00774 (ICML 2023).")

    def solve(self, weights: dict[str, torch.Tensor], stats: dict[str, InputStats],
              config: SIConfig) -> Iterator[Solved]:
        """Layers sharing an input (q/k/v, gate/up) share H^-1: they are solved in one call, stacked by rows."""
        import torch

        from ..sparsegpt import sparsegpt_prune

        for names in _stacked_by_input(weights, stats):
            stacked = [weights[n] for n in names]
            result = sparsegpt_prune(
                torch.cat(stacked) if len(stacked) > 1 else stacked[0],
                stats[names[0]].hessian_factor(config.dampening_frac), config.sparsity, config.n_m, config.block_size,
                segments=[w.shape[0] for w in stacked],
            )
            rows = [w.shape[0] for w in stacked]
            del stacked
            parts = zip(names, result.weight.split(rows), result.keep_mask.split(rows), result.segment_losses)
            del result
            yield from parts

    def card_rows(self, config: SIConfig) -> list[tuple[str, str]]:
        return [("SparseGPT", f"block size {config.block_size}, dampening {config.dampening_frac}")]


def _stacked_by_input(weights: dict[str, torch.Tensor], stats: dict[str, InputStats]) -> list[list[str]]:
    """Names of layers grouped by shared input statistics, in order of first appearance."""
    buckets: dict[int, list[str]] = {}
    for name in weights:
        buckets.setdefault(id(stats[name]), []).append(name)
    return list(buckets.values())
