"""`BlockSource`: where the walker gets each block from and gives it back to."""

from __future__ import annotations

from typing import Protocol

from torch import nn

__all__ = ["BlockSource"]


class BlockSource(Protocol):
    """Hands the walker one block at a time on the execution device, and takes it back.

    A source that writes finished blocks out also has `commit(index, block)`, called only once the block is fully
    pruned (`release` runs after faults too)."""

    def __len__(self) -> int: ...

    def load(self, index: int) -> nn.Module:
        """Block `index`, with real weights on the execution device."""

    def release(self, index: int, block: nn.Module) -> None:
        """Called when the walker is done with block `index`, after a fault too: free it / move it home."""

    def load_dense(self, index: int) -> nn.Module:
        """Block `index` with its original (unpruned) weights: for a profile of the dense model before the walk, and
        for replaying the dense stream of blocks finished by an interrupted run."""
