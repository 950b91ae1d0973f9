"""ALPS as a registered method (`SIConfig(method="alps")`): ADMM support search and PCG refinement of the kept
weights on the layer-wise reconstruction objective; the math is `solver.py`.

Meng et al., "ALPS: Improved Optimization for Highly Sparse One-Shot Pruning for Large Language Models", NeurIPS
2024 (arXiv 2406.07831); defaults from the authors' code, github.com/mazumder-lab/ALPS (docs/methods.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..base import Pattern, PruningMethod, Solved
from .config import ALPSConfig

if TYPE_CHECKING:
    import torch

    from ...observers.stats import InputStats

__all__ = ["ALPS"]


class ALPS(PruningMethod):
    """ALPS with the authors' defaults. The recipe sets the knobs (`SIConfig(method="alps", method_args={"rho0": ...,
    "max_iter": ..., ...})`); `ALPS(max_iter=100, name="alps-fast")` makes a variant to register under its own name.

    Like SparseGPT it rewrites the kept weights, so under Sparsity Induction it is treated as SparseGPT is: its mask
    is kept, the scales are learned on top, and no mask refresh re-runs it (docs/methods.md)."""

    name = "alps"
    needs_hessian = True
    per_row = False  # the authors' projection keeps the largest normalised weights of the whole matrix
    updates_weights = True
    config_class = ALPSConfig
    citation = ("Meng, Behdin, Wang & Mazumder, ALPS: Improved Optimization for Highly Sparse One-Shot Pruning for "
                "Large Language Models, NeurIPS 2024 (arXiv 2406.07831).")
    config: ALPSConfig

    def solve(self, weights: dict[str, torch.Tensor], stats: dict[str, InputStats],
              pattern: Pattern) -> Iterator[Solved]:
        """One layer at a time; the eigendecomposition of a shared input's Hessian is reused by the next layer that
        reads it (q/k/v, gate/up come in a row) and dropped as soon as another input comes."""
        from .solver import alps_prune, prepare_hessian

        knobs = self.config
        prepared_for, prepared = None, None
        for name, weight in weights.items():
            if prepared_for is not stats[name]:
                prepared = None  # free the last input's d x d matrices before making the next ones
                prepared = prepare_hessian(stats[name].hessian, knobs.dampening)  # on the statistics' device
                prepared_for = stats[name]
            result = alps_prune(weight, prepared, pattern.sparsity, pattern.n_m, rho0=knobs.rho0,
                                max_iter=knobs.max_iter, update_every=knobs.update_every, min_iter=knobs.min_iter,
                                pcg_iters=knobs.pcg_iters, pcg_rtol=knobs.pcg_rtol)
            yield name, result.weight.float(), result.keep_mask, result.loss
            del result

    def card_rows(self, pattern: Pattern) -> list[tuple[str, str]]:
        k = self.config
        return [("ALPS", f"ρ0 = {k.rho0:g}, at most {k.max_iter} ADMM iterations (ρ updated every "
                         f"{k.update_every}, support-settled stop from iteration {k.min_iter}), "
                         f"{k.pcg_iters} PCG iterations (rtol {k.pcg_rtol:g}), dampening {k.dampening:g}")]
