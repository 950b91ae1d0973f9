"""Building blocks of the validated, serialisable configs (the recipe, each method's and each stage's knobs, the run
options): closed sets of values as str-Enums, help text that the command line shows, and checks whose messages name
the field as the user wrote it.

Imports nothing of the package and not torch: the command line checks a whole recipe before it loads anything.
"""

from __future__ import annotations

import dataclasses
import math
from enum import Enum
from typing import Any, ClassVar

__all__ = ["Choice", "TrainingTarget", "TrainingOptimizer", "TrainingPrecision", "knob", "ConfigBase", "check_integer",
           "check_number", "check_bool", "check_choice", "check_patterns"]


class Choice(str, Enum):
    """A str-Enum whose str() and format() are its value (Python's mixed-in Enum prints `Class.MEMBER`), so that a
    member is its string everywhere a string is expected: `== "auto"`, JSON, f-strings, the card template."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class TrainingTarget(Choice):
    """What a stage that trains a block (Sparsity Induction, the reconstruction) fits it to: the dense block on the
    pruned model's own inputs ('local') or the dense model's own block outputs ('global', pipeline/dense_stream.py)."""

    LOCAL = "local"
    GLOBAL = "global"


class TrainingOptimizer(Choice):
    """The optimiser of a stage that trains on calibration text: plain Adam, or Adam damped where the gradient
    evidence is weak (optim.py)."""

    ADAM = "adam"
    DAMPED_ADAM = "damped-adam"


class TrainingPrecision(Choice):
    """The compute dtype of a stage's training passes: float32, or bfloat16 autocast."""

    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"


def knob(text: str, **kwargs: Any) -> Any:
    """A dataclass field with its help text (shown by the command line and the docs)."""
    return dataclasses.field(metadata={"help": text}, **kwargs)


def _name(owner: str | None, name: str) -> str:
    return f"{owner}.{name}" if owner else name


def check_integer(owner: str | None, name: str, value: Any, minimum: int, hint: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{_name(owner, name)} must be {what}, got {value!r}{hint}.")
    return value


def check_number(owner: str | None, name: str, value: Any, *, low: float | None = None, low_open: bool = False,
                 high: float | None = None, high_open: bool = False, optional: bool = False, hint: str = "",
                 what: str | None = None) -> float | None:
    """A finite number within the bounds (open or closed), as a float; None passes when `optional`."""
    if value is None and optional:
        return None
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        if what is None:
            if low is not None and high is not None:
                what = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            elif low is not None:
                what = f"a number {'>' if low_open else '>='} {low:g}"
            else:
                what = "a finite number"
            if optional:
                what += " or None"
        raise ValueError(f"{_name(owner, name)} must be {what}, got {value!r}{hint}.")
    return float(value)


def check_bool(owner: str | None, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{_name(owner, name)} must be True or False, got {value!r}.")
    return value


def check_choice(owner: str | None, name: str, value: Any, kind: type[Choice]) -> Choice:
    allowed = [member.value for member in kind]
    if value not in allowed:
        raise ValueError(f"{_name(owner, name)} must be one of {', '.join(map(repr, allowed))}, got {value!r}.")
    return kind(value)


def check_patterns(owner: str | None, name: str, value: Any) -> list[str]:
    """A list of non-empty pattern strings (a single string is a list of one)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(p, str) and p for p in value):
        raise ValueError(f"{_name(owner, name)} must be a list of non-empty fnmatch pattern strings, got {value!r}.")
    return list(value)


class ConfigBase:
    """Mixin of a config dataclass: `to_dict` (plain JSON values), `from_dict` (unknown keys named), `replace`.

    A subclass validates in `__post_init__` and raises ValueError through the `check_*` helpers with its class name
    as the owner, so that a message reads `ALPSConfig.rho0 must be ...` (the command line turns that into its flag).
    """

    # The word the recipe and the command line use for this config's owner (a method's or a stage's name): flags are
    # `--<prefix>-<field>`.
    prefix: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        data = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            data[f.name] = value.value if isinstance(value, Choice) else list(value) if isinstance(value, list) \
                else value
        return data

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, data: Any, what: str | None = None) -> Any:
        """An instance from a dict of its fields; ValueError naming unknown keys and the valid ones."""
        what = what or cls.__name__
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise ValueError(f"{what} must be a {cls.__name__} or a dict of its fields, got {data!r}.")
        unknown = sorted(map(str, set(data) - set(cls.field_names())))
        if unknown:
            valid = ", ".join(cls.field_names()) or "none"
            raise ValueError(f"Unknown {what} field(s) {', '.join(unknown)}; valid fields: {valid}.")
        return cls(**data)

    def replace(self, **changes: Any) -> Any:
        return type(self).from_dict({**self.to_dict(), **changes})
