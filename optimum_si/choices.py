"""The closed sets of values of `SIConfig` fields, as str-Enums.

A member is its string everywhere a string is expected (`== "auto"`, JSON, f-strings, the card template), so
recipes stay plain JSON and old code that compares strings keeps working; `SIConfig` turns given strings into
members, and the CLI lists the members as the flag's choices. (`method` is not here: it is an open set, the
method registry.)
"""

from __future__ import annotations

from enum import Enum

__all__ = ["Choice", "ActivationStorage", "SparsityProfile", "ExpertCalibration", "InductionRefresh", "InductionInit",
           "InductionTarget", "InductionStatistics", "InductionUnsupported", "InductionOptimizer", "InductionPrecision",
           "CHOICE_FIELDS"]


class Choice(str, Enum):
    """A str-Enum whose str() and format() are its value (Python's mixed-in Enum prints `Class.MEMBER`)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class ActivationStorage(Choice):
    AUTO = "auto"
    DEVICE = "device"
    CPU = "cpu"
    DISK = "disk"


class SparsityProfile(Choice):
    UNIFORM = "uniform"
    OWL = "owl"


class ExpertCalibration(Choice):
    ROUTED = "routed"
    ALL = "all"


class InductionRefresh(Choice):
    FAST = "fast"
    CLASSICAL = "classical"
    NONE = "none"


class InductionInit(Choice):
    DATA = "data"
    NONE = "none"


class InductionTarget(Choice):
    LOCAL = "local"
    GLOBAL = "global"


class InductionStatistics(Choice):
    AUTO = "auto"
    PRUNED = "pruned"
    DENSE = "dense"


class InductionUnsupported(Choice):
    ERROR = "error"
    SKIP = "skip"


class InductionOptimizer(Choice):
    ADAM = "adam"
    DAMPED_ADAM = "damped-adam"


class InductionPrecision(Choice):
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"


# SIConfig field -> its Choice type
CHOICE_FIELDS: dict[str, type[Choice]] = {
    "activation_storage": ActivationStorage,
    "sparsity_profile": SparsityProfile,
    "expert_calibration": ExpertCalibration,
    "induction_refresh": InductionRefresh,
    "induction_init": InductionInit,
    "induction_target": InductionTarget,
    "induction_statistics": InductionStatistics,
    "induction_unsupported": InductionUnsupported,
    "induction_optimizer": InductionOptimizer,
    "induction_precision": InductionPrecision,
}
