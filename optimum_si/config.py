"""`SIConfig`: the validated, serialisable pruning recipe.

Field names follow what users know from Optimum's `GPTQQuantizer` and llm-compressor's pruning modifiers
(`sparsity`, `mask_structure`, `dampening_frac`, `block_size`, `targets`, `ignore`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

from . import alps as _alps
from .choices import (
    CHOICE_FIELDS,
    ActivationStorage,
    ExpertCalibration,
    InductionInit,
    InductionOptimizer,
    InductionPrecision,
    InductionRefresh,
    InductionStatistics,
    InductionTarget,
    InductionUnsupported,
    SparsityProfile,
)
from .devices import validate_device
from .methods.ria import DEFAULT_ACTIVATION_EXPONENT as _RIA_A
from .methods.zpruner import DEFAULT_ACTIVATION_EXPONENT as _ZPRUNER_EXPONENT

__all__ = ["SIConfig", "CONFIG_NAME", "METHODS", "CHOICES", "RUN_OPTIONS", "METHOD_KNOBS", "version_stamp",
           "read_recipe"]

logger = logging.getLogger(__name__)

CONFIG_NAME = "si_config.json"
FORMAT_VERSION = 1
# The built-in methods (and the CLI's choices); any method registered with `optimum_si.methods.register_method`
# is valid in a recipe too.
METHODS = ("magnitude", "wanda", "sparsegpt", "ria", "zpruner", "alps")
_NM_PATTERN = re.compile(r"^(\d+):(\d+)$")
# Keys written by `to_dict` next to the fields; they describe the file, not the recipe.
_FILE_KEYS = ("format_version", "meta")
# Fields that say how one machine runs a recipe, not what the recipe produces (all give bit-identical results):
# accepted by SIConfig / SIPruner / prune() for this run, never written to si_config.json, the card or the Hub.
RUN_OPTIONS = ("device", "activation_storage", "activation_dir", "show_progress")
_WARNED_NM: set[str] = set()
# Fields with a closed set of values (validated here, listed as choices by the CLI).
CHOICES = {"method": METHODS, **{name: tuple(m.value for m in kind) for name, kind in CHOICE_FIELDS.items()}}
# Each method knob (a field made with `_knob`) -> the built-in method that reads it. A method reads a knob when it
# lists it in `config_fields` (a variant registered under another name reads its class's knobs).
METHOD_KNOBS = {}  # filled below the class, from the fields' metadata
# More calibration tokens than this (2^31: terabytes of activations for any LLM) is a typo, not a recipe; refusing it
# up front keeps a run from hanging while it draws the windows.
MAX_CALIBRATION_TOKENS = 2**31


def version_stamp() -> dict[str, str]:
    """Versions of the libraries that produced a recipe or checkpoint."""
    import torch
    import transformers

    from . import __version__

    return {"optimum_si": __version__, "transformers": transformers.__version__, "torch": torch.__version__}


def _help(text: str, **kwargs: Any) -> Any:
    return field(metadata={"help": text}, **kwargs)


def _knob(method: str, text: str, **kwargs: Any) -> Any:
    return field(metadata={"help": text, "method": method}, **kwargs)


@dataclass
class SIConfig:
    """Recipe for pruning a causal LM block by block, optionally with Sparsity Induction (arXiv 2602.21652).

    Sample config::

        SIConfig(method="wanda", sparsity=0.5, mask_structure="2:4", induction=True, num_samples=128, seqlen=2048)

    `mask_structure="N:M"` keeps at most N weights in every group of M consecutive input columns of each output row
    (the hardware notation: "2:4" keeps 2 of 4). Its sparsity is 1 - N/M; `sparsity` may be left out or must agree.
    The first number is what is *kept*, as in NVIDIA's sparse tensor cores and the Wanda / SparseGPT papers; note
    that llm-compressor's `mask_structure` reads it as the number pruned, which agrees only when N = M/2 (a warning
    is logged for other N:M).

    `device`, `activation_storage`, `activation_dir` and `show_progress` are run options (see `RUN_OPTIONS`): they
    can be given here, to `SIPruner(...)` or to `prune(...)`, and are never part of the saved recipe.
    """

    method: str = _help("Base pruner: 'magnitude', 'wanda', 'sparsegpt', 'ria', 'zpruner' or 'alps' (docs/methods.md).",
                        default="wanda")
    sparsity: float | None = _help(
        "Fraction of weights zeroed in every pruned Linear, in (0, 1). Defaults to 0.5, or 1 - N/M for N:M.",
        default=None,
    )
    mask_structure: str = _help("'unstructured' or 'N:M' (N kept out of every M consecutive inputs).", default="unstructured")
    induction: bool = _help("Run Sparsity Induction on each block before pruning it.", default=False)
    num_samples: int = _help("Number of calibration windows.", default=128)
    seqlen: int = _help("Tokens per calibration window.", default=2048)
    seed: int = _help("Seed for drawing calibration windows and for induction.", default=0)
    batch_size: int = _help("Calibration windows per block forward pass.", default=1)
    dampening_frac: float = _help("SparseGPT: Hessian dampening as a fraction of its mean diagonal.", default=0.01)
    block_size: int = _help("SparseGPT: columns per lazy-update block.", default=128)
    # ---- knobs of one method each, with its authors' defaults (refused for other methods; see METHOD_KNOBS)
    ria_a: float = _knob("ria", "RIA: exponent a of the activation factor ||X_j||^a (the authors' --a).",
                         default=_RIA_A)
    ria_per_row: bool = _knob("ria", "RIA: compare scores per output row (the authors' --per_outneuron) instead of "
                                     "per matrix.", default=False)
    zpruner_exponent: float = _knob("zpruner", "Z-Pruner: exponent of the activation factor ||X_j||^e.",
                                    default=_ZPRUNER_EXPONENT)
    zpruner_per_row: bool = _knob("zpruner", "Z-Pruner: compare scores per output row instead of per matrix.",
                                  default=False)
    alps_rho0: float = _knob("alps", "ALPS: initial ADMM penalty rho.", default=_alps.DEFAULT_RHO0)
    alps_max_iter: int = _knob("alps", "ALPS: most ADMM iterations per layer.", default=_alps.DEFAULT_MAX_ITER)
    alps_update_every: int = _knob("alps", "ALPS: ADMM iterations between two rho updates.",
                                   default=_alps.DEFAULT_UPDATE_EVERY)
    alps_min_iter: int = _knob("alps", "ALPS: first iteration at which a settled support may stop the ADMM.",
                               default=_alps.DEFAULT_MIN_ITER)
    alps_pcg_iters: int = _knob("alps", "ALPS: preconditioned-CG iterations refining the kept weights (0: none).",
                                default=_alps.DEFAULT_PCG_ITERS)
    alps_pcg_rtol: float = _knob("alps", "ALPS: relative residual at which the CG refinement stops early (0: never).",
                                 default=_alps.DEFAULT_PCG_RTOL)
    alps_dampening: float = _knob("alps", "ALPS: Hessian dampening as a fraction of its mean diagonal (ALPS's own; "
                                          "dampening_frac is SparseGPT's).", default=_alps.DEFAULT_DAMPENING)
    sparsity_profile: SparsityProfile = _help(
        "'uniform' (every pruned matrix at `sparsity`) or 'owl' (per-block sparsities from the dense model's outlier "
        "ratios, mean `sparsity`; unstructured only, in-memory for now; docs/methods.md).",
        default="uniform")
    owl_m: float = _help("OWL: a weight is an outlier when its Wanda metric exceeds owl_m x its block's mean.",
                         default=5.0)
    owl_lambda: float = _help("OWL: block sparsities spread over 2 x owl_lambda around `sparsity`.", default=0.08)
    targets: list[str] | None = _help(
        "fnmatch patterns (not regular expressions) over module names; only matching Linears inside the decoder blocks "
        "are pruned. Default: every Linear in the decoder blocks.",
        default=None,
    )
    ignore: list[str] = _help("fnmatch patterns of module names never to prune.", default_factory=list)
    block_name: str | None = _help(
        "Dotted path of the decoder block list (e.g. 'model.layers'); found automatically for known architectures.",
        default=None,
    )
    true_sequential: bool = _help(
        "Within a block, calibrate each group of Linears on the outputs of the already-pruned groups before it "
        "(attention inputs, then o_proj, then MLP inputs, then down_proj). Default: one dense pass per block, "
        "as the Wanda and SparseGPT reference code does.",
        default=False,
    )
    expert_calibration: ExpertCalibration = _help(
        "Mixture-of-experts models: statistics of each expert from the tokens the router sends it ('routed', as the "
        "model runs) or from every calibration token ('all', for experts that see few tokens).", default="routed")
    device: str | None = _help("Execution device for block work ('cuda', 'cpu', ...). Default: where the blocks are.", default=None)
    activation_storage: ActivationStorage = _help(
        "Where calibration activations wait between blocks: 'auto' (on the device when it is the CPU, else pinned CPU "
        "memory, moved to the device one batch at a time), 'device', 'cpu', or 'disk' (for very long calibration sets).",
        default="auto")
    activation_dir: str | None = _help("Folder for activation_storage='disk' (default: the system temp folder).",
                                       default=None)
    show_progress: bool = _help("Show a tqdm progress bar over blocks.", default=True)
    # ---- Sparsity Induction (used when induction=True; see docs/si-design.md for the evidence behind defaults)
    induction_epochs: int = _help("Passes over the calibration windows when training each block's scales.", default=1)
    induction_lr: float = _help("Adam learning rate for the log-scales.", default=1e-2)
    induction_spectral_weight: float = _help(
        "Weight lambda of the spectral-norm term R_p (eq. 6), relative to the block's initial reconstruction error; "
        "0 disables it.", default=0.0)
    induction_row_scales: bool = _help("Learn output-row scales of the pruned Linears.", default=True)
    induction_col_scales: bool = _help("Learn input-column scales of the pruned Linears.", default=True)
    induction_refresh: InductionRefresh = _help(
        "How mask-only methods refresh their mask while the scales train: 'fast' (eq. 11, cached Hessian diagonal), "
        "'classical' (re-collect statistics with forward passes) or 'none' (keep the base mask).", default="fast")
    induction_refresh_interval: int = _help("Training steps between two mask refreshes.", default=8)
    induction_target: InductionTarget = _help(
        "Reconstruction target: 'local' (the dense block on the pruned model's inputs) or 'global' (the dense model's "
        "own block outputs, kept as a second activation stream; fits the calibration text more closely and generalises "
        "worse, see docs/si-design.md).", default="local")
    induction_statistics: InductionStatistics = _help(
        "With the global target, where the base pruner's statistics come from: 'pruned' (the pruned model's inputs, "
        "one extra partial pass per block, as plain Wanda/SparseGPT), 'dense' (collected during the teacher pass "
        "that computes the targets, no extra pass) or 'auto' ('dense' for Wanda, 'pruned' otherwise; see "
        "docs/si-design.md).", default="auto")
    induction_init: InductionInit = _help(
        "Distribution-level equivalent scaling before the mask: 'data' (from channel statistics, eq. 5) or 'none'.",
        default="data")
    induction_init_exponent: float = _help("Exponent of the channel RMS in the data-driven scale init.", default=1.0)
    induction_groups: list[str] | None = _help(
        "Scaling groups of the equivalent transform (attn_in, attn_out, mlp_in, mlp_out, qk); default: all that the "
        "architecture table defines.", default=None)
    induction_optimizer: InductionOptimizer = _help(
        "Optimiser of the learned scales: 'adam', or 'damped-adam' (steps in proportion to the gradient evidence "
        "for weakly exercised channels, so they stay near 1; see optimum_si/optim.py and docs/si-design.md).",
        default="damped-adam")
    induction_precision: InductionPrecision = _help(
        "Compute dtype of the scale training's forward and backward passes: 'float32', or 'bfloat16' (autocast; "
        "about halves the training time where matmuls run in bf16: AMX CPUs, recent GPUs). Statistics, masks, the "
        "keep/revert verdict, the fold and the propagation stay float32 (docs/performance.md).", default="float32")
    induction_validation_fraction: float = _help(
        "Fraction of the calibration windows held out from training: the keep/revert verdict of each block compares "
        "the block loss with and without the learned scales on them (0: judge on training windows).", default=0.25)
    induction_max_scale: float | None = _help(
        "Bound b on every learned scale, kept in [1/b, b] (None: unbounded); a bound keeps induction a small "
        "correction of the base pruner.", default=None)
    induction_min_gain: float = _help(
        "Relative loss reduction a block's induction must reach on the judged windows to be kept (0: any reduction).",
        default=0.0)
    induction_unsupported: InductionUnsupported = _help(
        "What to do when the architecture has no scaling-group mapping: 'error', or 'skip' to prune without SI.",
        default="error")

    def __post_init__(self) -> None:
        from .methods import get_method

        if not isinstance(self.method, str):
            raise ValueError(f"method must be a method name such as 'wanda', got {self.method!r}.")
        self.method = get_method(self.method).name  # ValueError naming the registered methods

        self.mask_structure = self._normalise_structure(self.mask_structure)
        nm = self.n_m
        if nm is not None:
            if 2 * nm[0] != nm[1] and self.mask_structure not in _WARNED_NM:
                _WARNED_NM.add(self.mask_structure)  # once per process: copies of a config would repeat it
                logger.warning(
                    "mask_structure=%r keeps %d of every %d weights (%.0f %% sparse; optimum-si's N:M is N kept). "
                    "llm-compressor reads the same string as %d pruned of %d.", self.mask_structure, nm[0], nm[1],
                    100 * (1 - nm[0] / nm[1]), nm[0], nm[1])
            implied = 1.0 - nm[0] / nm[1]
            if self.sparsity is not None and not math.isclose(float(self.sparsity), implied, abs_tol=1e-9):
                raise ValueError(
                    f"sparsity={self.sparsity} contradicts mask_structure={self.mask_structure!r}, which implies "
                    f"sparsity {implied:g}; leave sparsity out or set it to {implied:g}."
                )
            self.sparsity = implied
        elif self.sparsity is None:
            self.sparsity = 0.5
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)):
            raise ValueError(f"sparsity must be a number in (0, 1), got {self.sparsity!r}.")
        self.sparsity = float(self.sparsity)
        if not 0.0 < self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in (0, 1), got {self.sparsity}.")

        for name in ("num_samples", "seqlen", "batch_size", "block_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if self.num_samples * self.seqlen > MAX_CALIBRATION_TOKENS:
            raise ValueError(
                f"num_samples={self.num_samples} x seqlen={self.seqlen} asks for {self.num_samples * self.seqlen:.3g} "
                f"calibration tokens, more than any machine can hold (limit {MAX_CALIBRATION_TOKENS:.3g}); typical "
                "recipes use 128 x 2048."
            )
        # torch generators take seeds in [-2^63, 2^64); a larger one would fail mid-run, after weights changed.
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not -(2**63) <= self.seed < 2**64:
            raise ValueError(f"seed must be an integer in [-2**63, 2**64), got {self.seed!r}.")
        if not isinstance(self.dampening_frac, (int, float)) or not 0.0 < self.dampening_frac < 1.0:
            raise ValueError(f"dampening_frac must be in (0, 1), got {self.dampening_frac!r} (SparseGPT uses 0.01).")
        self.dampening_frac = float(self.dampening_frac)
        self._validate_method_knobs()
        self._validate_profile()
        for name in ("induction", "true_sequential", "show_progress"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}.")
        if self.targets is not None:
            self.targets = self._pattern_list("targets", self.targets)
            if not self.targets:
                raise ValueError("targets must name at least one pattern, or be None to prune every Linear in the blocks.")
        self.ignore = self._pattern_list("ignore", self.ignore)
        if self.block_name is not None and (not isinstance(self.block_name, str) or not self.block_name):
            raise ValueError(f"block_name must be a dotted module path such as 'model.layers', got {self.block_name!r}.")
        self._validate_induction()
        self.device = validate_device(self.device)
        if self.expert_calibration not in CHOICES["expert_calibration"]:
            raise ValueError(f"expert_calibration must be 'routed' or 'all', got {self.expert_calibration!r}.")
        if self.activation_storage not in CHOICES["activation_storage"]:
            raise ValueError(f"activation_storage must be 'auto', 'device', 'cpu' or 'disk', got {self.activation_storage!r}.")
        if self.activation_dir is not None and (not isinstance(self.activation_dir, str) or not self.activation_dir):
            raise ValueError(f"activation_dir must be a folder path or None, got {self.activation_dir!r}.")
        for name, kind in CHOICE_FIELDS.items():  # validated above (as strings): now their str-Enum members
            setattr(self, name, kind(getattr(self, name)))

    def _validate_method_knobs(self) -> None:
        from .methods import get_method

        for name, (kind, low, low_allowed) in _KNOB_RANGES.items():
            value = getattr(self, name)
            default = _FIELD_DEFAULTS[name]
            if kind is bool:
                if not isinstance(value, bool):
                    raise ValueError(f"{name} must be True or False, got {value!r}.")
                continue
            is_number = not isinstance(value, bool) and isinstance(value, int if kind is int else (int, float))
            if not is_number or not math.isfinite(value) or value < low or (value == low and not low_allowed):
                what = "an integer" if kind is int else "a finite number"
                raise ValueError(f"{name} must be {what} {'>=' if low_allowed else '>'} {low:g}, got {value!r} "
                                 f"(the authors' code uses {default!r}).")
            setattr(self, name, kind(value))
        reads = get_method(self.method).config_fields
        for name, owner in METHOD_KNOBS.items():
            value = getattr(self, name)
            if name not in reads and value != _FIELD_DEFAULTS[name]:
                # A knob of another method is a typo or a leftover of an edited recipe: it would silently do nothing.
                raise ValueError(
                    f"{name}={value!r} is a setting of method={owner!r}, but this recipe uses method={self.method!r}, "
                    f"which does not read it; remove `{name}` (or set method={owner!r}).")

    def _validate_profile(self) -> None:
        if self.sparsity_profile not in CHOICES["sparsity_profile"]:
            raise ValueError(f"sparsity_profile must be 'uniform' or 'owl', got {self.sparsity_profile!r}.")
        for name, positive in (("owl_m", True), ("owl_lambda", False)):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                    or value < 0 or (positive and value == 0)):
                raise ValueError(f"{name} must be a number {'> 0' if positive else '>= 0'}, got {value!r}.")
            setattr(self, name, float(value))
        if self.sparsity_profile == "owl" and self.n_m is not None:
            # Every block of an N:M model must keep N of M for the sparse kernels to run; per-block sparsities would
            # need per-block N (the OWL code rounds N per block), i.e. mixed patterns no N:M kernel accepts.
            raise ValueError(
                f"sparsity_profile='owl' varies the sparsity from block to block, which an N:M structure "
                f"({self.mask_structure!r}: the same {self.n_m[0]} of {self.n_m[1]} everywhere, as sparse kernels "
                "require) cannot express; use sparsity_profile='uniform' with N:M, or OWL with "
                "mask_structure='unstructured' (docs/methods.md).")

    def _validate_induction(self) -> None:
        for name in ("induction_epochs", "induction_refresh_interval"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
        for name in ("induction_lr", "induction_init_exponent"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}.")
        fraction = self.induction_validation_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 0.5:
            raise ValueError(f"induction_validation_fraction must be a number in [0, 0.5], got {fraction!r}.")
        self.induction_validation_fraction = float(fraction)
        bound = self.induction_max_scale
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, (int, float))
                                  or not math.isfinite(bound) or bound <= 1.0):
            raise ValueError(f"induction_max_scale must be a number > 1 or None, got {bound!r}.")
        gain = self.induction_min_gain
        if isinstance(gain, bool) or not isinstance(gain, (int, float)) or not 0.0 <= gain < 1.0:
            raise ValueError(f"induction_min_gain must be a number in [0, 1), got {gain!r}.")
        weight = self.induction_spectral_weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"induction_spectral_weight must be a number >= 0, got {weight!r}.")
        choices = {name: allowed for name, allowed in CHOICES.items() if name.startswith("induction_")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {getattr(self, name)!r}.")
        for name in ("induction_row_scales", "induction_col_scales"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}.")
        if self.induction_groups is not None:
            groups = self._pattern_list("induction_groups", self.induction_groups)
            unknown = sorted(set(groups) - {"attn_in", "attn_out", "mlp_in", "mlp_out", "qk"})
            if unknown:
                raise ValueError(
                    f"induction_groups has unknown group(s) {unknown}; choose from attn_in, attn_out, mlp_in, mlp_out, qk."
                )
            self.induction_groups = groups
        if self.induction and self.true_sequential:
            raise ValueError("induction=True trains each whole block against its dense output; set true_sequential=False.")

    @staticmethod
    def _normalise_structure(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"mask_structure must be 'unstructured' or 'N:M' such as '2:4', got {value!r}.")
        text = value.strip().lower()
        if text in ("unstructured", "0:0"):
            return "unstructured"
        match = _NM_PATTERN.match(text)
        if match is None:
            raise ValueError(
                f"mask_structure must be 'unstructured' or 'N:M' with a colon, e.g. '2:4' or '4:8'; got {value!r}."
            )
        n, m = int(match.group(1)), int(match.group(2))
        if not 0 < n < m:
            raise ValueError(
                f"mask_structure {value!r}: N:M keeps N of every M weights, so it needs 0 < N < M (e.g. '2:4'), "
                f"got N={n}, M={m}."
            )
        return f"{n}:{m}"

    @staticmethod
    def _pattern_list(name: str, value: Any) -> list[str]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(p, str) and p for p in value):
            raise ValueError(f"{name} must be a list of non-empty fnmatch pattern strings, got {value!r}.")
        return list(value)

    @property
    def pruning_method(self):
        """The `optimum_si.methods.PruningMethod` named by `method`, with this recipe's knobs (`ria_a`, `alps_rho0`,
        ...) applied: what the engine runs and the card describes. The registered object itself is never changed."""
        from .methods import get_method

        return get_method(self.method).configure(self)

    @property
    def needs_calibration(self) -> bool:
        """Whether a run of this recipe needs calibration data (a data-driven method, or Sparsity Induction)."""
        return self.pruning_method.needs_data or self.induction or self.sparsity_profile == "owl"

    @property
    def n_m(self) -> tuple[int, int] | None:
        """(N kept, M) for N:M structures, None for unstructured."""
        if self.mask_structure == "unstructured":
            return None
        n, m = self.mask_structure.split(":")
        return int(n), int(m)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """The recipe as written to si_config.json: every field except the run options and the knobs of methods not
        in use (they can only hold their defaults), plus the file keys. A recipe of a method without knobs thus
        reads the same as before the knobs existed, for older optimum-si versions too."""
        from .methods import get_method

        reads = get_method(self.method).config_fields
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in RUN_OPTIONS and (f.name not in METHOD_KNOBS or f.name in reads)}
        data["format_version"] = FORMAT_VERSION
        data["meta"] = version_stamp()
        return data

    def replace(self, **changes: Any) -> SIConfig:
        """A validated copy with `changes` applied, run options included (a new `mask_structure` without a
        `sparsity` decides the sparsity, as in `from_dict`)."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"Unknown SIConfig field(s): {', '.join(unknown)}. Valid fields: {', '.join(sorted(known))}.")
        values = {name: getattr(self, name) for name in known}
        if "mask_structure" in changes and "sparsity" not in changes:
            values["sparsity"] = None
        if "method" in changes:
            _drop_foreign_knobs(values, changes)
        values.update(changes)
        return type(self)(**values)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, strict: bool = True, **overrides: Any) -> SIConfig:
        """Build a config from a dict.

        Unknown keys are an error for user input (`strict=True`); when reading a file written by a newer
        optimum-si (`strict=False`) they are dropped with a warning.
        """
        if not isinstance(data, dict):
            raise ValueError(f"SIConfig.from_dict expects a dict, got {type(data).__name__}.")
        meta = data.get("meta")
        written_by = meta.get("optimum_si") if isinstance(meta, dict) else None
        written_by = f"optimum-si {written_by}" if isinstance(written_by, str) else "an unknown optimum-si"
        _check_format_version(data.get("format_version", FORMAT_VERSION), written_by)
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k not in _FILE_KEYS}
        unknown = sorted(map(str, set(values) - known))
        if unknown:
            if strict:
                raise ValueError(f"Unknown SIConfig field(s): {', '.join(unknown)}. Valid fields: {', '.join(sorted(known))}.")
            logger.warning(
                "Ignoring unknown field(s) %s from a recipe written by %s; upgrade optimum-si to use them.",
                ", ".join(unknown), written_by,
            )
            values = {k: v for k, v in values.items() if k in known}
        if not strict:
            stored = {k: values.pop(k) for k in RUN_OPTIONS if k in values}
            if any(value not in (None, "auto", True) for value in stored.values()):
                logger.info(
                    "The recipe written by %s records run options (%s); they are not part of a recipe any more and "
                    "are ignored: pass them to prune() or SIPruner(...) instead.", written_by,
                    ", ".join(f"{k}={v!r}" for k, v in stored.items()))
        bad_overrides = sorted(set(overrides) - known)
        if bad_overrides:
            raise ValueError(f"Unknown SIConfig field(s): {', '.join(bad_overrides)}. Valid fields: {', '.join(sorted(known))}.")
        if "mask_structure" in overrides and "sparsity" not in overrides:
            values.pop("sparsity", None)  # the new structure decides the sparsity unless the user also gives one
        if "method" in overrides:
            _drop_foreign_knobs(values, overrides)
        values.update(overrides)
        return cls(**values)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, CONFIG_NAME)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(self.to_json_string())
        os.replace(tmp, path)
        return path

    @classmethod
    def from_pretrained(cls, dir_or_repo: str | os.PathLike, *, revision: str | None = None, token: str | None = None,
                        **overrides: Any) -> SIConfig:
        """Load `si_config.json` from a local folder or a Hub repo; keyword arguments override its fields."""
        path = os.path.join(dir_or_repo, CONFIG_NAME)
        if not os.path.isdir(dir_or_repo):
            from huggingface_hub import constants, hf_hub_download

            try:
                path = hf_hub_download(str(dir_or_repo), CONFIG_NAME, revision=revision, token=token)
            except Exception as err:  # the hub raises many types; the user needs one message
                raise OSError(
                    f"Could not find {CONFIG_NAME} for {str(dir_or_repo)!r}: it is not a local folder and downloading it "
                    f"from the Hub at {constants.ENDPOINT} failed ({type(err).__name__}: {err})."
                ) from err
        elif not os.path.isfile(path):
            raise OSError(f"{dir_or_repo} has no {CONFIG_NAME}; it was not written by optimum-si.")
        return cls.from_dict(read_recipe(path), strict=False, **overrides)


