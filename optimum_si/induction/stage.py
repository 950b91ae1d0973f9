"""Sparsity Induction as a stage of the walk (`optimum_si.pipeline.stage`).

Per block: it asks the walker for the dense block's outputs from the statistics pass (the reconstruction target) and
for the base method's keep masks; before the base method prunes, it folds the distribution-level scales where they
change the method's mask (magnitude) and snapshots the dense weights; after, `BlockInducer` trains the feature-level
scales and folds them; once the walker has propagated the block, the verdict keeps or reverts them on the judged
windows.

Targets: 'local' (the dense block on the pruned model's own inputs, the statistics pass's outputs) or 'global' (the
dense model's own block outputs: the statistics pass runs on the run's `DenseStream`, shared with any other stage
that has a global target).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from torch import nn

from ..methods.base import Pattern, PruningMethod
from ..modeling.targets import WeightTarget
from ..pipeline.dense_stream import DenseStream
from ..pipeline.stage import BlockContext, BlockStage
from ..reporting.report import BlockInduction
from .config import InductionConfig
from .fold import fold_distribution_level
from .inducer import BlockInducer

__all__ = ["InductionStage"]

logger = logging.getLogger(__name__)


class InductionStage(BlockStage):
    """Sparsity Induction on every block of a walk. `method` is the configured base method (not a data-parallel
    wrapper), `seed` the recipe's, `n_m` its N:M structure, `model_config` the transformers config (head layout).
    With `prune=False` (the walk of `SIPruner.induce`) only the distribution-level scales are folded. `dense_stream`:
    the run's dense stream, which the global target needs (a stage of the same walk, run after this one)."""

    def __init__(self, config: InductionConfig, method: PruningMethod, seed: int, n_m: tuple[int, int] | None,
                 model_config: Any, prune: bool = True, dense_stream: DenseStream | None = None) -> None:
        if prune and config.target == "global" and dense_stream is None:
            raise ValueError("Sparsity Induction's global target needs the run's DenseStream (dense_stream=...).")
        self.config = config
        self.method = method
        self.seed = seed
        self.n_m = n_m
        self.model_config = model_config
        self.dense_stream = dense_stream if prune and config.target == "global" else None
        self._block: dict[str, Any] = {}  # the current block's state between hooks

    def _statistics_from_teacher(self) -> bool:
        """Whether SI takes the base pruner's statistics from the teacher pass (docs/si-design.md: measured equal
        for Wanda, whose metric only needs ||x_j||, at one partial pass less per block; SparseGPT's weight updates
        are meant for the inputs the pruned model really sees, and magnitude was not measured that way)."""
        choice = self.config.statistics
        return choice == "dense" or (choice == "auto" and self.method.si_statistics == "dense")

    def begin_block(self, ctx: BlockContext) -> None:
        self._block = {}
        if ctx.inputs is None:
            return
        ctx.keep_dense_outputs = True
        ctx.keep_masks = True
        if self.dense_stream is not None:
            # The dense model's own block outputs, so each block also learns to undo upstream error.
            teacher = self.dense_stream.route_statistics_pass(ctx)
            ctx.statistics_inputs = teacher if self._statistics_from_teacher() else ctx.inputs

    def before_prune(self, ctx: BlockContext) -> None:
        if ctx.inputs is None:
            return
        started = time.perf_counter()
        spreads: dict[str, float] = {}
        row_scales: dict[str, torch.Tensor] = {}
        # Wanda and SparseGPT masks are invariant to the equivalent scales (docs/si-design.md §1), except that
        # SparseGPT's per-block mask sees row scales and its damping is not scale-covariant: only magnitude, and
        # induce() (which hands the model to any later pruner), fold them.
        if self.config.init == "data" and (self.method.fold_changes_mask or not ctx.prune):
            spreads, row_scales = fold_distribution_level(ctx.block, self.model_config, ctx.stats, ctx.targets,
                                                          self.config, ctx.undo)
        ctx.score_row_scales = row_scales
        self._block["spreads"] = spreads
        if not ctx.prune:
            ctx.record.induction = BlockInduction(scale_spread=spreads, seconds=time.perf_counter() - started)
            return
        linears = trained_modules(ctx.targets)
        self._block["linears"] = linears
        self._block["dense_weights"] = {name: ctx.targets[name].weight().detach().float().clone() for name in linears}

    def after_prune(self, ctx: BlockContext) -> None:
        if "linears" not in self._block:
            return
        linears = self._block["linears"]
        patterns = {name: Pattern(ctx.sparsities[name], self.n_m) for name in linears}
        inducer = BlockInducer(self.config, self.method, self.seed, ctx.undo, patterns)
        inducer.run(ctx.block, linears, self._block.pop("dense_weights"), ctx.keeps, ctx.stats, ctx.inputs.hidden,
                    ctx.inputs.kwargs, ctx.dense_outputs, ctx.score_row_scales)
        ctx.record.induction = BlockInduction(scale_spread=self._block["spreads"])
        self._block["inducer"] = inducer

    def conclude(self, ctx: BlockContext, outputs: Any) -> bool:
        """Keep or revert the block's induction from its probe loss (read off `outputs` when the block was
        propagated); True when it was reverted (the block's outputs changed)."""
        inducer = self._block.pop("inducer", None)
        if inducer is None:
            return False
        inducer.verify(outputs)
        result = inducer.record
        for name, target in ctx.targets.items():
            ctx.report.layers[f"{ctx.name}.{name}"].zeros = target.zeros()
        result.scale_spread = ctx.record.induction.scale_spread if ctx.record.induction is not None else None
        ctx.record.induction = result
        logger.info(
            "block %d: induction loss %.4g -> %.4g (%s), %d steps, %d mask changes, %.1f s", ctx.index,
            result.loss_before, result.loss_after, "kept" if result.kept else "reverted", result.steps,
            result.mask_changes, result.seconds,
        )
        return not result.kept


def trained_modules(targets: dict[str, WeightTarget]) -> dict[str, nn.Module]:
    """The targets whose learned scales SI trains (Linear, Conv1D: one module each). Fused experts and opted-in
    routers have no module of their own to wrap: they keep their base-pruned weights while the block trains."""
    return {name: target.module for name, target in targets.items()
            if target.expert is None and (target.is_linear or target.transposed)}
