"""Z-Pruner's knobs, with the reference code's defaults."""

from __future__ import annotations

from dataclasses import dataclass

from ...fields import check_bool, check_number, knob
from ..base import MethodConfig

__all__ = ["ZPrunerConfig"]


@dataclass
class ZPrunerConfig(MethodConfig):
    prefix = "zpruner"

    exponent: float = knob("Exponent e of the activation factor ||X_j||^e.", default=1.5)
    per_row: bool = knob("Compare scores per output row instead of per matrix.", default=False)

    def __post_init__(self) -> None:
        self.exponent = check_number("ZPrunerConfig", "exponent", self.exponent, low=0,
                                     hint=" (the authors' code uses 1.5)")
        self.per_row = check_bool("ZPrunerConfig", "per_row", self.per_row)
