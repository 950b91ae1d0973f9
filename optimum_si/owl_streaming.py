"""OWL's dense profiling pass when streaming: one read of the checkpoint, block by block, before any block is pruned.

In memory, OWL profiles with one ordinary forward of the dense model (`optimum_si.owl`). A streamed checkpoint has
no model to run, so the same statistics are gathered the way the engine walks blocks: capture the first block's
inputs, then for each block load its *source* weights, hook its planned targets (sum of x^2 per input channel, the
routed tokens for experts, exactly as the in-memory pass), run it, reduce to the block's outlier ratio and
propagate its dense outputs to the next block. Only one float per block is kept: the per-channel sums die with their
block. The ratios are handed to `on_block` after every block, so a streamed run can record them in its progress file
and a restarted run skips the blocks already profiled (it still propagates through them: the activations are not
stored).

The math is `optimum_si.allocation` (`outlier_ratio`, `owl_sparsities`), shared with the in-memory pass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from torch import nn

from . import distributed
from .allocation import outlier_ratio
from .engine import BlockInputs, run_block
from .owl import BlockMetrics, sparsities_from_ratios
from .stats import InputStatsCollector
from .targets import WeightTarget

__all__ = ["profile_blocks", "sparsities_from_ratios"]

logger = logging.getLogger(__name__)


@torch.no_grad()
def profile_blocks(source, plan: Sequence[dict[str, WeightTarget]], inputs: BlockInputs, m: float,
                   done: Sequence[float | None] = (),
                   on_block: Callable[[list[float | None]], None] | None = None) -> list[float | None]:
    """The outlier ratio (%) of every block's planned targets on the dense model, None for a block with nothing
    planned. `source.load_dense(i)` / `source.release(i, block)` give block i's source weights; `inputs` are the
    first block's (consumed). `done` are the ratios of blocks profiled by an interrupted run."""
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
