"""`PrunePlan`: what one run will prune, built (and checked) once before any weight changes.

It is the list of each block's targets (`optimum_si.modeling.targets.WeightTarget` by name), the weights left dense on
purpose, and the sparsity of every target through `sparsity_for(name)`. That method is the seam for non-uniform
allocations: OWL (`optimum_si.planning.owl`) fills `block_sparsities`, and the walker's masks and solves and Sparsity
Induction's mask refreshes all read each target's sparsity from it.
"""

from __future__ import annotations

from ..modeling.targets import WeightTarget

__all__ = ["PrunePlan"]


class PrunePlan(list):
    """`plan[i]` is block i's `{name inside the block: WeightTarget}`; `skipped` maps full names to the reason."""

    def __init__(self, block_path: str, blocks: list[dict[str, WeightTarget]], skipped: dict[str, str],
                 sparsity: float) -> None:
        super().__init__(blocks)
        self.block_path = block_path
        self.skipped = skipped
        self.sparsity = sparsity
        # One sparsity per block (OWL, optimum_si.planning.owl), or None for the recipe's everywhere.
        self.block_sparsities: list[float] | None = None

    def sparsity_for(self, name: str) -> float:
        """Fraction of weights to zero in the target with full name `name` (ignored by N:M structures)."""
        if self.block_sparsities is None:
            return self.sparsity
        return self.block_sparsities[int(name[len(self.block_path) + 1:].split(".", 1)[0])]

    def names(self, index: int) -> list[str]:
        """Full names of block `index`'s targets."""
        return [f"{self.block_path}.{index}.{name}" for name in self[index]]
