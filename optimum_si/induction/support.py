"""Checks made before any weight changes: whether Sparsity Induction can run on this architecture (every distinct
block layout resolves against its scaling-group table) and in the precision asked for on this device."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from torch import nn

from ..modeling.devices import check_bfloat16
from .config import InductionConfig
from .transforms import resolve_scaling_groups

__all__ = ["induction_supported", "check_training_precision"]

logger = logging.getLogger(__name__)


def induction_supported(config: InductionConfig, model_config: Any, blocks: Sequence[nn.Module]) -> bool:
    """Whether SI runs on these blocks: it needs a scaling-group mapping for the architecture (without one,
    `unsupported="skip"` prunes without SI and anything else raises), and every block must match it. Each distinct
    block layout is checked (a Qwen-MoE model mixes dense-MLP and expert blocks), so a mismatch in a late block stops
    the run before any weight changes."""
    checked: set[tuple[tuple[str, str], ...]] = set()
    for index, block in enumerate(blocks):
        layout = tuple((name, type(module).__name__) for name, module in block.named_modules())
        if layout in checked:
            continue
        checked.add(layout)
        try:
            resolve_scaling_groups(block, model_config, config.groups)
        except NotImplementedError:
            if config.unsupported == "skip":
                logger.warning("No Sparsity Induction mapping for this architecture; pruning without induction.")
                return False
            raise
        except AttributeError as err:
            raise ValueError(f"Block {index} does not match its architecture's scaling-group table: {err}") from err
    return True


def check_training_precision(config: InductionConfig, device: Any) -> None:
    """ValueError when SI is to train in bfloat16 on a GPU without bf16 support."""
    if config.precision == "bfloat16":
        check_bfloat16(device, "InductionConfig.precision")
