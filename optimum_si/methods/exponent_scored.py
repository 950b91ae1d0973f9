"""Shared shape of the activation-weighted metrics (RIA, Z-Pruner): a weight-only importance times ||X_j||^a.

Both take the same knobs (the exponent `a`, per-row or per-matrix comparison, a name to register a variant under)
and read the same statistic; a subclass gives its score function, its default exponent and how the card names it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from .base import PruningMethod

if TYPE_CHECKING:
    import torch

    from ..config import SIConfig
    from ..stats import InputStats

__all__ = ["ActivationExponentMethod"]


class ActivationExponentMethod(PruningMethod):
    """Base of a registered metric `score = f(W) * ||X_j||^a`; not registered itself."""

    per_row = False
    # The equivalent distribution-level fold would turn these scores into another metric than the authors' (their
    # row/column normalisations see channel scales, pruning-reference.md §2): SI keeps the authors' mask on the
    # unfolded weights and acts through its learned scales, re-scoring W * s on the same inputs (docs/methods.md).
    fold_changes_mask = False
    default_exponent: ClassVar[float]
    display_name: ClassVar[str]  # in errors and on the card
    exponent_label: ClassVar[str] = "activation exponent"

    def __init__(self, activation_exponent: float | None = None, per_row: bool = False,
                 name: str | None = None) -> None:
        exponent = self.default_exponent if activation_exponent is None else activation_exponent
        if not exponent >= 0:  # also refuses NaN
            raise ValueError(f"{self.display_name}'s activation exponent must be >= 0, got {exponent!r}.")
        self.activation_exponent = float(exponent)
        self.per_row = bool(per_row)  # type: ignore[misc]  # a variant's instance value shadows the class default
        self.name = name or type(self).name  # type: ignore[misc]

    def scores(self, weight: torch.Tensor, input_sq_norms: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def score(self, weight: torch.Tensor, stats: InputStats | None) -> torch.Tensor:
        if stats is None:
            raise ValueError(f"{self.display_name} needs the calibration statistics of the layer's input.")
        return self.scores(weight, stats.sq_norms)

    def card_rows(self, config: SIConfig) -> list[tuple[str, str]]:
        group = "N:M groups" if config.n_m is not None else "per output row" if self.per_row else "per matrix"
        return [(self.display_name, f"{self.exponent_label} {self.activation_exponent:g}, {group}")]
