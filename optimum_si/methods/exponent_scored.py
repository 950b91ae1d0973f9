"""Shared shape of the activation-weighted metrics (RIA, Z-Pruner): a weight-only importance times ||X_j||^a.

Both take the same kind of knobs (the exponent, per-row or per-matrix comparison) and read the same statistic; a
subclass gives its score function, its config and how the card names it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from .base import Pattern, PruningMethod

if TYPE_CHECKING:
    import torch

    from ..observers.stats import InputStats

__all__ = ["ActivationExponentMethod"]


class ActivationExponentMethod(PruningMethod):
    """Base of a registered metric `score = f(W) * ||X_j||^a`; not registered itself. Its config has the exponent
    under `exponent_field` and a bool `per_row`."""

    # The equivalent distribution-level fold would turn these scores into another metric than the authors' (their
    # row/column normalisations see channel scales, pruning-reference.md §2): SI keeps the authors' mask on the
    # unfolded weights and acts through its learned scales, re-scoring W * s on the same inputs (docs/methods.md).
    fold_changes_mask = False
    display_name: ClassVar[str]  # in errors and on the card
    exponent_label: ClassVar[str] = "activation exponent"
    exponent_field: ClassVar[str]

    @property
    def per_row(self) -> bool:  # type: ignore[override]  # a knob here: per output row, or per matrix
        return bool(self.config.per_row)  # type: ignore[attr-defined]

    @property
    def activation_exponent(self) -> float:
        return float(getattr(self.config, self.exponent_field))

    def scores(self, weight: torch.Tensor, input_sq_norms: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def score(self, weight: torch.Tensor, stats: InputStats | None) -> torch.Tensor:
        if stats is None:
            raise ValueError(f"{self.display_name} needs the calibration statistics of the layer's input.")
        return self.scores(weight, stats.sq_norms)

    def card_rows(self, pattern: Pattern) -> list[tuple[str, str]]:
        group = "N:M groups" if pattern.n_m is not None else "per output row" if self.per_row else "per matrix"
        return [(self.display_name, f"{self.exponent_label} {self.activation_exponent:g}, {group}")]
