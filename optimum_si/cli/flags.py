"""The `prune` flags, generated from the config types so that they never drift from the Python API: `SIConfig`'s
fields, each method's config (`--<method>-<field>`), Sparsity Induction's (`--induction-<field>`), OWL's
(`--owl-<field>`) and the run options, each in its argparse group, with the field's help text. Torch-free.

Building a recipe from the flags (`config_and_options`) and naming a flag in an error message (`cli_message`) use
the same tables, so an error of the Python API reads in CLI terms.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from typing import Any

from ..fields import Choice, ConfigBase
from ..induction.config import InductionConfig
from ..methods.registry import BUILTIN_METHODS, available_methods, get_method
from ..planning.config import OWLConfig
from ..recipe.config import SIConfig
from ..recipe.run_options import RunOptions
from ..recipe.upgrade import FLAT_KNOBS
from ..reconstruction.config import ReconstructionConfig
from .errors import UsageError

__all__ = ["add_recipe_flags", "config_and_options", "cli_message", "flag_of"]

# SIConfig's own fields, by the group they are shown in (the nested configs get groups of their own).
_RECIPE_GROUPS = {
    "recipe": ("method", "sparsity", "mask_structure", "sparsity_profile"),
    "calibration": ("num_samples", "seqlen", "seed", "batch_size"),
    "what is pruned": ("targets", "ignore", "block_name", "true_sequential", "expert_calibration"),
}
_NESTED = ("method_args", "profile_args", "induction", "reconstruction")
# Flags whose name is not `--<prefix>-<field>`: OWL's lambda (a Python keyword, `lam` in OWLConfig).
_FLAG_NAMES = {("owl", "lam"): "--owl-lambda"}
METHOD_KNOBS = "method knobs"
SI_GROUP = "Sparsity Induction (SI)"
OWL_GROUP = "OWL allocation"
RECONSTRUCTION_GROUP = "Reconstruction of the kept weights"
_GROUP_HELP = {
    "recipe": "What the run produces (written to si_config.json, with every group below up to the run options).",
    "calibration": "Calibration windows drawn from --dataset.",
    "what is pruned": "Which weights of the decoder blocks are pruned, and in which order.",
    SI_GROUP: "Used with --induction (docs/si-design.md).",
    OWL_GROUP: "Used with --sparsity-profile owl: per-block sparsities with the mean --sparsity (docs/methods.md).",
    RECONSTRUCTION_GROUP: "Used with --reconstruction (docs/reconstruction.md).",
    "run options": "How this machine runs the recipe; never written to the recipe (the same result whatever they "
                   "are).",
}


def _method_configs() -> list[type[ConfigBase]]:
    """The config classes of the registered methods that have knobs, built-ins first, each once."""
    seen: list[type[ConfigBase]] = []
    for name in available_methods():
        kind = get_method(name).config_class
        if dataclasses.fields(kind) and kind not in seen:
            seen.append(kind)
    return seen


def _nested_configs() -> list[tuple[str, type[ConfigBase]]]:
    """(group title, config class) of every nested config whose fields become flags."""
    methods = [(f"{METHOD_KNOBS}: {_method_label(kind)}", kind) for kind in _method_configs()]
    return [*methods, (SI_GROUP, InductionConfig), (OWL_GROUP, OWLConfig),
            (RECONSTRUCTION_GROUP, ReconstructionConfig)]


_LABELS = {"sparsegpt": "SparseGPT", "alps": "ALPS"}


def _method_label(kind: type[ConfigBase]) -> str:
    for method in BUILTIN_METHODS:
        if method.config_class is kind:
            return getattr(method, "display_name", _LABELS.get(method.name, method.name))
    return kind.prefix or kind.__name__


def _method_names(kind: type[ConfigBase]) -> list[str]:
    return [name for name in available_methods() if get_method(name).config_class is kind]


def flag_of(prefix: str, name: str) -> str:
    """The flag of field `name` of the config with `prefix` ("" for SIConfig and the run options)."""
    if (prefix, name) in _FLAG_NAMES:
        return _FLAG_NAMES[(prefix, name)]
    return "--" + (f"{prefix}-{name}" if prefix else name).replace("_", "-")


def _dest(prefix: str, name: str) -> str:
    return f"{prefix}__{name}" if prefix else name


def _aliases(kind: type[ConfigBase], name: str) -> list[str]:
    """Format-1 flag names of a knob that differ from its flag now (`--dampening-frac` for SparseGPT's)."""
    return ["--" + flat.replace("_", "-") for flat, (owner, field) in FLAT_KNOBS.items()
            if owner is kind and field == name and "--" + flat.replace("_", "-") != flag_of(kind.prefix, name)]


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _scalar_type(kind: type, name: str) -> tuple[Any, bool, tuple[str, ...] | None]:
    """(scalar type, is_list, choices) of a config field, from its resolved type hint."""
    hint = typing.get_type_hints(kind)[name]
    options = [arg for arg in typing.get_args(hint) if arg is not type(None)] if _is_union(hint) else [hint]
    inner = options[0]
    is_list = typing.get_origin(inner) is list
    if is_list:
        inner = typing.get_args(inner)[0]
    choices = tuple(m.value for m in inner) if isinstance(inner, type) and issubclass(inner, Choice) else None
    return (inner if inner in (bool, int, float) else str), is_list, choices


def _add(group: argparse._ArgumentGroup, kind: type, field: dataclasses.Field, prefix: str,
         extra: list[str] = ()) -> None:  # type: ignore[assignment]
    scalar, is_list, choices = _scalar_type(kind, field.name)
    help_text = _help_in_flags(kind, prefix, field.metadata.get("help", "")).replace("%", "%%")
    metavar = None if choices or field.name == "method" else _metavar(prefix, field.name)
    default = field.default if field.default is not dataclasses.MISSING else None
    # The flags default to None ("not given", so that a --recipe keeps its value); the help shows the config's.
    if default is not None and not isinstance(default, bool) or default is True:
        help_text += f" (default: {default})"
    names = [flag_of(prefix, field.name), *extra]
    dest = _dest(prefix, field.name)
    if scalar is bool:
        group.add_argument(*names, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
    elif is_list:
        group.add_argument(*names, dest=dest, nargs="+", type=scalar, default=None, metavar=metavar, help=help_text)
    else:
        if field.name == "method" and not prefix:
            choices = available_methods()
        group.add_argument(*names, dest=dest, type=scalar, default=None, choices=choices, metavar=metavar,
                           help=help_text)


def _metavar(prefix: str, name: str) -> str:
    """The value's name in the usage: the flag's last words (`--induction-lr LR`, `--owl-lambda LAMBDA`)."""
    return flag_of(prefix, name)[2 + len(prefix) + (1 if prefix else 0):].replace("-", "_").upper()


def _help_in_flags(kind: type, prefix: str, text: str) -> str:
    """A field's help as the command line reads it: the config's own fields named in backticks become their flags
    (`optimizer` -> --induction-optimizer), and Python spellings (`activation_storage='disk'`) become flags too."""
    for other in dataclasses.fields(kind):  # type: ignore[arg-type]
        text = text.replace(f"`{other.name}`", flag_of(prefix, other.name))
    return cli_message(text)


def add_recipe_flags(parser: argparse.ArgumentParser,
                     leading: typing.Mapping[str, typing.Callable[[argparse._ArgumentGroup], None]] | None = None,
                     ) -> dict[str, argparse._ArgumentGroup]:
    """Every recipe and run-option flag of `prune`, grouped; `leading[title](group)` adds the caller's own flags at
    the top of a group (`--recipe`, `--dataset`). Returns the groups by title."""
    leading = leading or {}
    groups: dict[str, argparse._ArgumentGroup] = {}

    def new_group(title: str, description: str | None) -> argparse._ArgumentGroup:
        groups[title] = group = parser.add_argument_group(title, description)
        if title in leading:
            leading[title](group)
        return group

    fields = {f.name: f for f in dataclasses.fields(SIConfig)}
    for title, names in _RECIPE_GROUPS.items():
        group = new_group(title, _GROUP_HELP.get(title))
        for name in names:
            _add(group, SIConfig, fields[name], "")
    for title, kind in _nested_configs():
        owners = _method_names(kind)
        description = _GROUP_HELP.get(title) or (f"Used with --method {' or '.join(owners)}." if owners else None)
        group = new_group(title, description)
        if kind is InductionConfig:
            group.add_argument("--induction", action=argparse.BooleanOptionalAction, default=None,
                               help="Run Sparsity Induction on each block before pruning it (with the knobs below).")
        if kind is ReconstructionConfig:
            group.add_argument("--reconstruction", action=argparse.BooleanOptionalAction, default=None,
                               help="Refit each pruned block's kept weights to the dense block (with the knobs "
                                    "below).")
        for field in dataclasses.fields(kind):  # type: ignore[arg-type]
            _add(group, kind, field, kind.prefix, _aliases(kind, field.name))
    group = new_group("run options", _GROUP_HELP["run options"])
    for field in dataclasses.fields(RunOptions):
        _add(group, RunOptions, field, "")
    return groups


def _given(args: argparse.Namespace, kind: type[ConfigBase], prefix: str) -> dict[str, Any]:
    return {f.name: getattr(args, _dest(prefix, f.name)) for f in dataclasses.fields(kind)  # type: ignore[arg-type]
            if getattr(args, _dest(prefix, f.name), None) is not None}


def config_and_options(args: argparse.Namespace, base: SIConfig | None) -> tuple[SIConfig, RunOptions]:
    """The recipe of the flags over `base` (a --recipe, or the defaults), and the run options. ValueError from the
    configs pass through (the caller words them in flags); a knob flag of a part the recipe does not use is a
    UsageError."""
    top = {name: getattr(args, name) for names in _RECIPE_GROUPS.values() for name in names
           if getattr(args, name, None) is not None}
    for stage in ("induction", "reconstruction"):
        if getattr(args, stage) is not None:
            top[stage] = getattr(args, stage)
    config = base.replace(**top) if base is not None else SIConfig(**top)
    method_kind = config.pruning_method.config_class
    for _title, kind in _nested_configs():
        given = _given(args, kind, kind.prefix)
        if not given:
            continue
        flags = ", ".join(flag_of(kind.prefix, name) for name in given)
        if kind is InductionConfig:
            if config.induction is None:
                raise UsageError(f"{flags} {'sets' if len(given) == 1 else 'set'} Sparsity Induction; add --induction.")
            config = config.replace(induction=config.induction.replace(**given))
        elif kind is ReconstructionConfig:
            if config.reconstruction is None:
                raise UsageError(f"{flags} {'sets' if len(given) == 1 else 'set'} the reconstruction; add "
                                 "--reconstruction.")
            config = config.replace(reconstruction=config.reconstruction.replace(**given))
        elif kind is OWLConfig:
            if config.profile_args is None:
                raise UsageError(f"{flags} {'sets' if len(given) == 1 else 'set'} OWL; add --sparsity-profile owl.")
            config = config.replace(profile_args=config.profile_args.replace(**given))
        else:
            if kind is not method_kind:
                owners = _method_names(kind)
                raise UsageError(f"{flags} {'is a setting' if len(given) == 1 else 'are settings'} of --method "
                                 f"{owners[0] if owners else kind.prefix}, but this run uses --method {config.method}; "
                                 f"drop {'it' if len(given) == 1 else 'them'} (or change --method).")
            config = config.replace(method_args=config.method_args.replace(**given))
    options = RunOptions(**_given(args, RunOptions, ""))
    return config, options


def cli_message(err: BaseException | str) -> str:
    """An error of the Python API in CLI terms: `SIConfig(ignore=[...])` -> `--ignore`, `seqlen=8` -> `--seqlen 8`,
    `InductionConfig.lr` -> `--induction-lr`, a field name that opens the message (`num_samples must ...`) ->
    `--num-samples must ...`, and `overwrite=True` / `save_dir` -> `--overwrite` / `--output`."""
    text = str(err)
    for _title, kind in _nested_configs():
        for field in dataclasses.fields(kind):  # type: ignore[arg-type]
            flag = flag_of(kind.prefix, field.name)
            text = re.sub(rf"{kind.__name__}\.{field.name}\b", flag, text)
            text = re.sub(rf"{kind.__name__}\({field.name}=([^)]*)\)", rf"{flag} \1", text)
    for kind in (SIConfig, RunOptions):
        for field in dataclasses.fields(kind):
            if field.name in _NESTED:
                continue
            flag = flag_of("", field.name)
            text = re.sub(rf"SIConfig\({field.name}=[^)]*\)", flag, text)
            text = re.sub(rf"(?<![\w.-]){field.name}=", f"{flag} ", text)
            text = re.sub(rf"^{field.name}(?=\W)", flag, text)
            text = text.replace(f"`{field.name}`", flag)
    text = re.sub(r"(?<![\w.-])dataset=", "--dataset ", text)  # an argument of prune(), not a recipe field
    return text.replace("overwrite=True", "--overwrite").replace("save_dir", "--output")
