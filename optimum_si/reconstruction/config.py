"""`ReconstructionConfig`: the knobs of the block reconstruction of the kept weights (`SIConfig(reconstruction=
ReconstructionConfig(...))`; `reconstruction=True` means these defaults). docs/reconstruction.md gives the evidence
behind every default. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass

from .. import fields
from ..fields import Choice, ConfigBase, check_bool, check_choice, check_integer, check_number, knob

__all__ = ["LearningRateSchedule", "MaskStream", "ReconstructionConfig", "ReconstructionMode",
           "ReconstructionOptimizer", "ReconstructionPrecision", "ReconstructionTarget", "StepScale"]

_OWNER = "ReconstructionConfig"


class ReconstructionMode(Choice):
    GRADIENT = "gradient"
    CLOSED_FORM = "closed-form"


class StepScale(Choice):
    """How far Adam steps each kept weight (see `ReconstructionConfig.step_scale`)."""

    UNIFORM = "uniform"
    COLUMN = "column"


class LearningRateSchedule(Choice):
    """How the refit's learning rate moves over its steps (see `ReconstructionConfig.lr_schedule`)."""

    CONSTANT = "constant"
    COSINE = "cosine"


class MaskStream(Choice):
    """Which activation stream the blocks after a refit block are pruned on (see `ReconstructionConfig.mask_stream`)."""

    REFIT = "refit"
    UNREFIT = "unrefit"


ReconstructionTarget = fields.TrainingTarget  # the same choices as Sparsity Induction's
ReconstructionPrecision = fields.TrainingPrecision
ReconstructionOptimizer = fields.TrainingOptimizer


