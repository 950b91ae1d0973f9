"""One statistics pass of the walk: the input statistics of a group of targets over the calibration stream, reduced
over data-parallel ranks and checked (every target saw input, finite, not all zero) before any mask reads them."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..modeling.capture import BlockInputs, run_block
from ..modeling.targets import WeightTarget
from ..observers.stats import InputStats, InputStatsCollector
from ..reporting.report import PruneReport

__all__ = ["StatisticsPass", "check_finite"]

logger = logging.getLogger(__name__)


def check_finite(tensors: Sequence[torch.Tensor], what: str) -> None:
    for tensor in tensors:
        if not bool(torch.isfinite(tensor).all()):
            raise FloatingPointError(
                f"Non-finite values (NaN/inf) in {what}. The model produces non-finite activations on this calibration "
                "data (check the weights, or use float32/bfloat16 instead of float16)."
            )


class StatisticsPass:
    """Collects statistics the same way for every block of a run.

    `method_name` names the method in errors; `with_hessian` collects X X^T too; `all_tokens_to_experts` sends every
    token to every expert during the pass (`expert_calibration="all"`); `reduce_stats` is the in-place reduction of
    a data-parallel run (None for one process); `report` receives the experts no token reached (`fallbacks`)."""

    def __init__(self, method_name: str, with_hessian: bool, all_tokens_to_experts: bool,
                 reduce_stats: Callable[[torch.Tensor], None] | None, report: PruneReport) -> None:
        self.method_name = method_name
        self.with_hessian = with_hessian
        self.all_tokens_to_experts = all_tokens_to_experts
        self.reduce_stats = reduce_stats
        self.report = report

    def collect(self, index: int, prefix: str, block: nn.Module, group: dict[str, WeightTarget],
                inputs: BlockInputs, keep_outputs: bool = False, probe_windows: Sequence[int] | None = None) -> Any:
        """The statistics of `group` from one pass over `inputs`; with `keep_outputs` also the block's outputs on
        every window, with `probe_windows` (sorted) its outputs on those windows as {index: output} (or None when
        they cannot be matched to windows)."""
        with InputStatsCollector(group, with_hessian=self.with_hessian, all_tokens_to_experts=self.all_tokens_to_experts,
                                 stop_when_done=not keep_outputs, run_to_end=probe_windows or ()) as collector:
            outputs = run_block(block, inputs, collector)
            stopped_early = collector.stop_when_done
        if self.reduce_stats is not None:
            for owner in {id(s): s for s in collector.stats.values()}.values():
                owner.reduce_(self.reduce_stats)
        unrouted: dict[tuple, InputStats] = {}
        for name, target in group.items():
            stats = collector.stats.get(name)
            if (stats is None or stats.tokens == 0) and target.expert is not None:
                stats = collector.stats[name] = self._unrouted_expert(index, prefix, name, target, unrouted)
            if stats is None or stats.tokens == 0:
                raise RuntimeError(
                    f"Block {index}: {name} received no input during calibration, so it cannot be pruned with "
                    f"{self.method_name}; add it to SIConfig(ignore=[...])."
                )
            if not stats.is_finite():
                raise FloatingPointError(
                    f"Block {index}: the calibration inputs of {name} contain NaN or inf. The model produces non-finite "
                    "activations on this calibration data (check the weights, or use float32/bfloat16 instead of float16)."
                )
            if not bool(stats.sq_norms.any()):  # all-zero inputs: every score ties and the mask would be arbitrary
                raise ValueError(
                    f"Block {index}: every calibration input of {name} is zero, so {self.method_name} has nothing to "
                    "rank its weights by; add it to SIConfig(ignore=[...]) or calibrate on other data."
                )
        if keep_outputs:
            check_finite(outputs, f"the dense outputs of block {index}")
            return collector.stats, outputs
        if probe_windows is not None:
            # A stopping collector let only the probe windows finish; one that cannot stop (experts) let all finish.
            # Any other count (a hooked Linear some window never reached) cannot be matched to windows: None, and
            # the probe runs its own forward.
            if not stopped_early and len(outputs) == len(inputs.hidden):
                return collector.stats, {i: outputs[i] for i in probe_windows}
            if stopped_early and len(outputs) == len(probe_windows):
                return collector.stats, dict(zip(probe_windows, outputs))
            return collector.stats, None
        return collector.stats

    def _unrouted_expert(self, index: int, prefix: str, name: str, target: WeightTarget,
                         cache: dict[tuple, InputStats]) -> InputStats:
        """The rule for an expert no calibration token was routed to: identity statistics (every input channel
        equally important, H = I), so Wanda keeps the largest weights of each row and SparseGPT makes no cross-column
        update; named in the report (`fallbacks`) and the log, since its mask rests on no data."""
        stats = cache.get(target.stats_key)
        if stats is None:  # gate and up rows of one expert share it, as they share real statistics
            weight = target.weight()
            size = weight.shape[1]
            stats = InputStats.of_sq_norms(torch.ones(size, dtype=torch.float32, device=weight.device), tokens=1)
            if self.with_hessian:
                stats.xtx = torch.eye(size, dtype=torch.float32, device=weight.device) / 2  # H = 2/n X X^T = I
            cache[target.stats_key] = stats
        self.report.fallbacks[f"{prefix}.{name}"] = "no calibration token routed to it: identity statistics"
        logger.warning("Block %d: no calibration token reached %s; pruned with identity statistics (more "
                       "num_samples route tokens to more experts).", index, name)
        return stats
