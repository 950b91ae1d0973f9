"""`InMemoryBlocks`: the blocks of a model already in memory, moved to the execution device one at a time."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ...modeling.blocks import module_device

__all__ = ["InMemoryBlocks"]


class InMemoryBlocks:
    """Blocks of a model already in memory; moved to the execution device one at a time when needed."""

    def __init__(self, blocks: Sequence[nn.Module], device: torch.device) -> None:
        self.blocks = blocks
        self.device = device
        self._home: dict[int, torch.device] = {}

    def __len__(self) -> int:
        return len(self.blocks)

    def load(self, index: int) -> nn.Module:
        block = self.blocks[index]
        home = module_device(block)
        if home != self.device:
            self._home[index] = home
            block.to(self.device)
        return block

    def load_dense(self, index: int) -> nn.Module:
        """The block as it is: still dense only until the walk has pruned it (profiles run before the walk)."""
        return self.load(index)

    def release(self, index: int, block: nn.Module) -> None:
        home = self._home.pop(index, None)
        if home is not None:
            block.to(home)