@dataclass
class ReconstructionConfig(ConfigBase):
    """How the kept weights of each pruned block are refit to the dense block.

    Sample config::

        SIConfig(method="wanda", induction=True, reconstruction=ReconstructionConfig(mode="closed-form"))
    """

    prefix = "reconstruction"

    mode: ReconstructionMode = knob(
        "'gradient' (train the kept weights of the whole block with Adam against the dense block's outputs, the mask "
        "held fixed, as EBFT does) or 'closed-form' (each Linear's least-squares fit on its kept weights against its "
        "dense inputs: one solve per output row, no training).", default="gradient")
    epochs: int = knob("gradient: passes over the training windows.", default=1)
    lr: float = knob("gradient: Adam learning rate of the kept weights.", default=1e-3)
    lr_schedule: LearningRateSchedule = knob(
        "gradient: 'constant' (every step at `lr`) or 'cosine' (from `lr` down to near zero over the refit's steps, "
        "on a half cosine: Loshchilov & Hutter, arXiv 1608.03983). It measured worse than 'constant' on the rows "
        "tried (docs/reconstruction.md).", default="constant")
    optimizer: ReconstructionOptimizer = knob(
        "gradient: 'adam', or 'damped-adam' (each Linear's weights step in proportion to the gradient evidence where "
        "it is weak, so weights of input channels the calibration text hardly exercises stay near their start; "
        "optimum_si/optim.py).", default="adam")
    step_scale: StepScale = knob(
        "gradient: 'uniform' (every kept weight steps about `lr`, as in Adam) or 'column' (each weight's step is `lr` "
        "x its input column's RMS over the Linear's mean column RMS, so an equivalent rescaling of the input channels, "
        "such as Sparsity Induction's folded scales, rescales the steps with the weights; gradient.py).",
        default="uniform")
    retry_lr: float | None = knob(
        "gradient: a block whose refit the held-out verdict reverts is refit once more at this learning rate "
        "(None: no retry). For bases whose weights already fit each layer (ALPS), where steps of `lr` undo more than "
        "they win back.", default=None)
    target: ReconstructionTarget = knob(
        "gradient: what each block is refit to: 'local' (the dense block on the pruned model's own inputs) or "
        "'global' (the dense model's own block outputs, carried as a second activation stream, so that each block "
        "also learns to undo the error of the blocks before it).", default="local")
    proximal: float = knob(
        "gradient: weight of a pull toward the weights the refit starts from: the loss adds `proximal` x the block's "
        "starting loss on the training windows x the mean over the refit Linears of |W - W_start|^2 / |W_start|^2, so "
        "that weights the calibration text says little about stay near their start (L2-SP, Li et al., arXiv "
        "1802.01483). 0: no pull.", default=0.0)
    mask_stream: MaskStream = knob(
        "Which stream each later block's mask (and Sparsity Induction's scales) is chosen on: 'refit' (the outputs of "
        "the blocks as refit, the stream the written model runs) or 'unrefit' (the outputs the blocks had before "
        "their refit, so that every mask and scale is the one a run without reconstruction chooses; the refit then "
        "trains each block on the refit model's own stream, carried beside it: one more activation set and one more "
        "forward per block). 'unrefit' runs cannot be resumed after an interruption.", default="refit")
    train_norms: bool = knob("gradient: also train the block's norm weights and the Linears' biases (dense "
                             "parameters; the mask does not apply to them).", default=False)
    precision: ReconstructionPrecision = knob(
        "gradient: compute dtype of the training passes: 'float32', or 'bfloat16' (autocast); the verdict and the "
        "written weights stay float32.", default="float32")
    damping: float = knob("closed-form: ridge added to each Hessian's diagonal, as a fraction of its mean.",
                          default=0.01)
    validation_fraction: float = knob(
        "Fraction of the calibration windows never trained on: each block keeps its refit only if it lowers the "
        "block loss on them.", default=0.25)
    min_gain: float = knob("Relative held-out loss reduction a block's refit must reach to be kept (0: any).",
                           default=0.0)

    def __post_init__(self) -> None:
        self.mode = check_choice(_OWNER, "mode", self.mode, ReconstructionMode)
        self.epochs = check_integer(_OWNER, "epochs", self.epochs, 1)
        self.lr = check_number(_OWNER, "lr", self.lr, low=0, low_open=True, what="a positive number")
        self.lr_schedule = check_choice(_OWNER, "lr_schedule", self.lr_schedule, LearningRateSchedule)
        self.optimizer = check_choice(_OWNER, "optimizer", self.optimizer, ReconstructionOptimizer)
        self.step_scale = check_choice(_OWNER, "step_scale", self.step_scale, StepScale)
        self.retry_lr = check_number(_OWNER, "retry_lr", self.retry_lr, low=0, low_open=True, optional=True,
                                     what="a positive number or None")
        self.target = check_choice(_OWNER, "target", self.target, ReconstructionTarget)
        if self.target == "global" and self.mode == "closed-form":
            raise ValueError("ReconstructionConfig.target='global' needs mode='gradient': the closed form fits each "
                             "Linear to its own dense inputs. Use mode='gradient', or target='local'.")
        self.proximal = check_number(_OWNER, "proximal", self.proximal, low=0)
        if self.proximal and self.mode == "closed-form":
            raise ValueError("ReconstructionConfig.proximal needs mode='gradient': the closed form has no training "
                             "loss to add the pull to. Use mode='gradient', or proximal=0.")
        self.mask_stream = check_choice(_OWNER, "mask_stream", self.mask_stream, MaskStream)
        if self.mask_stream == "unrefit" and self.mode == "closed-form":
            raise ValueError("ReconstructionConfig.mask_stream='unrefit' needs mode='gradient': the closed form fits "
                             "each Linear to the dense inputs of the stream the block is pruned on. Use "
                             "mode='gradient', or mask_stream='refit'.")
        if self.lr_schedule == "cosine" and self.mode == "closed-form":
            raise ValueError("ReconstructionConfig.lr_schedule='cosine' needs mode='gradient': the closed form takes "
                             "no steps. Use mode='gradient', or lr_schedule='constant'.")
        if self.step_scale == "column" and self.mode == "closed-form":
            raise ValueError("ReconstructionConfig.step_scale='column' needs mode='gradient': the closed form takes no "
                             "steps. Use mode='gradient', or step_scale='uniform'.")
        self.train_norms = check_bool(_OWNER, "train_norms", self.train_norms)
        self.precision = check_choice(_OWNER, "precision", self.precision, ReconstructionPrecision)
        self.damping = check_number(_OWNER, "damping", self.damping, low=0, low_open=True)
        self.validation_fraction = check_number(_OWNER, "validation_fraction", self.validation_fraction, low=0,
                                                high=0.5)
        self.min_gain = check_number(_OWNER, "min_gain", self.min_gain, low=0, high=1, high_open=True)