METHOD_KNOBS.update({f.name: f.metadata["method"] for f in dataclasses.fields(SIConfig) if "method" in f.metadata})
_FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(SIConfig)}
# knob -> (type, lower bound, whether the bound itself is allowed); bools have no bound.
_KNOB_RANGES: dict[str, tuple[type, float, bool]] = {
    "ria_a": (float, 0, True), "ria_per_row": (bool, 0, True),
    "zpruner_exponent": (float, 0, True), "zpruner_per_row": (bool, 0, True),
    "alps_rho0": (float, 0, False), "alps_max_iter": (int, 1, True), "alps_update_every": (int, 1, True),
    "alps_min_iter": (int, 0, True), "alps_pcg_iters": (int, 0, True), "alps_pcg_rtol": (float, 0, True),
    "alps_dampening": (float, 0, False),
}


def _drop_foreign_knobs(values: dict[str, Any], changes: dict[str, Any]) -> None:
    """A recipe whose method is changed keeps only the knobs the new method reads (the others were settings of the
    old method, not mistakes); knobs given together with the new method are still checked against it."""
    from .methods import get_method

    try:
        reads = get_method(changes["method"]).config_fields
    except (ValueError, TypeError):
        return  # not a registered method name: SIConfig reports it
    for name in METHOD_KNOBS:
        if name in values and name not in reads and name not in changes:
            if values[name] != _FIELD_DEFAULTS[name]:
                logger.info("method=%r does not read %s=%r (a setting of method=%r); dropped.", changes["method"],
                            name, values[name], METHOD_KNOBS[name])
            del values[name]


def read_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON object of a recipe file (`si_config.json`); ValueError naming the file when it cannot be one."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); it is not a recipe, or it is "
                         "corrupted.") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); the file is corrupted.") from None
    except RecursionError:
        raise ValueError(f"{path} nests JSON too deeply to be a recipe; the file is corrupted.") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, not a recipe object; the file is corrupted.")
    return data


def _check_format_version(version: Any, written_by: str) -> None:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"The recipe's format_version must be a positive integer, got {version!r}.")
    if version > FORMAT_VERSION:
        from . import __version__

        raise ValueError(
            f"This recipe was written by {written_by} in recipe format {version}; optimum-si {__version__} reads "
            f"format {FORMAT_VERSION} and older. Upgrade with `pip install -U optimum-si`."
        )
