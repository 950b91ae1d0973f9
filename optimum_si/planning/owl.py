"""OWL's profiling pass as a stage of the walk: each decoder block's outlier ratio, measured on the dense model
before any block is pruned, turned into the per-block sparsities that the plan's `sparsity_for(name)` hands to the
walker (the math is `optimum_si.planning.allocation`).

OWL (Yin et al., ICML 2024; github.com/luuyin/OWL) profiles every block before pruning any, with the calibration
inputs propagated through the *unpruned* blocks. The stage does that the way the walker walks: from the first
block's captured inputs, it loads each block's dense weights from the source (a model in memory, offloaded or a
streamed checkpoint alike), hooks its planned targets (sum of x_j^2 per input channel; the routed tokens for
experts, as the model runs), runs it, reduces the statistics to the block's outlier ratio and propagates the dense
outputs to the next block. Only one float per block is kept. The ratios are handed to `on_block` after every block,
so a streamed run can record them in its progress file and a restarted run skips the blocks already profiled (it
still propagates through them: the activations are not stored).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from .. import distributed
from ..methods.wanda.scores import wanda_scores
from ..modeling.capture import BlockInputs, run_block
from ..modeling.targets import WeightTarget
from ..observers.stats import InputStats, InputStatsCollector
from ..pipeline.stage import BlockStage
from .allocation import outlier_ratio, owl_sparsities
from .config import OWLConfig
from .plan import PrunePlan

__all__ = ["OWLProfile", "BlockMetrics", "profile_blocks", "sparsities_from_ratios"]

logger = logging.getLogger(__name__)


class BlockMetrics:
    """The Wanda metrics of one block's targets, made on each iteration (`outlier_ratio` reads them twice) so that
    only one matrix's metric is alive at a time."""

    def __init__(self, targets: dict[str, WeightTarget], stats: dict[str, InputStats]) -> None:
        self.targets, self.stats = targets, stats

    def __iter__(self) -> Iterator[torch.Tensor]:
        for name, target in self.targets.items():
            yield wanda_scores(target.weight(), self.stats[name].sq_norms)


@torch.no_grad()
def profile_blocks(source, plan: Sequence[dict[str, WeightTarget]], inputs: BlockInputs, m: float,
                   done: Sequence[float | None] = (),
                   on_block: Callable[[list[float | None]], None] | None = None) -> list[float | None]:
    """The outlier ratio (%) of every block's planned targets on the dense model, None for a block with nothing
    planned. `source.load_dense(i)` / `source.release(i, block)` give block i's dense weights; `inputs` are the
    first block's (left as they are). `done` are the ratios of blocks profiled by an interrupted run."""
    if len(done) > len(plan):
        raise ValueError(f"{len(done)} profiled blocks recorded for a model of {len(plan)} blocks.")
    reduce = distributed.reduce_op()  # data-parallel: each rank ran its share of the windows
    ratios: list[float | None] = list(done)
    first = len(ratios)  # `done` may be the caller's record, which `on_block` updates
    if first == len(plan):
        return ratios
    hidden = inputs.hidden
    for index, targets in enumerate(plan):
        block: nn.Module = source.load_dense(index)
        try:
            current = BlockInputs(hidden, inputs.kwargs)
            if index < first:  # profiled before a restart: only its outputs are needed
                hidden = run_block(block, current)
                continue
            with InputStatsCollector(targets, with_hessian=False, stop_when_done=False) as collector:
                outputs = run_block(block, current, collector)
            if reduce is not None:
                for stats in {id(s): s for s in collector.stats.values()}.values():
                    stats.reduce_(reduce)
            missing = [name for name in targets if name not in collector.stats or collector.stats[name].tokens == 0]
            if missing:
                raise RuntimeError(f"OWL profiling: block {index}'s {missing[0]} received no calibration input.")
            ratios.append(outlier_ratio(BlockMetrics(targets, collector.stats), m) if targets else None)
            del collector
            hidden = outputs
        finally:
            source.release(index, block)
        if on_block is not None:
            on_block(list(ratios))
    return ratios


def sparsities_from_ratios(ratios: Sequence[float | None], target: float, lam: float) -> list[float]:
    """Per-block sparsities with mean `target` over the blocks that have targets; a block with nothing planned takes
    no part in the allocation (nothing in it is pruned) and is given `target`."""
    planned = [r for r in ratios if r is not None]
    sparsities = iter(owl_sparsities(planned, target, lam))
    result = [next(sparsities) if r is not None else target for r in ratios]
    logger.info("OWL: outlier ratios (%%) %s -> block sparsities %s",
                ", ".join(f"{r:.3g}" for r in planned), ", ".join(f"{s:.4f}" for s in result))
    return result


class OWLProfile(BlockStage):
    """The walk stage that profiles the dense model before the first block is pruned and sets `plan`'s per-block
    sparsities (mean `sparsity`). `done`: the ratios of blocks profiled by an interrupted run; `on_block(ratios)`
    is called after each block profiled (a streamed run records them)."""

    def __init__(self, plan: PrunePlan, sparsity: float, config: OWLConfig, done: Sequence[float | None] = (),
                 on_block: Callable[[list[float | None]], None] | None = None) -> None:
        self.plan, self.sparsity, self.config = plan, sparsity, config
        self.done, self.on_block = done, on_block

    def before_walk(self, source, inputs: BlockInputs | None) -> None:
        if inputs is None:
            raise ValueError("sparsity_profile='owl' profiles the dense model on calibration data; pass a dataset.")
        started, todo = time.perf_counter(), len(self.plan) - len(self.done)
        ratios = profile_blocks(source, self.plan, inputs, self.config.m, self.done, self.on_block)
        if todo:
            logger.info("OWL profiling pass over %d blocks: %.1f s", todo, time.perf_counter() - started)
        self.plan.block_sparsities = sparsities_from_ratios(ratios, self.sparsity, self.config.lam)
