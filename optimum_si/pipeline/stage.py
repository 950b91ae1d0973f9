"""The stage protocol: what runs around each block's pruning without the walker knowing what it is.

A stage (a learned equivalent scaling, a profile of the dense model, a refit of the kept weights) subclasses
`BlockStage` and overrides the hooks it needs; the walker calls every stage's hook in order, at these points:

    before_walk(source, inputs)   once, before the first block: the dense model is still untouched (a profile)
    replay(index, source, inputs) a block finished by an interrupted run is replayed to rebuild the activations
    for each block:
      begin_block(ctx)            before any pass: ask for what the block needs (`ctx.keep_dense_outputs`, ...)
      -- statistics pass (and the dense block's outputs, when asked for) --
      before_prune(ctx)           statistics ready, weights unchanged (an equivalent scaling is folded here)
      -- the base method prunes the block --
      after_prune(ctx)            the mask is fixed (learned scales or the kept weights are trained here)
      -- the block's outputs are computed for the next block --
      conclude(ctx, outputs)      keep or revert what after_prune did, or refit; True when the weights changed since
                                  `outputs` were computed (the walker recomputes them before the next stage's hook)

`BlockContext` carries one block's state between the hooks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..modeling.capture import BlockInputs
from ..modeling.targets import WeightTarget
from ..modeling.weights import UndoLog
from ..observers.stats import InputStats
from ..reporting.report import BlockRecord, PruneReport

__all__ = ["BlockStage", "BlockContext"]


@dataclass(eq=False)
class BlockContext:
    """One block as the walker holds it, and what its stages asked for and got."""

    index: int
    name: str  # the block's full name, e.g. "model.layers.3"
    block: nn.Module
    targets: dict[str, WeightTarget]  # by name inside the block
    inputs: BlockInputs | None  # the pruned model's stream entering the block (None for data-free runs)
    record: BlockRecord
    report: PruneReport
    undo: UndoLog
    sparsities: dict[str, float]  # each target's planned sparsity, by name inside the block
    prune: bool = True  # False: a walk that only transforms (a stage's equivalent scaling alone)
    # Asked for by stages in `begin_block`:
    keep_dense_outputs: bool = False  # one statistics pass over every window that also keeps the dense outputs
    statistics_inputs: BlockInputs | None = None  # where the statistics come from (default: `inputs`)
    dense_inputs: BlockInputs | None = None  # what the dense outputs are computed on (default: `inputs`)
    keep_masks: bool = False  # keep the base method's keep masks in `keeps`
    # Where the output-error probe runs (default: `inputs`, whose outputs the walker computes anyway): set by a stage
    # that keeps the walk's stream apart from the one the written model runs, so that the probe reads the block as
    # written on that model's stream (the probe then runs the block itself once it is final).
    probe_inputs: BlockInputs | None = None
    # Filled by the walker:
    stats: dict[str, InputStats] = field(default_factory=dict)
    dense_outputs: Any = None  # the dense block's outputs on `dense_inputs` (with keep_dense_outputs)
    keeps: dict[str, torch.Tensor] = field(default_factory=dict)
    # Set by a stage in `before_prune`: multiplies each named target's scores by a row scale (the rows a stage divided
    # by a scale it folded, so that a per-matrix score sees them undivided).
    score_row_scales: dict[str, torch.Tensor] | None = None


class BlockStage:
    """Base of a walk stage: every hook does nothing unless overridden (see the module docstring)."""

    def before_walk(self, source: Any, inputs: BlockInputs | None) -> None:
        """Once, before the first block; `source` still holds the dense weights of every block not yet pruned."""

    def replay(self, index: int, source: Any, inputs: BlockInputs) -> None:
        """Block `index` was finished by an interrupted run; `inputs` are its pruned inputs, about to be replayed."""

    def begin_block(self, ctx: BlockContext) -> None:
        """Before the block's statistics pass."""

    def before_prune(self, ctx: BlockContext) -> None:
        """Statistics (and the dense outputs, if asked for) are ready; the weights are unchanged."""

    def after_prune(self, ctx: BlockContext) -> None:
        """The base method has pruned the block."""

    def conclude(self, ctx: BlockContext, outputs: Any) -> bool:
        """`outputs`: the block's outputs on every window (None after the last block). Return True when this hook
        changed the weights since, so that the walker computes the outputs again."""
        return False
