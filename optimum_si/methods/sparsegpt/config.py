"""SparseGPT's knobs, with the reference code's defaults."""

from __future__ import annotations

from dataclasses import dataclass

from ...fields import check_integer, check_number, knob
from ..base import MethodConfig

__all__ = ["SparseGPTConfig"]


@dataclass
class SparseGPTConfig(MethodConfig):
    prefix = "sparsegpt"

    dampening_frac: float = knob("Hessian dampening as a fraction of its mean diagonal (SparseGPT uses 0.01).",
                                 default=0.01)
    block_size: int = knob("Columns per lazy-update block (a multiple of M for N:M).", default=128)

    def __post_init__(self) -> None:
        self.dampening_frac = check_number("SparseGPTConfig", "dampening_frac", self.dampening_frac, low=0,
                                           low_open=True, high=1, high_open=True, hint=" (SparseGPT uses 0.01)")
        self.block_size = check_integer("SparseGPTConfig", "block_size", self.block_size, 1)

    def check_pattern(self, n_m: tuple[int, int] | None) -> None:
        if n_m is not None and self.block_size % n_m[1]:
            raise ValueError(f"SparseGPTConfig.block_size ({self.block_size}) must be a multiple of M={n_m[1]} for "
                             f"N:M SparseGPT; use e.g. {max(n_m[1], self.block_size // n_m[1] * n_m[1])}.")
