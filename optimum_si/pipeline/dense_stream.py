"""The dense model's own activation stream, carried beside the pruned one, as a stage of the walk.

Stages with a global target fit each block to the *dense* model's own block output at that depth, so that a block
also learns to undo the error of the pruned blocks before it. Those outputs come from running each still-dense block
on the dense stream, which nothing else in the walk keeps. One `DenseStream` serves every such stage of a run: the
stream is held once (one more activation set, docs/memory.md) and each block's dense output is computed once, by the
walker's statistics pass where a stage routes it there, or by one forward of the still-dense block otherwise.

Run it after the stages that read it (`runs/setup.py` does): its `before_prune` computes the block's output once the
earlier stages' equivalent folds are in (they change no output), and its `conclude` advances the stream once every
reader is done with the block.
"""

from __future__ import annotations

from typing import Any

from ..modeling.capture import BlockInputs, run_block
from .stage import BlockContext, BlockStage

__all__ = ["DenseStream"]


class DenseStream(BlockStage):
    """The dense model's stream entering the current block (`entering`), and the current block's dense outputs on it
    (`outputs`, from `before_prune` on)."""

    def __init__(self) -> None:
        self._hidden: Any = None  # entering the current block; None until a block has run (the first block's inputs)
        self._from_statistics_pass = False
        self.outputs: Any = None

    def entering(self, inputs: BlockInputs) -> BlockInputs:
        """The dense stream entering the block whose pruned-stream inputs are `inputs` (the same before block 0)."""
        return BlockInputs(self._hidden if self._hidden is not None else inputs.hidden, inputs.kwargs)

    def route_statistics_pass(self, ctx: BlockContext) -> BlockInputs:
        """Have the walker's statistics pass compute the dense outputs on the dense stream (`ctx.dense_outputs` are
        then this block's `outputs`, with no forward of their own); returns the dense stream's inputs."""
        ctx.dense_inputs = self.entering(ctx.inputs)
        ctx.keep_dense_outputs = True
        self._from_statistics_pass = True
        return ctx.dense_inputs

    def replay(self, index: int, source: Any, inputs: BlockInputs) -> None:
        block = source.load_dense(index)  # the dense stream goes through the *source* weights of the block
        try:
            self._hidden = run_block(block, self.entering(inputs))
        finally:
            source.release(index, block)

    def before_prune(self, ctx: BlockContext) -> None:
        if ctx.inputs is None:
            return
        if self._from_statistics_pass:
            self.outputs = ctx.dense_outputs
        else:
            self.outputs = run_block(ctx.block, self.entering(ctx.inputs))

    def conclude(self, ctx: BlockContext, outputs: Any) -> bool:
        if ctx.inputs is not None:
            self._hidden, self.outputs = self.outputs, None
        self._from_statistics_pass = False
        return False
