"""The block walker: one loop for every source, every method and every stage.

Given the first block's captured inputs, for each block: load it from the source, collect the statistics of its
targets (one dense pass, as the Wanda and SparseGPT reference code does, or one pass per group with
`true_sequential`), let the base method prune it, run the pruned block so the next one sees pruned outputs, and
hand it back to the source. The walker moves data and calls the stages' hooks (`optimum_si.pipeline.stage`); it
knows no method (it reads traits) and no stage.

Lifecycle per block:
    load -> begin_block -> statistics pass(es) -> before_prune -> prune -> after_prune -> propagate -> conclude
    -> output-error probe -> commit -> release
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from ..methods.base import Pattern, PruningMethod
from ..modeling.capture import BlockInputs, run_block
from ..modeling.targets import WeightTarget
from ..modeling.weights import UndoLog
from ..observers.output_error import OutputErrorProbe
from ..reporting.report import BlockRecord, PruneReport
from .pruning import prune_group
from .stage import BlockContext, BlockStage
from .statistics import StatisticsPass, check_finite

__all__ = ["BlockWalker"]

logger = logging.getLogger(__name__)


class BlockWalker:
    """Runs the per-block loop of one run and fills its `PruneReport`.

    `targets_of(i)` gives block i's targets by name inside the block, `sparsity_for(full name)` each target's planned
    sparsity (read when the block is pruned, so that a stage's `before_walk` may set it), `n_m` the recipe's N:M
    structure. `reduce_stats` is the in-place reduction of every statistic in a data-parallel run (None for one
    process). `prune=False` walks without pruning (for stages that only transform the model)."""

    def __init__(self, method: PruningMethod, report: PruneReport, undo: UndoLog, *, block_path: str,
                 targets_of: Callable[[int], dict[str, WeightTarget]], sparsity_for: Callable[[str], float],
                 n_m: tuple[int, int] | None, stages: Sequence[BlockStage] = (),
                 sequential_groups: Sequence[Sequence[str]] | None = None, true_sequential: bool = False,
                 expert_calibration: str = "routed", prune: bool = True,
                 reduce_stats: Callable[[torch.Tensor], None] | None = None, show_progress: bool = True) -> None:
        self.method = method
        self.report = report
        self.undo = undo
        self.block_path = block_path
        self.targets_of = targets_of
        self.sparsity_for = sparsity_for
        self.n_m = n_m
        self.stages = list(stages)
        self.sequential_groups = sequential_groups if true_sequential else None
        self.expert_calibration = str(expert_calibration)
        self.prune = prune
        self.show_progress = show_progress
        self.statistics = StatisticsPass(method.name, method.needs_hessian, self.expert_calibration == "all",
                                         reduce_stats, report)

    def pattern_for(self, name: str) -> Pattern:
        """The pattern the method is asked for on the target with full name `name`."""
        return Pattern(self.sparsity_for(name), self.n_m)

    def run(self, source: Any, inputs: BlockInputs | None, first: int = 0) -> None:
        """Prune every block of `source` from `first` on (earlier blocks, already pruned by an interrupted run, are
        only re-run to rebuild the activations). `inputs` is None for data-free runs (plain magnitude)."""
        for stage in self.stages:
            stage.before_walk(source, inputs)
        if inputs is not None:
            for index in tqdm(range(first), desc="Replaying finished blocks", disable=not self.show_progress or not first):
                for stage in self.stages:
                    stage.replay(index, source, inputs)
                block = source.load(index)
                try:
                    inputs.hidden = run_block(block, inputs)
                finally:
                    source.release(index, block)
        for index in tqdm(range(first, len(source)), desc="Pruning blocks", disable=not self.show_progress,
                          unit="block"):
            self._walk_block(index, source, inputs)

    def _walk_block(self, index: int, source: Any, inputs: BlockInputs | None) -> None:
        started = time.perf_counter()
        record = BlockRecord(index=index, seconds=0.0)
        prefix = f"{self.block_path}.{index}"
        block = source.load(index)
        try:
            targets = self.targets_of(index)
            ctx = BlockContext(index, prefix, block, targets, inputs, record, self.report, self.undo,
                               {name: self.sparsity_for(f"{prefix}.{name}") for name in targets}, prune=self.prune)
            for stage in self.stages:
                stage.begin_block(ctx)
            # The dense block's outputs on a few windows, taken before any weight changes (optimum_si.observers):
            # from a pass over the same inputs that runs anyway when there is one (the dense pass a stage asked for,
            # or the first statistics pass run to the end on the probe windows), else from a forward of its own.
            probe_source = self._probe_source(ctx)
            probe_inputs = ctx.probe_inputs or inputs
            probe = OutputErrorProbe(block, probe_inputs) if probe_source == "own" else None
            groups = self._groups(targets)
            if ctx.keep_dense_outputs and len(groups) > 1:
                raise ValueError("A stage of this run needs the dense outputs of each whole block; it cannot run with "
                                 "true_sequential=True.")
            for position, group in enumerate(groups):
                t0 = time.perf_counter()
                if position == 0 and ctx.keep_dense_outputs:
                    self._dense_pass(ctx)
                    stats = ctx.stats
                    if probe_source == "dense":
                        probe = OutputErrorProbe(block, inputs, dense=ctx.dense_outputs)
                elif position == 0 and probe_source == "statistics":  # the first group sees the dense block
                    windows = OutputErrorProbe.local_windows(len(inputs.hidden))
                    stats, dense = self.statistics.collect(index, prefix, block, group, inputs, probe_windows=windows)
                    probe = OutputErrorProbe(block, inputs, dense=dense)
                else:
                    stats = self.statistics.collect(index, prefix, block, group, inputs) \
                        if self.method.needs_data else {}
                if position == 0:
                    ctx.stats = stats
                t1 = time.perf_counter()
                record.stats_seconds += t1 - t0
                if position == 0:
                    for stage in self.stages:
                        stage.before_prune(ctx)
                if not self.prune:
                    continue
                ctx.keeps.update(prune_group(self.method, prefix, group, stats, self.pattern_for, self.undo,
                                             self.report, keep_masks=ctx.keep_masks,
                                             row_scales=ctx.score_row_scales))
                record.prune_seconds += time.perf_counter() - t1
            if self.prune:
                for stage in self.stages:
                    stage.after_prune(ctx)
            outputs = None
            if inputs is not None and index + 1 < len(source):
                t0 = time.perf_counter()
                outputs = run_block(block, inputs)
                record.propagate_seconds = time.perf_counter() - t0
            for stage in self.stages:
                if stage.conclude(ctx, outputs) and outputs is not None:
                    outputs = run_block(block, inputs)  # the next stage and block must see the block as it is now
            if probe is not None:
                record.output_error = probe.measure(block, outputs if probe_inputs is inputs else None)
            if outputs is not None:
                check_finite(outputs, f"the outputs of block {index}")
                inputs.hidden = outputs
            if hasattr(source, "commit"):  # only a fully pruned block is written: `release` runs after faults too
                source.commit(index, block)
        finally:
            source.release(index, block)
        record.seconds = time.perf_counter() - started
        self.report.blocks.append(record)
        logger.info(
            "block %d/%d pruned in %.2f s (stats %.2f, prune %.2f, propagate %.2f)",
            index + 1, len(source), record.seconds, record.stats_seconds, record.prune_seconds,
            record.propagate_seconds,
        )

    def _groups(self, targets: dict[str, WeightTarget]) -> list[dict[str, WeightTarget]]:
        if not self.sequential_groups:
            return [targets]
        groups, placed = [], set()
        for names in self.sequential_groups:
            group = {n: targets[n] for n in names if n in targets}
            if group:
                groups.append(group)
                placed.update(group)
        rest = {n: t for n, t in targets.items() if n not in placed}
        return groups + ([rest] if rest else [])

    def _probe_source(self, ctx: BlockContext) -> str | None:
        """Where the output-error probe takes the dense block's outputs from: None (no probe: nothing is pruned or
        there is no data), "dense" (the dense pass a stage asked for, when it runs on the pruned stream's own
        inputs), "statistics" (the first statistics pass, run to the end on the probe windows: about 0.03 of a block
        pass instead of 0.125) or "own" (a forward of its own; always when a stage pointed the probe at another
        stream with `probe_inputs`, which neither pass runs on)."""
        if ctx.inputs is None or not self.prune:
            return None
        if ctx.probe_inputs is not None and ctx.probe_inputs is not ctx.inputs:
            return "own"
        if ctx.keep_dense_outputs:
            return "dense" if (ctx.dense_inputs or ctx.inputs) is ctx.inputs else "own"
        # With expert_calibration="all" the statistics pass sends every token to every expert: not the block's outputs.
        if self.method.needs_data and self.expert_calibration != "all":
            return "statistics"
        return "own"

    def _dense_pass(self, ctx: BlockContext) -> None:
        """The statistics of every target and the dense block's outputs, in one pass when both come from the same
        inputs (with `expert_calibration="all"` the statistics pass sends every token to every expert, so its
        outputs are not the block's: the outputs then need a pass of their own, with the model's routing)."""
        assert ctx.inputs is not None, "a dense pass needs calibration inputs"
        stats_inputs = ctx.statistics_inputs or ctx.inputs
        dense_inputs = ctx.dense_inputs or ctx.inputs
        all_tokens = self.expert_calibration == "all" and any(t.expert is not None for t in ctx.targets.values())
        if stats_inputs is not dense_inputs or all_tokens:
            ctx.stats = self.statistics.collect(ctx.index, ctx.name, ctx.block, ctx.targets, stats_inputs)
            ctx.dense_outputs = run_block(ctx.block, dense_inputs)
            check_finite(ctx.dense_outputs, f"the dense outputs of block {ctx.index}")
        else:
            ctx.stats, ctx.dense_outputs = self.statistics.collect(ctx.index, ctx.name, ctx.block, ctx.targets,
                                                                   dense_inputs, keep_outputs=True)

