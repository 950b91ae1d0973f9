"""Which calibration windows a stage holds out from training to judge itself on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["validation_windows", "training_step_count", "training_steps"]


def validation_windows(count: int, fraction: float) -> list[int]:
    """Indices of the `fraction` of `count` calibration windows held out from training, evenly spread so that no
    stretch of the calibration text is over-represented (at least one window is left for training)."""
    held = min(int(round(count * fraction)), count - 1)
    if held <= 0:
        return []
    return sorted({int(i * count / held) for i in range(held)})


def training_step_count(training: list[int], epochs: int, group: Any = None) -> int:
    """How many steps `training_steps` yields (on every rank alike when data-parallel)."""
    return epochs * (group.max_int(len(training)) if group is not None else len(training))


def training_steps(training: list[int], epochs: int, generator: torch.Generator, group: Any = None
                   ) -> Iterator[int | None]:
    """The window each training step uses: `epochs` passes over `training` (local indices), each in a fresh order
    drawn from `generator`. Data-parallel (`group`, the active process group): one window per rank and step, and
    every rank takes as many steps as the rank with the most windows; a rank whose share is used up gets None and
    sits the step out (it still joins the step's gradient average)."""
    for _epoch in range(epochs):
        order = [training[i] for i in torch.randperm(len(training), generator=generator).tolist()]
        for step in range(group.max_int(len(order)) if group is not None else len(order)):
            yield order[step] if step < len(order) else None
