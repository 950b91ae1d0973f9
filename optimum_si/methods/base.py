"""`PruningMethod`: what the walker, Sparsity Induction, the command line and the model card need to know about a
base pruner, and `MethodConfig`, the base of a method's own knobs.

A method is an object with declared traits, its config, and one of two verbs:

- `score(weight, stats)`: importance of every weight (higher = kept), for *mask-only* methods. The walker selects
  the mask (exact count, per row or per matrix, or N:M) and zeroes the rest; Sparsity Induction re-scores with the
  same function while its scales move (eq. 11), so a metric is written once.
- `solve(weights, stats, pattern)`: the pruned weights themselves, for methods that update the kept weights
  (SparseGPT's OBS updates, ALPS); `updates_weights = True`.

A method never sees the recipe: it gets its own config (`self.config`) and, for each call, the `Pattern` of the
matrices at hand (their sparsity, or N:M). Nothing here imports torch: the command line validates a recipe (and so
looks methods up) before torch is loaded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..fields import ConfigBase

if TYPE_CHECKING:
    import torch

    from ..observers.stats import InputStats

__all__ = ["PruningMethod", "MethodConfig", "Pattern", "Solved"]

# (name inside the group, pruned weight, keep mask, output-error estimate or None)
Solved = tuple[str, "torch.Tensor", "torch.Tensor", "float | None"]


@dataclass(frozen=True)
class Pattern:
    """The sparsity asked of the matrices at hand: `sparsity` (the fraction zeroed), or N kept of every M consecutive
    inputs (`n_m`, which then decides the sparsity)."""

    sparsity: float
    n_m: tuple[int, int] | None = None


@dataclass
class MethodConfig(ConfigBase):
    """A method's own knobs (none by default). A method with knobs subclasses it with validated fields; the recipe
    holds it as `SIConfig.method_args` and the command line makes `--<prefix>-<field>` flags of its fields."""

    def check_pattern(self, n_m: tuple[int, int] | None) -> None:
        """ValueError when a knob cannot work with the recipe's N:M structure (called when the recipe is built)."""


class PruningMethod:
    """Base class of the registered pruning methods (see `optimum_si.methods.register_method`).

    Traits (class attributes):
        name: the `SIConfig(method=...)` value (lower case).
        needs_data: calibration activations are needed (False only for data-free scores such as magnitude).
        needs_hessian: the statistics must include X X^T (SparseGPT); otherwise only per-channel sum of x^2.
        per_row: unstructured masks cut each output row separately (Wanda) instead of the whole matrix (magnitude).
        updates_weights: the method rewrites kept weights (implements `solve`), instead of only masking (`score`).
        fold_changes_mask: Sparsity Induction folds its distribution-level equivalent scaling into the block before
            this method prunes, because the fold improves the method's mask (magnitude, which cannot see activations
            otherwise). Wanda's mask is invariant to the fold, SparseGPT's and ALPS's are covariant with it up to
            damping; RIA's and Z-Pruner's masks do move, but into another metric than the authors' with no
            measured gain (docs/si-design.md §7), so all of them prune the unfolded weights.
        si_statistics: with SI's global target and statistics="auto", where the statistics come from: "dense" (the
            teacher pass, no extra forward; measured equal for Wanda) or "pruned" (the pruned model's own inputs, as
            the plain method sees them).
        citation: the reference printed in the model card.
        config_class: the `MethodConfig` subclass of the method's knobs.

    `PruningMethod(config)` or `PruningMethod(knob=value, ...)` makes a method with those knobs; `name=` registers a
    variant under its own name, e.g. `register_method(RIA(per_row=True, name="ria-row"))`.
    """

    name: ClassVar[str] = ""
    needs_data: ClassVar[bool] = True
    needs_hessian: ClassVar[bool] = False
    per_row: ClassVar[bool] = True
    updates_weights: ClassVar[bool] = False
    fold_changes_mask: ClassVar[bool] = False
    si_statistics: ClassVar[str] = "pruned"
    citation: ClassVar[str] = ""
    config_class: ClassVar[type[MethodConfig]] = MethodConfig

    def __init__(self, config: MethodConfig | dict[str, Any] | None = None, *, name: str | None = None,
                 **knobs: Any) -> None:
        if config is not None and knobs:
            raise TypeError(f"{type(self).__name__}: pass its knobs either as a {self.config_class.__name__} or as "
                            "keyword arguments, not both.")
        if config is None:
            config = self.config_class.from_dict(knobs, f"{type(self).__name__} knob")
        elif isinstance(config, dict):
            config = self.config_class.from_dict(config)
        elif not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} takes a {self.config_class.__name__}, got "
                            f"{type(config).__name__}.")
        self.config = config
        if name is not None:
            self.name = name  # type: ignore[misc]  # a variant's instance value shadows the class default

    def configure(self, config: MethodConfig | None) -> PruningMethod:
        """This method with the knobs `config`: itself when they are its own (so the registered object never carries
        one run's settings into the next), else a new object of the same kind and name."""
        if config is None or config == self.config:
            return self
        return type(self)(config, name=self.name)

    # ------------------------------------------------------------------ mask-only methods
    def score(self, weight: torch.Tensor, stats: InputStats | None) -> torch.Tensor:
        """Importance of each weight of `weight` [out, in] (fp32, same shape; higher = kept). `stats` holds the
        calibration statistics of the layer's input (None for data-free methods)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither score() nor solve().")

    # ------------------------------------------------------------------ weight-updating methods
    def solve(self, weights: dict[str, torch.Tensor], stats: dict[str, InputStats],
              pattern: Pattern) -> Iterator[Solved]:
        """Pruned weights of a group of layers (`weights` by name, `stats` their input statistics), all pruned to
        `pattern`, yielded one layer at a time so each can be written and freed before the next is made. Only for
        `updates_weights`."""
        raise NotImplementedError(f"{type(self).__name__} declares updates_weights but does not implement solve().")

    # ------------------------------------------------------------------ the model card
    def card_rows(self, pattern: Pattern) -> list[tuple[str, str]]:
        """(label, value) rows of the method's own settings for the card's recipe table."""
        return []

    def __repr__(self) -> str:
        knobs = ", ".join(f"{f.name}={getattr(self.config, f.name)!r}" for f in dataclasses.fields(self.config))
        return f"<pruning method {self.name!r}{' (' + knobs + ')' if knobs else ''}>"
