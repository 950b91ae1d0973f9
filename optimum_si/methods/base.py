"""`PruningMethod`: what the engine, Sparsity Induction, the CLI and the model card need to know about a base pruner.

A method is an object with declared traits and one of two verbs:

- `score(weight, stats)`: importance of every weight (higher = kept), for *mask-only* methods. The engine selects
  the mask (exact count, per row or per matrix, or N:M) and zeroes the rest; Sparsity Induction re-scores with the
  same function while its scales move (eq. 11), so a metric is written once.
- `solve(weights, stats, config)`: the pruned weights themselves, for methods that update the kept weights
  (SparseGPT's OBS updates); `updates_weights = True`.

Traits are class attributes, read by the engine instead of comparing method names. Nothing here imports torch:
the command line validates a recipe (and so looks methods up) before torch is loaded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import torch

    from ..config import SIConfig
    from ..stats import InputStats

__all__ = ["PruningMethod", "Solved"]

# (name inside the group, pruned weight, keep mask, output-error estimate or None)
Solved = tuple[str, "torch.Tensor", "torch.Tensor", "float | None"]


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
        si_statistics: with SI's global target and induction_statistics="auto", where the statistics come from:
            "dense" (the teacher pass, no extra forward; measured equal for Wanda) or "pruned" (the pruned model's
            own inputs, as the plain method sees them).
        citation: the reference printed in the model card.
        config_fields: the `SIConfig` fields that set this method's knobs, mapped to its constructor's keyword
            arguments (read by `configure`; the attribute of each knob has the keyword's name).
    """

    name: ClassVar[str] = ""
    needs_data: ClassVar[bool] = True
    needs_hessian: ClassVar[bool] = False
    per_row: ClassVar[bool] = True
    updates_weights: ClassVar[bool] = False
    fold_changes_mask: ClassVar[bool] = False
    si_statistics: ClassVar[str] = "pruned"
    citation: ClassVar[str] = ""
    config_fields: ClassVar[dict[str, str]] = {}

    def configure(self, config: SIConfig) -> PruningMethod:
        """This method with the recipe's knobs applied (`SIConfig.pruning_method` calls it).

        A new object when a knob differs from its `SIConfig` default, so that the registered method never carries
        one run's settings into the next; a knob left at its default keeps this object's own value (the authors'
        default for a built-in method, the variant's for a variant registered under its own name)."""
        if not self.config_fields:
            return self
        defaults = {f.name: f.default for f in dataclasses.fields(config)}
        changes = {arg: getattr(config, field) for field, arg in self.config_fields.items()
                   if getattr(config, field) != defaults[field]}
        if not changes:
            return self
        knobs = {arg: getattr(self, arg) for arg in self.config_fields.values()}
        return type(self)(**{**knobs, **changes}, name=self.name)  # type: ignore[call-arg]

    # ------------------------------------------------------------------ mask-only methods
    def score(self, weight: torch.Tensor, stats: InputStats | None) -> torch.Tensor:
        """Importance of each weight of `weight` [out, in] (fp32, same shape; higher = kept). `stats` holds the
        calibration statistics of the layer's input (None for data-free methods)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither score() nor solve().")

    # ------------------------------------------------------------------ weight-updating methods
    def solve(self, weights: dict[str, torch.Tensor], stats: dict[str, InputStats],
              config: SIConfig) -> Iterator[Solved]:
        """Pruned weights of a group of layers (`weights` by name, `stats` their input statistics), yielded one
        layer at a time so each can be written and freed before the next is made. Only for `updates_weights`."""
        raise NotImplementedError(f"{type(self).__name__} declares updates_weights but does not implement solve().")

    # ------------------------------------------------------------------ the model card
    def card_rows(self, config: SIConfig) -> list[tuple[str, str]]:
        """(label, value) rows of the method's own settings for the card's recipe table."""
        return []

    def __repr__(self) -> str:
        return f"<pruning method {self.name!r}>"

