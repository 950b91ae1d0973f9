"""How far each pruned block's output moved from the dense block's: the relative output error
||block_pruned(x) - block_dense(x)|| / ||block_dense(x)|| over a few calibration windows x, the same inputs for both
(the pruned model's own stream, so each block is judged on its own error, not on what earlier blocks passed on).

Recorded per block in `si_report.json` (`blocks[i].output_error`) and drawn on the model card. It costs one dense
forward of the block on `probe_windows(n)` windows (about an eighth of the calibration set, at most 8) before
pruning; the pruned outputs are those the walker computes anyway for the next block (the last block, which has no
next block, is run once more on those windows).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .. import distributed

__all__ = ["MAX_PROBE_WINDOWS", "probe_windows", "relative_error", "OutputErrorProbe"]

MAX_PROBE_WINDOWS = 8


def probe_windows(count: int) -> list[int]:
    """Indices of the windows the error is measured on: about one in eight of `count`, at most
    `MAX_PROBE_WINDOWS`, at least one, spread evenly over the calibration set."""
    if count <= 0:
        return []
    chosen = max(1, min(MAX_PROBE_WINDOWS, count // 8))
    return sorted({int(i * count / chosen) for i in range(chosen)})


def relative_error(outputs: Sequence[torch.Tensor], references: Sequence[torch.Tensor]) -> float:
    """sqrt(sum ||out - ref||^2 / sum ||ref||^2) over matching tensors, in float64 sums of float32 values (summed
    over the ranks of a data-parallel run, each holding its share of the probe windows)."""
    diff = ref_norm = 0.0
    for out, ref in zip(outputs, references, strict=True):
        ref32 = ref.float()
        diff += float((out.to(ref32.device).float() - ref32).square().sum())
        ref_norm += float(ref32.square().sum())
    group = distributed.active()
    if group is not None:
        diff, ref_norm = group.sum_values([diff, ref_norm])
    if ref_norm == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return math.sqrt(diff / ref_norm)


def _output(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


class OutputErrorProbe:
    """Take the dense block's outputs on the probe windows now (before any weight changes); `measure` compares the
    block's outputs once it is pruned. `inputs` is the walker's `BlockInputs` (hidden states and kwargs)."""

    @torch.no_grad()
    def __init__(self, block: nn.Module, inputs: Any,
                 dense: Sequence[torch.Tensor] | Mapping[int, torch.Tensor] | None = None) -> None:
        """`dense`: the unchanged block's outputs when the caller computed them anyway (then no forward here): a
        sequence over every window of `inputs`, or a mapping holding at least the `local_windows`."""
        group = distributed.active()
        self._any = bool(probe_windows(group.batch_total if group is not None else len(inputs.hidden)))
        self.indices = self.local_windows(len(inputs.hidden))
        self._inputs = inputs
        self._dense = [dense[i] if dense is not None else self._run(block, i) for i in self.indices]

    @staticmethod
    def local_windows(count: int) -> list[int]:
        """Indices, among this process's `count` windows, of the probe windows (data-parallel: the probe windows of
        the whole set, those this rank holds)."""
        group = distributed.active()
        if group is None:
            return probe_windows(count)
        return group.local_indices(probe_windows(group.batch_total))

    def _run(self, block: nn.Module, index: int) -> torch.Tensor:
        hidden = self._inputs.hidden[index]
        return _output(block(hidden, **self._inputs.kwargs[hidden.shape[0]])).detach()

    @torch.no_grad()
    def measure(self, block: nn.Module, outputs: Sequence[torch.Tensor] | None = None) -> float | None:
        """The relative output error of the block as it is now; `outputs`: its outputs on every calibration window
        when the caller has them (else the probe windows are run again). None without probe windows."""
        if not self._any:
            return None
        pruned = [outputs[i] for i in self.indices] if outputs is not None else \
            [self._run(block, i) for i in self.indices]
        error = relative_error(pruned, self._dense)
        self._dense = []
        return error
