"""Recipes of format 1: every knob a flat field of `SIConfig` (`induction_lr`, `alps_rho0`, `owl_m`,
`dampening_frac`, ...). They still load, and the flat names are still accepted as keyword arguments: each is moved
to the nested config that owns it now (`induction`, `method_args`, `profile_args`), with a log note.

A flat knob of a part the recipe does not use (an `induction_*` field of a recipe without SI, an ALPS knob of a Wanda
recipe, SparseGPT's `dampening_frac`, which format 1 wrote for every method) did nothing: it is dropped, with a note
when it was not at its default. Torch-free.
"""

from __future__ import annotations

import logging
from typing import Any

from ..fields import ConfigBase
from ..induction.config import InductionConfig
from ..methods.alps.config import ALPSConfig
from ..methods.base import MethodConfig
from ..methods.registry import get_method
from ..methods.ria.config import RIAConfig
from ..methods.sparsegpt.config import SparseGPTConfig
from ..methods.zpruner.config import ZPrunerConfig
from ..planning.config import OWLConfig
from .choices import SparsityProfile

__all__ = ["FLAT_KNOBS", "RUN_OPTION_NAMES", "move_flat_knobs"]

logger = logging.getLogger(__name__)

# Format-1 flat name -> (the config class that owns the knob now, its field there).
FLAT_KNOBS: dict[str, tuple[type[ConfigBase], str]] = {
    **{f"induction_{name}": (InductionConfig, name) for name in InductionConfig.field_names()},
    "owl_m": (OWLConfig, "m"),
    "owl_lambda": (OWLConfig, "lam"),
    "ria_a": (RIAConfig, "a"),
    "ria_per_row": (RIAConfig, "per_row"),
    "zpruner_exponent": (ZPrunerConfig, "exponent"),
    "zpruner_per_row": (ZPrunerConfig, "per_row"),
    **{f"alps_{name}": (ALPSConfig, name) for name in ALPSConfig.field_names()},
    "dampening_frac": (SparseGPTConfig, "dampening_frac"),
    "block_size": (SparseGPTConfig, "block_size"),
}
# Fields of format 1 that were run options, not recipe (optimum_si.recipe.run_options.RunOptions).
RUN_OPTION_NAMES = ("device", "activation_storage", "activation_dir", "show_progress")


def _nested(values: dict[str, Any], key: str) -> dict[str, Any]:
    """The nested config under `key` as a dict to update (a config object, True or a dict become a new dict)."""
    current = values.get(key)
    if isinstance(current, ConfigBase):
        return current.to_dict()
    return dict(current) if isinstance(current, dict) else {}


def move_flat_knobs(values: dict[str, Any], flat: dict[str, Any], source: str, strict: bool) -> None:
    """Move the format-1 knobs `flat` into the nested configs of the recipe dict `values` (in place).

    `values` holds the recipe's other fields as given (nested configs as objects, dicts or True); `source` says
    where the knobs come from, for the notes. A knob of a part the recipe does not use is dropped, with a note
    when it was not at its default; with `strict` (a user's own arguments, not a file), such a knob that was
    changed is an error, as it would silently do nothing."""
    if not flat:
        return
    moved: list[str] = []
    method_class: type[MethodConfig] | None
    try:
        method_class = type(get_method(values.get("method", "wanda")).config)
    except (ValueError, TypeError):
        method_class = None  # not a method: SIConfig names the problem
    for name, value in flat.items():
        owner, field = FLAT_KNOBS[name]
        if owner is InductionConfig:
            key, used, what = "induction", values.get("induction") not in (None, False), "induction=False"
        elif owner is OWLConfig:
            key, used, what = "profile_args", values.get("sparsity_profile", "uniform") == SparsityProfile.OWL, \
                f"sparsity_profile={values.get('sparsity_profile', 'uniform')!r}"
        else:
            key, used, what = "method_args", method_class is owner, f"method={values.get('method', 'wanda')!r}"
        if used:
            nested = _nested(values, key)
            nested[field] = value
            values[key] = nested
            moved.append(f"{name} -> {key}.{field}")
            continue
        default = owner.__dataclass_fields__[field].default  # type: ignore[attr-defined]
        if value != default:
            if strict:
                raise ValueError(f"{name}={value!r} is a setting of {owner.__name__}, which this recipe does not use "
                                 f"({what}); remove it.")
            logger.info("%s: %s=%r does nothing with %s; dropped.", source, name, value, what)
    if moved:
        logger.info("%s uses the flat knob names of recipe format 1; read as %s.", source, ", ".join(moved))
