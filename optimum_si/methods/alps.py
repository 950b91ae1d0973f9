"""ALPS as a registered method (`SIConfig(method="alps")`): ADMM support search and PCG refinement of the kept
weights on the layer-wise reconstruction objective; the math is `optimum_si.alps`.

Meng et al., "ALPS: Improved Optimization for Highly Sparse One-Shot Pruning for Large Language Models", NeurIPS
2024 (arXiv 2406.07831); defaults from the authors' code, github.com/mazumder-lab/ALPS (docs/methods.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from .base import PruningMethod, Solved
from .registry import register_method

if TYPE_CHECKING:
    import torch

    from ..config import SIConfig
    from ..stats import InputStats

__all__ = ["ALPS"]


def _positive(label: str, value: float, zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value >= 0 if zero else value > 0) \
            or value == float("inf"):
        raise ValueError(f"ALPS: {label} must be a finite number {'>= 0' if zero else '> 0'}, got {value!r}.")
    return float(value)


def _count(label: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"ALPS: {label} must be an integer >= {minimum}, got {value!r}.")
    return value


@register_method
class ALPS(PruningMethod):
    """ALPS with the authors' defaults. The recipe sets the knobs (`SIConfig(method="alps", alps_rho0=...,
    alps_max_iter=..., alps_update_every=..., alps_min_iter=..., alps_pcg_iters=..., alps_pcg_rtol=...,
    alps_dampening=...)`); `ALPS(rho0=..., max_iter=..., ..., name=...)` makes a variant to register under its own
    name, e.g. `register_method(ALPS(max_iter=100, name="alps-fast"))`.

    Like SparseGPT it rewrites the kept weights, so under Sparsity Induction it is treated as SparseGPT is: its mask
    is kept, the scales are learned on top, and no mask refresh re-runs it (docs/methods.md)."""

    name = "alps"
    needs_hessian = True
    per_row = False  # the authors' projection keeps the largest normalised weights of the whole matrix
    updates_weights = True
    config_fields = {"alps_rho0": "rho0", "alps_max_iter": "max_iter", "alps_update_every": "update_every",
                     "alps_min_iter": "min_iter", "alps_pcg_iters": "pcg_iters", "alps_pcg_rtol": "pcg_rtol",
                     "alps_dampening": "dampening"}
    citation = ("Meng, Behdin, Wang & Mazumder, ALPS: Improved Optimization for Highly Sparse One-Shot Pruning for "
                "Large Language Models, NeurIPS 2024 (arXiv 2406.07831).")

    def __init__(self, rho0: float | None = None, max_iter: int | None = None, update_every: int | None = None,
                 min_iter: int | None = None, pcg_iters: int | None = None, pcg_rtol: float | None = None,
                 dampening: float | None = None, name: str = "alps") -> None:
        from .. import alps as defaults  # torch-free at import time: the CLI looks methods up before loading torch

        self.rho0 = _positive("rho0", defaults.DEFAULT_RHO0 if rho0 is None else rho0)
        self.max_iter = _count("max_iter", defaults.DEFAULT_MAX_ITER if max_iter is None else max_iter, 1)
        self.update_every = _count("update_every", defaults.DEFAULT_UPDATE_EVERY if update_every is None else update_every, 1)
        self.min_iter = _count("min_iter", defaults.DEFAULT_MIN_ITER if min_iter is None else min_iter, 0)
        self.pcg_iters = _count("pcg_iters", defaults.DEFAULT_PCG_ITERS if pcg_iters is None else pcg_iters, 0)
        self.pcg_rtol = _positive("pcg_rtol", defaults.DEFAULT_PCG_RTOL if pcg_rtol is None else pcg_rtol, zero=True)
        self.dampening = _positive("dampening", defaults.DEFAULT_DAMPENING if dampening is None else dampening)
        self.name = name  # type: ignore[misc]  # a variant's instance value shadows the class default

    def solve(self, weights: dict[str, torch.Tensor], stats: dict[str, InputStats],
              config: SIConfig) -> Iterator[Solved]:
        """One layer at a time; the eigendecomposition of a shared input's Hessian is reused by the next layer that
        reads it (q/k/v, gate/up come in a row) and dropped as soon as another input comes."""
        from ..alps import alps_prune, prepare_hessian

        prepared_for, prepared = None, None
        for name, weight in weights.items():
            if prepared_for is not stats[name]:
                prepared = None  # free the last input's d x d matrices before making the next ones
                prepared = prepare_hessian(stats[name].hessian, self.dampening)  # on the statistics' device, as SparseGPT
                prepared_for = stats[name]
            result = alps_prune(weight, prepared, config.sparsity, config.n_m, rho0=self.rho0, max_iter=self.max_iter,
                                update_every=self.update_every, min_iter=self.min_iter, pcg_iters=self.pcg_iters,
                                pcg_rtol=self.pcg_rtol)
            yield name, result.weight.float(), result.keep_mask, result.loss
            del result

    def card_rows(self, config: SIConfig) -> list[tuple[str, str]]:
        return [("ALPS", f"ρ0 = {self.rho0:g}, at most {self.max_iter} ADMM iterations (ρ updated every "
                         f"{self.update_every}, support-settled stop from iteration {self.min_iter}), "
                         f"{self.pcg_iters} PCG iterations (rtol {self.pcg_rtol:g}), dampening {self.dampening:g}")]

