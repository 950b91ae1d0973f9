"""RIA's knobs, with the authors' defaults."""

from __future__ import annotations

from dataclasses import dataclass

from ...fields import check_bool, check_number, knob
from ..base import MethodConfig

__all__ = ["RIAConfig"]


@dataclass
class RIAConfig(MethodConfig):
    prefix = "ria"

    a: float = knob("Exponent a of the activation factor ||X_j||^a (the authors' --a).", default=0.5)
    per_row: bool = knob("Compare scores per output row (the authors' --per_outneuron) instead of per matrix.",
                         default=False)

    def __post_init__(self) -> None:
        self.a = check_number("RIAConfig", "a", self.a, low=0, hint=" (the authors' code uses 0.5)")
        self.per_row = check_bool("RIAConfig", "per_row", self.per_row)
