"""`InductionConfig`: the knobs of Sparsity Induction (`SIConfig(induction=InductionConfig(...))`; `induction=True`
means these defaults). docs/si-design.md gives the evidence behind every default.

Torch-free: the command line checks a recipe before loading anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import fields
from ..fields import Choice, ConfigBase, check_bool, check_choice, check_integer, check_number, check_patterns, knob

__all__ = ["InductionConfig", "InductionRefresh", "InductionInit", "InductionTarget", "InductionStatistics",
           "InductionUnsupported", "InductionOptimizer", "InductionPrecision", "SCALING_GROUP_NAMES"]

# Every scaling group a table row may define (induction/scaling_groups.py).
SCALING_GROUP_NAMES = ("attn_in", "attn_out", "mlp_in", "mlp_out", "qk")
_OWNER = "InductionConfig"


class InductionRefresh(Choice):
    FAST = "fast"
    CLASSICAL = "classical"
    NONE = "none"


class InductionInit(Choice):
    DATA = "data"
    NONE = "none"


InductionTarget = fields.TrainingTarget  # one choice for every stage that trains a block


class InductionStatistics(Choice):
    AUTO = "auto"
    PRUNED = "pruned"
    DENSE = "dense"


class InductionUnsupported(Choice):
    ERROR = "error"
    SKIP = "skip"


InductionOptimizer = fields.TrainingOptimizer


InductionPrecision = fields.TrainingPrecision


@dataclass
class InductionConfig(ConfigBase):
    """How Sparsity Induction learns, judges and folds each block's scales.

    Sample config::

        SIConfig(method="wanda", induction=InductionConfig(epochs=2, lr=5e-3, validation_fraction=0.25))
    """

    prefix = "induction"

    epochs: int = knob("Passes over the calibration windows when training each block's scales.", default=1)
    lr: float = knob("Learning rate of the log-scales (for the optimizer chosen by `optimizer`).", default=1e-2)
    spectral_weight: float = knob(
        "Weight lambda of the spectral-norm term R_p (eq. 6), relative to the block's initial reconstruction error; "
        "0 disables it.", default=0.0)
    row_scales: bool = knob("Learn output-row scales of the pruned Linears.", default=True)
    col_scales: bool = knob("Learn input-column scales of the pruned Linears.", default=True)
    refresh: InductionRefresh = knob(
        "How mask-only methods refresh their mask while the scales train: 'fast' (eq. 11, cached Hessian diagonal), "
        "'classical' (re-collect statistics with forward passes) or 'none' (keep the base mask).", default="fast")
    refresh_interval: int = knob("Training steps between two mask refreshes.", default=8)
    target: InductionTarget = knob(
        "Reconstruction target: 'local' (the dense block on the pruned model's inputs) or 'global' (the dense model's "
        "own block outputs, kept as a second activation stream; fits the calibration text more closely and generalises "
        "worse, see docs/si-design.md).", default="local")
    statistics: InductionStatistics = knob(
        "With the global target, where the base pruner's statistics come from: 'pruned' (the pruned model's inputs, "
        "one extra partial pass per block, as plain Wanda/SparseGPT), 'dense' (collected during the teacher pass "
        "that computes the targets, no extra pass) or 'auto' ('dense' for Wanda, 'pruned' otherwise; see "
        "docs/si-design.md).", default="auto")
    init: InductionInit = knob(
        "Distribution-level equivalent scaling before the mask: 'data' (from channel statistics, eq. 5) or 'none'.",
        default="data")
    init_exponent: float = knob("Exponent of the channel RMS in the data-driven scale init.", default=1.0)
    groups: list[str] | None = knob(
        "Scaling groups of the equivalent transform (attn_in, attn_out, mlp_in, mlp_out, qk); default: all that the "
        "architecture table defines.", default=None)
    optimizer: InductionOptimizer = knob(
        "Optimiser of the learned scales: 'adam', or 'damped-adam' (steps in proportion to the gradient evidence "
        "for weakly exercised channels, so they stay near 1; see optimum_si/optim.py and "
        "docs/si-design.md).", default="damped-adam")
    precision: InductionPrecision = knob(
        "Compute dtype of the scale training's forward and backward passes: 'float32', or 'bfloat16' (autocast; "
        "about halves the training time where matmuls run in bf16: AMX CPUs, recent GPUs). Statistics, masks, the "
        "keep/revert verdict, the fold and the propagation stay float32 (docs/performance.md).", default="float32")
    validation_fraction: float = knob(
        "Fraction of the calibration windows held out from training: the keep/revert verdict of each block compares "
        "the block loss with and without the learned scales on them (0: judge on training windows).", default=0.25)
    max_scale: float | None = knob(
        "Bound b on every learned scale, kept in [1/b, b] (None: unbounded); a bound keeps induction a small "
        "correction of the base pruner.", default=None)
    min_gain: float = knob(
        "Relative loss reduction a block's induction must reach on the judged windows to be kept (0: any reduction).",
        default=0.0)
    unsupported: InductionUnsupported = knob(
        "What to do when the architecture has no scaling-group mapping: 'error', or 'skip' to prune without SI.",
        default="error")

    def __post_init__(self) -> None:
        self.epochs = check_integer(_OWNER, "epochs", self.epochs, 1)
        self.refresh_interval = check_integer(_OWNER, "refresh_interval", self.refresh_interval, 1)
        self.lr = check_number(_OWNER, "lr", self.lr, low=0, low_open=True, what="a positive number")
        self.init_exponent = check_number(_OWNER, "init_exponent", self.init_exponent, low=0, low_open=True,
                                          what="a positive number")
        self.validation_fraction = check_number(_OWNER, "validation_fraction", self.validation_fraction, low=0,
                                                high=0.5)
        self.max_scale = check_number(_OWNER, "max_scale", self.max_scale, low=1, low_open=True, optional=True)
        self.min_gain = check_number(_OWNER, "min_gain", self.min_gain, low=0, high=1, high_open=True)
        self.spectral_weight = check_number(_OWNER, "spectral_weight", self.spectral_weight, low=0)
        self.row_scales = check_bool(_OWNER, "row_scales", self.row_scales)
        self.col_scales = check_bool(_OWNER, "col_scales", self.col_scales)
        self.refresh = check_choice(_OWNER, "refresh", self.refresh, InductionRefresh)
        self.target = check_choice(_OWNER, "target", self.target, InductionTarget)
        self.statistics = check_choice(_OWNER, "statistics", self.statistics, InductionStatistics)
        self.init = check_choice(_OWNER, "init", self.init, InductionInit)
        self.optimizer = check_choice(_OWNER, "optimizer", self.optimizer, InductionOptimizer)
        self.precision = check_choice(_OWNER, "precision", self.precision, InductionPrecision)
        self.unsupported = check_choice(_OWNER, "unsupported", self.unsupported, InductionUnsupported)
        if self.groups is not None:
            groups = check_patterns(_OWNER, "groups", self.groups)
            unknown = sorted(set(groups) - set(SCALING_GROUP_NAMES))
            if unknown:
                raise ValueError(f"{_OWNER}.groups has unknown group(s) {unknown}; choose from "
                                 f"{', '.join(SCALING_GROUP_NAMES)}.")
            self.groups = groups
