"""ALPS's knobs, with the authors' defaults (`solver.py` names where each comes from)."""

from __future__ import annotations

from dataclasses import dataclass

from ...fields import check_integer, check_number, knob
from ..base import MethodConfig
from . import solver as defaults  # torch-free at import: the constants only

__all__ = ["ALPSConfig"]


def _hint(value: object) -> str:
    return f" (the authors' code uses {value!r})"


@dataclass
class ALPSConfig(MethodConfig):
    prefix = "alps"

    rho0: float = knob("Initial ADMM penalty rho.", default=defaults.DEFAULT_RHO0)
    max_iter: int = knob("Most ADMM iterations per layer.", default=defaults.DEFAULT_MAX_ITER)
    update_every: int = knob("ADMM iterations between two rho updates.", default=defaults.DEFAULT_UPDATE_EVERY)
    min_iter: int = knob("First iteration at which a settled support may stop the ADMM.",
                         default=defaults.DEFAULT_MIN_ITER)
    pcg_iters: int = knob("Preconditioned-CG iterations refining the kept weights (0: none).",
                          default=defaults.DEFAULT_PCG_ITERS)
    pcg_rtol: float = knob("Relative residual at which the CG refinement stops early (0: never).",
                           default=defaults.DEFAULT_PCG_RTOL)
    dampening: float = knob("Hessian dampening as a fraction of its mean diagonal (ALPS's own; SparseGPT's is "
                            "SparseGPTConfig.dampening_frac).", default=defaults.DEFAULT_DAMPENING)

    def __post_init__(self) -> None:
        owner = "ALPSConfig"
        self.rho0 = check_number(owner, "rho0", self.rho0, low=0, low_open=True, hint=_hint(defaults.DEFAULT_RHO0))
        self.max_iter = check_integer(owner, "max_iter", self.max_iter, 1, _hint(defaults.DEFAULT_MAX_ITER))
        self.update_every = check_integer(owner, "update_every", self.update_every, 1,
                                          _hint(defaults.DEFAULT_UPDATE_EVERY))
        self.min_iter = check_integer(owner, "min_iter", self.min_iter, 0, _hint(defaults.DEFAULT_MIN_ITER))
        self.pcg_iters = check_integer(owner, "pcg_iters", self.pcg_iters, 0, _hint(defaults.DEFAULT_PCG_ITERS))
        self.pcg_rtol = check_number(owner, "pcg_rtol", self.pcg_rtol, low=0, hint=_hint(defaults.DEFAULT_PCG_RTOL))
        self.dampening = check_number(owner, "dampening", self.dampening, low=0, low_open=True,
                                      hint=_hint(defaults.DEFAULT_DAMPENING))
