"""The closed sets of values of `SIConfig`'s own fields (each stage's and the run options' live with them)."""

from __future__ import annotations

from ..fields import Choice

__all__ = ["SparsityProfile", "ExpertCalibration"]


class SparsityProfile(Choice):
    UNIFORM = "uniform"
    OWL = "owl"


class ExpertCalibration(Choice):
    ROUTED = "routed"
    ALL = "all"
