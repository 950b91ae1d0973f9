"""OWL's profiling pass: each decoder block's outlier ratio, measured on the dense model, turned into the per-block
sparsities that the plan's `sparsity_for(name)` hands to the engine (the math is `optimum_si.allocation`).

OWL (Yin et al., ICML 2024; github.com/luuyin/OWL) profiles every block before pruning any, with calibration inputs
propagated through the *unpruned* blocks. Before pruning, that is exactly what one ordinary forward of the dense
model computes, so the pass is a plain forward over the calibration windows with input-statistics hooks on every
planned target (one `InputStatsCollector` per block, closed when its block's forward ends, so that only one block's
inputs are held for input sharing at a time). Only per-target vectors of sum x_j^2 are kept.

This pass is for in-memory models whose weights are resident (not accelerate-offloaded); a streamed checkpoint is
profiled block by block by `owl_streaming.py`, with the same metrics and mapping (`BlockMetrics`,
`sparsities_from_ratios`). Mixture-of-experts targets use routed tokens (`expert_calibration="all"` would change the block outputs that the
forward propagates).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import ExitStack

import torch
from torch import nn

from . import distributed
from .allocation import outlier_ratio, owl_sparsities
from .metrics import wanda_scores
from .offload import is_offloaded
from .stats import InputStats, InputStatsCollector
from .targets import WeightTarget

__all__ = ["BlockMetrics", "owl_block_sparsities", "sparsities_from_ratios"]

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
def owl_block_sparsities(model: nn.Module, blocks: nn.ModuleList, plan: Sequence[dict[str, WeightTarget]],
                         batches: Sequence[torch.Tensor], target: float, m: float, lam: float) -> list[float]:
    """Per-block sparsities (mean `target`) from the dense model's outlier ratios of the pooled Wanda metric of each
    block's planned targets, over the calibration `batches` of token ids."""
    if is_offloaded(blocks):
        raise NotImplementedError("sparsity_profile='owl' needs the blocks' weights resident; this model is offloaded.")
    if len(plan) != len(blocks):
        raise ValueError(f"The plan has {len(plan)} blocks, the model {len(blocks)}.")
    device = model.get_input_embeddings().weight.device
    collectors = [InputStatsCollector(targets, with_hessian=False, stop_when_done=False) for targets in plan]
    with ExitStack() as stack:
        for block, collector in zip(blocks, collectors):
            stack.enter_context(collector)
            handle = block.register_forward_hook(lambda *_args, _c=collector: _c.end_pass())
            stack.callback(handle.remove)
        for batch in batches:
            model(input_ids=batch.to(device))
    reduce = distributed.reduce_op()
    if reduce is not None:  # data-parallel: each rank profiled its share of the batches; sum the shares
        for collector in collectors:
            for stats in {id(s): s for s in collector.stats.values()}.values():
                stats.reduce_(reduce)
    ratios = []
    for index, (targets, collector) in enumerate(zip(plan, collectors)):
        missing = [name for name in targets if name not in collector.stats or collector.stats[name].tokens == 0]
        if missing:
            raise RuntimeError(f"OWL profiling: block {index}'s {missing[0]} received no calibration input.")
        ratios.append(outlier_ratio(BlockMetrics(targets, collector.stats), m) if targets else None)
    return sparsities_from_ratios(ratios, target, lam)


def sparsities_from_ratios(ratios: Sequence[float | None], target: float, lam: float) -> list[float]:
    """Per-block sparsities with mean `target` over the blocks that have targets; a block with nothing planned takes
    no part in the allocation (nothing in it is pruned) and is given `target`. Shared by the in-memory profile above
    and the streamed one (owl_streaming.py)."""
    planned = [r for r in ratios if r is not None]
    sparsities = iter(owl_sparsities(planned, target, lam))
    result = [next(sparsities) if r is not None else target for r in ratios]
    logger.info("OWL: outlier ratios (%%) %s -> block sparsities %s",
                ", ".join(f"{r:.3g}" for r in planned), ", ".join(f"{s:.4f}" for s in result))
    return result
