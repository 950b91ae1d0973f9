"""`SIConfig`: the validated, serialisable pruning recipe.

It holds what every run has (the method, the sparsity and its pattern, the calibration windows, which weights are
pruned and in which order) and composes the configs of the parts that own their knobs: the method's
(`method_args`, e.g. `ALPSConfig`), OWL's (`profile_args`), Sparsity Induction's (`induction`). How one machine runs
it is not part of it (`RunOptions`). Field names follow Optimum's `GPTQQuantizer` and llm-compressor's pruning
modifiers (`sparsity`, `mask_structure`, `targets`, `ignore`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from typing import Any

from ..checkpoint.files import CONFIG_NAME
from ..fields import check_bool, check_choice, check_integer, check_patterns, knob
from ..induction.config import InductionConfig
from ..methods.base import MethodConfig, Pattern, PruningMethod
from ..methods.registry import get_method
from ..planning.config import OWLConfig
from ..reconstruction.config import ReconstructionConfig
from ..version import __version__, version_stamp
from .choices import ExpertCalibration, SparsityProfile
from .upgrade import FLAT_KNOBS, RUN_OPTION_NAMES, move_flat_knobs

__all__ = ["SIConfig", "CONFIG_NAME", "FORMAT_VERSION", "read_recipe"]

logger = logging.getLogger(__name__)

# 2: knobs nested in the config of their owner (method_args, profile_args, induction); 1: every knob a flat field.
FORMAT_VERSION = 2
_NM_PATTERN = re.compile(r"^(\d+):(\d+)$")
# Keys written by `to_dict` next to the fields; they describe the file, not the recipe.
_FILE_KEYS = ("format_version", "meta")
_NESTED = {"method_args", "profile_args", "induction", "reconstruction"}
_WARNED_NM: set[str] = set()
# More calibration tokens than this (2^31: terabytes of activations for any LLM) is a typo, not a recipe; refusing it
# up front keeps a run from hanging while it draws the windows.
MAX_CALIBRATION_TOKENS = 2**31


@dataclass
class SIConfig:
    """Recipe for pruning a causal LM block by block, optionally with Sparsity Induction (arXiv 2602.21652).

    Sample config::

        SIConfig(method="wanda", sparsity=0.5, mask_structure="2:4", induction=True, num_samples=128, seqlen=2048)
        SIConfig(method="alps", method_args={"max_iter": 100}, sparsity=0.7, sparsity_profile="owl",
                 induction=InductionConfig(epochs=2))

    `mask_structure="N:M"` keeps at most N weights in every group of M consecutive input columns of each output row
    (the hardware notation: "2:4" keeps 2 of 4). Its sparsity is 1 - N/M; `sparsity` may be left out or must agree.
    The first number is what is *kept*, as in NVIDIA's sparse tensor cores and the Wanda / SparseGPT papers; note
    that llm-compressor's `mask_structure` reads it as the number pruned, which agrees only when N = M/2 (a warning
    is logged for other N:M).

    Nested configs are given as their objects or as dicts of their fields; `induction=True` means
    `InductionConfig()`, `induction=False` no induction. After validation `method_args` is the method's config
    object (its defaults when not given), `profile_args` OWL's config (None for the uniform profile) and `induction`
    an `InductionConfig` or None. Format-1 flat knob names (`induction_lr=...`) are accepted and moved, with a log
    note (see `optimum_si.recipe.upgrade`).
    """

    method: str = knob("Base pruner: 'magnitude', 'wanda', 'sparsegpt', 'ria', 'zpruner' or 'alps' (docs/methods.md), "
                       "or a method registered with optimum_si.register_method.", default="wanda")
    method_args: MethodConfig | dict[str, Any] | None = knob(
        "The method's own knobs (its config object, or a dict of its fields); default: the method's own defaults.",
        default=None)
    sparsity: float | None = knob(
        "Fraction of weights zeroed in every pruned Linear, in (0, 1). Defaults to 0.5, or 1 - N/M for N:M.",
        default=None)
    mask_structure: str = knob("'unstructured' or 'N:M' (N kept out of every M consecutive inputs).",
                               default="unstructured")
    sparsity_profile: SparsityProfile = knob(
        "'uniform' (every pruned matrix at `sparsity`) or 'owl' (per-block sparsities from the dense model's outlier "
        "ratios, mean `sparsity`; unstructured only; docs/methods.md).", default="uniform")
    profile_args: OWLConfig | dict[str, Any] | None = knob(
        "OWL's knobs (an OWLConfig or a dict of its fields) with sparsity_profile='owl'; default: the authors'.",
        default=None)
    induction: InductionConfig | bool | dict[str, Any] | None = knob(
        "Run Sparsity Induction on each block before pruning it: True (the defaults), an InductionConfig, or False.",
        default=False)
    reconstruction: ReconstructionConfig | bool | dict[str, Any] | None = knob(
        "Refit each pruned block's kept weights to the dense block (the mask held fixed), kept where it lowers the "
        "loss on held-out windows: True (the defaults), a ReconstructionConfig, or False.", default=False)
    num_samples: int = knob("Number of calibration windows.", default=128)
    seqlen: int = knob("Tokens per calibration window.", default=2048)
    seed: int = knob("Seed for drawing calibration windows and for induction.", default=0)
    batch_size: int = knob("Calibration windows per block forward pass.", default=1)
    targets: list[str] | None = knob(
        "fnmatch patterns (not regular expressions) over module names; only matching Linears inside the decoder blocks "
        "are pruned. Default: every Linear in the decoder blocks.", default=None)
    ignore: list[str] = knob("fnmatch patterns of module names never to prune.", default_factory=list)
    block_name: str | None = knob(
        "Dotted path of the decoder block list (e.g. 'model.layers'); found automatically for known architectures.",
        default=None)
    true_sequential: bool = knob(
        "Within a block, calibrate each group of Linears on the outputs of the already-pruned groups before it "
        "(attention inputs, then o_proj, then MLP inputs, then down_proj). Default: one dense pass per block, "
        "as the Wanda and SparseGPT reference code does.", default=False)
    expert_calibration: ExpertCalibration = knob(
        "Mixture-of-experts models: statistics of each expert from the tokens the router sends it ('routed', as the "
        "model runs) or from every calibration token ('all', for experts that see few tokens).", default="routed")

    def __post_init__(self) -> None:
        if not isinstance(self.method, str):
            raise ValueError(f"method must be a method name such as 'wanda', got {self.method!r}.")
        registered = get_method(self.method)  # ValueError naming the registered methods
        self.method = registered.name
        self.method_args = _method_args(registered, self.method_args)

        self._validate_pattern()
        self.method_args.check_pattern(self.n_m)
        for name in ("num_samples", "seqlen", "batch_size"):
            check_integer(None, name, getattr(self, name), 1)
        if self.num_samples * self.seqlen > MAX_CALIBRATION_TOKENS:
            raise ValueError(
                f"num_samples={self.num_samples} x seqlen={self.seqlen} asks for {self.num_samples * self.seqlen:.3g} "
                f"calibration tokens, more than any machine can hold (limit {MAX_CALIBRATION_TOKENS:.3g}); typical "
                "recipes use 128 x 2048."
            )
        # torch generators take seeds in [-2^63, 2^64); a larger one would fail mid-run, after weights changed.
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not -(2**63) <= self.seed < 2**64:
            raise ValueError(f"seed must be an integer in [-2**63, 2**64), got {self.seed!r}.")
        self._validate_profile()
        self.induction = _nested_stage(self.induction, InductionConfig, "induction")
        self.reconstruction = _nested_stage(self.reconstruction, ReconstructionConfig, "reconstruction")
        self.true_sequential = check_bool(None, "true_sequential", self.true_sequential)
        if self.targets is not None:
            self.targets = check_patterns(None, "targets", self.targets)
            if not self.targets:
                raise ValueError("targets must name at least one pattern, or be None to prune every Linear in the blocks.")
        self.ignore = check_patterns(None, "ignore", self.ignore)
        if self.block_name is not None and (not isinstance(self.block_name, str) or not self.block_name):
            raise ValueError(f"block_name must be a dotted module path such as 'model.layers', got {self.block_name!r}.")
        self.expert_calibration = check_choice(None, "expert_calibration", self.expert_calibration, ExpertCalibration)
        for stage in ("induction", "reconstruction"):
            if getattr(self, stage) is not None and self.true_sequential:
                raise ValueError(f"{stage}=True trains each whole block against its dense output; set "
                                 "true_sequential=False.")

    def _validate_pattern(self) -> None:
        self.mask_structure = _normalise_structure(self.mask_structure)
        nm = self.n_m
        if nm is not None:
            if 2 * nm[0] != nm[1] and self.mask_structure not in _WARNED_NM:
                _WARNED_NM.add(self.mask_structure)  # once per process: copies of a config would repeat it
                logger.warning(
                    "mask_structure=%r keeps %d of every %d weights (%.0f %% sparse; optimum-si's N:M is N kept). "
                    "llm-compressor reads the same string as %d pruned of %d.", self.mask_structure, nm[0], nm[1],
                    100 * (1 - nm[0] / nm[1]), nm[0], nm[1])
            implied = 1.0 - nm[0] / nm[1]
            if self.sparsity is not None and not (isinstance(self.sparsity, (int, float)) and math.isclose(
                    float(self.sparsity), implied, abs_tol=1e-9)):
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

    def _validate_profile(self) -> None:
        self.sparsity_profile = check_choice(None, "sparsity_profile", self.sparsity_profile, SparsityProfile)
        if self.sparsity_profile == SparsityProfile.UNIFORM:
            if self.profile_args not in (None, {}):
                raise ValueError("profile_args sets OWL's knobs; use it with sparsity_profile='owl' (or drop it).")
            self.profile_args = None
            return
        self.profile_args = OWLConfig() if self.profile_args is None else \
            OWLConfig.from_dict(self.profile_args, "profile_args")
        if self.n_m is not None:
            # Every block of an N:M model must keep N of M for the sparse kernels to run; per-block sparsities would
            # need per-block N (the OWL code rounds N per block), i.e. mixed patterns no N:M kernel accepts.
            raise ValueError(
                f"sparsity_profile='owl' varies the sparsity from block to block, which an N:M structure "
                f"({self.mask_structure!r}: the same {self.n_m[0]} of {self.n_m[1]} everywhere, as sparse kernels "
                "require) cannot express; use sparsity_profile='uniform' with N:M, or OWL with "
                "mask_structure='unstructured' (docs/methods.md).")

    # ------------------------------------------------------------------ what a run reads
    @property
    def pruning_method(self) -> PruningMethod:
        """The registered method named by `method`, with this recipe's `method_args`: what the walker runs and the
        card describes. The registered object itself is never changed."""
        return get_method(self.method).configure(self.method_args)  # type: ignore[arg-type]

    @property
    def needs_calibration(self) -> bool:
        """Whether a run of this recipe needs calibration data (a data-driven method, SI or OWL)."""
        return self.pruning_method.needs_data or self.induction is not None or self.reconstruction is not None or \
            self.sparsity_profile == SparsityProfile.OWL

    @property
    def n_m(self) -> tuple[int, int] | None:
        """(N kept, M) for N:M structures, None for unstructured."""
        if self.mask_structure == "unstructured":
            return None
        n, m = self.mask_structure.split(":")
        return int(n), int(m)

    @property
    def pattern(self) -> Pattern:
        """The recipe's sparsity and N:M structure, as a method is asked for them."""
        return Pattern(self.sparsity, self.n_m)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """The recipe as written to si_config.json: the fields (nested configs as dicts), plus the file keys."""
        data: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _NESTED:
                value = value.to_dict() if value is not None else None
            elif isinstance(value, list):
                value = list(value)
            data[f.name] = value.value if hasattr(value, "value") and isinstance(value, str) else value
        data["format_version"] = FORMAT_VERSION
        data["meta"] = version_stamp()
        return data

    def replace(self, **changes: Any) -> SIConfig:
        """A validated copy with `changes` applied. A new `mask_structure` without a `sparsity` decides the sparsity;
        a new `method` without `method_args` takes that method's defaults; `induction=True` keeps the current
        InductionConfig (or the defaults when there is none)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for stage in ("induction", "reconstruction"):  # True keeps a stage's current config
            if changes.get(stage) is True and getattr(self, stage) is not None:
                changes = {**changes, stage: getattr(self, stage)}
        return type(self)(**_merge(values, changes, "SIConfig.replace", strict=True))

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, strict: bool = True, **overrides: Any) -> SIConfig:
        """Build a config from a dict (a recipe file's content, or keyword arguments), then apply `overrides`.

        Unknown keys are an error for user input (`strict=True`); when reading a file written by a newer
        optimum-si (`strict=False`) they are dropped with a warning. A recipe of format 1 is upgraded (log note).
        """
        if not isinstance(data, dict):
            raise ValueError(f"SIConfig.from_dict expects a dict, got {type(data).__name__}.")
        meta = data.get("meta")
        written_by = meta.get("optimum_si") if isinstance(meta, dict) else None
        written_by = f"optimum-si {written_by}" if isinstance(written_by, str) else "an unknown optimum-si"
        _check_format_version(data.get("format_version", FORMAT_VERSION), written_by)
        values = {k: v for k, v in data.items() if k not in _FILE_KEYS}
        source = "The recipe" if strict else f"The recipe written by {written_by}"
        known = {f.name for f in dataclasses.fields(cls)}
        if not strict:
            stored = {k: values.pop(k) for k in RUN_OPTION_NAMES if k in values}
            if any(value not in (None, "auto", True) for value in stored.values()):
                logger.info(
                    "%s records run options (%s); they are not part of a recipe and are ignored: pass them to prune() "
                    "or SIPruner(...) instead.", source, ", ".join(f"{k}={v!r}" for k, v in stored.items()))
            unknown = sorted(map(str, set(values) - known - set(FLAT_KNOBS)))
            if unknown:
                logger.warning("Ignoring unknown field(s) %s from a recipe written by %s; upgrade optimum-si to use "
                               "them.", ", ".join(unknown), written_by)
                values = {k: v for k, v in values.items() if k not in unknown}
            _drop_unknown_nested(values, written_by)
        values = _merge({}, values, source, strict=strict)
        if overrides:
            values = _merge(values, overrides, "SIConfig.from_pretrained", strict=True)
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
            from huggingface_hub import hf_hub_download

            from ..network import NetworkError, endpoint, hub_access
            from ..settings import network_timeout

            try:
                with hub_access(f"download {CONFIG_NAME} of {str(dir_or_repo)!r}"):
                    path = hf_hub_download(str(dir_or_repo), CONFIG_NAME, revision=revision, token=token,
                                           etag_timeout=network_timeout())
            except NetworkError:
                raise
            except Exception as err:  # the hub raises many types; the user needs one message
                raise OSError(
                    f"Could not find {CONFIG_NAME} for {str(dir_or_repo)!r}: it is not a local folder and downloading it "
                    f"from the Hub at {endpoint()} failed ({type(err).__name__}: {err})."
                ) from err
        elif not os.path.isfile(path):
            raise OSError(f"{dir_or_repo} has no {CONFIG_NAME}; it was not written by optimum-si.")
        return cls.from_dict(read_recipe(path), strict=False, **overrides)


_GENERATED_INIT = SIConfig.__init__


@functools.wraps(_GENERATED_INIT)
def _init(self: SIConfig, *args: Any, **kwargs: Any) -> None:
    """The dataclass constructor, after format-1 flat knobs are moved into their nested configs and run options are
    refused with the place they belong."""
    options = sorted(set(kwargs) & set(RUN_OPTION_NAMES))
    if options:
        raise ValueError(f"{', '.join(options)} {'is a run option' if len(options) == 1 else 'are run options'}, not "
                         f"part of a recipe: pass {options[0]}=... to SIPruner(...) or prune(...) (optimum_si.RunOptions).")
    flat = {k: kwargs.pop(k) for k in list(kwargs) if k in FLAT_KNOBS}
    if flat:
        move_flat_knobs(kwargs, flat, "SIConfig(...)", strict=True)
    _GENERATED_INIT(self, *args, **kwargs)


SIConfig.__init__ = _init  # type: ignore[method-assign]


def _method_args(method: PruningMethod, given: Any) -> MethodConfig:
    kind = method.config_class
    if given is None:
        return method.config.replace()  # a copy: the registered method's own knobs must never change
    if isinstance(given, dict):
        if not given:
            return method.config.replace()
        unknown = sorted(map(str, set(given) - set(kind.field_names())))
        if unknown:
            valid = ", ".join(kind.field_names()) or "none"
            raise ValueError(f"method_args of method={method.name!r} has unknown field(s) {', '.join(unknown)}; valid "
                             f"fields: {valid}.")
        return method.config.replace(**given)
    if not isinstance(given, kind):
        raise ValueError(f"method_args of method={method.name!r} must be a {kind.__name__} or a dict of its fields, got "
                         f"{type(given).__name__}.")
    return given


def _nested_stage(value: Any, kind: type, field: str) -> Any:
    """A stage's config from what a recipe may give: True (the defaults), False / None (off), the config, a dict."""
    if value is None or value is False:
        return None
    if value is True:
        return kind()
    if isinstance(value, (kind, dict)):
        return kind.from_dict(value, field)
    raise ValueError(f"{field} must be True, False, an {kind.__name__} or a dict of its fields, got {value!r}.")


def _merge(values: dict[str, Any], changes: dict[str, Any], source: str, strict: bool) -> dict[str, Any]:
    """`values` (a recipe's fields) with `changes` applied, by the rules of `SIConfig.replace`; format-1 flat knobs
    among the changes are moved into their nested configs."""
    known = {f.name for f in dataclasses.fields(SIConfig)}
    options = sorted(set(changes) & set(RUN_OPTION_NAMES))
    if options and strict:
        raise ValueError(f"{', '.join(options)} {'is a run option' if len(options) == 1 else 'are run options'}, not "
                         f"part of a recipe: pass {options[0]}=... to SIPruner(...) or prune(...).")
    unknown = sorted(map(str, set(changes) - known - set(FLAT_KNOBS) - set(RUN_OPTION_NAMES)))
    if unknown:
        raise ValueError(f"Unknown SIConfig field(s): {', '.join(unknown)}. Valid fields: {', '.join(sorted(known))}.")
    merged = dict(values)
    plain = {k: v for k, v in changes.items() if k in known}
    if "mask_structure" in plain and "sparsity" not in plain:
        merged.pop("sparsity", None)  # the new structure decides the sparsity unless one is given too
    if "method" in plain and "method_args" not in plain and merged.get("method") not in (None, plain["method"]):
        previous = merged.pop("method_args", None)
        if isinstance(previous, MethodConfig) and merged.get("method") is not None:
            try:
                if previous != get_method(merged["method"]).config:
                    logger.info("method=%r does not read the settings of method=%r (%s); dropped.", plain["method"],
                                merged["method"], previous)
            except ValueError:
                pass
    if plain.get("sparsity_profile") == SparsityProfile.UNIFORM and "profile_args" not in plain:
        merged.pop("profile_args", None)
    merged.update(plain)
    flat = {k: v for k, v in changes.items() if k in FLAT_KNOBS}
    move_flat_knobs(merged, flat, source, strict=strict)
    return merged


def _drop_unknown_nested(values: dict[str, Any], written_by: str) -> None:
    """A file of a newer optimum-si may carry knobs this version does not know inside a nested config: dropped, with
    a warning (as unknown top-level fields are)."""
    try:
        method_class = get_method(values.get("method", "wanda")).config_class
    except (ValueError, TypeError):
        return
    for key, kind in (("method_args", method_class), ("profile_args", OWLConfig), ("induction", InductionConfig),
                      ("reconstruction", ReconstructionConfig)):
        nested = values.get(key)
        if isinstance(nested, dict):
            unknown = sorted(map(str, set(nested) - set(kind.field_names())))
            if unknown:
                logger.warning("Ignoring unknown %s field(s) %s from a recipe written by %s; upgrade optimum-si to use "
                               "them.", key, ", ".join(unknown), written_by)
                values[key] = {k: v for k, v in nested.items() if k not in unknown}


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
        raise ValueError(
            f"This recipe was written by {written_by} in recipe format {version}; optimum-si {__version__} reads "
            f"format {FORMAT_VERSION} and older. Upgrade with `pip install -U optimum-si`."
        )
