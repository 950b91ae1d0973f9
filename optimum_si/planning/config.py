"""`OWLConfig`: the knobs of OWL's per-block sparsity allocation (`SIConfig(sparsity_profile="owl",
profile_args=OWLConfig(...))`), with the authors' defaults. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass

from ..fields import ConfigBase, check_number, knob
from .allocation import DEFAULT_OWL_LAMBDA, DEFAULT_OWL_M

__all__ = ["OWLConfig"]


@dataclass
class OWLConfig(ConfigBase):
    """Outlier Weighed Layerwise sparsity (Yin et al., ICML 2024): blocks with more outliers are pruned less."""

    prefix = "owl"

    m: float = knob("A weight is an outlier when its Wanda metric exceeds m x its block's mean (the authors' "
                    "--Hyper_m).", default=DEFAULT_OWL_M)
    lam: float = knob("Block sparsities spread over 2 x lambda around the target sparsity (the authors' --Lamda).",
                      default=DEFAULT_OWL_LAMBDA)

    def __post_init__(self) -> None:
        self.m = check_number("OWLConfig", "m", self.m, low=0, low_open=True)
        self.lam = check_number("OWLConfig", "lam", self.lam, low=0)
