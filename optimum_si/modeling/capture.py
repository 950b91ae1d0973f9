"""The calibration stream through the blocks: capture the first decoder block's inputs, and run a block on them.

`capture_block_inputs` runs the model on each batch of token ids up to the first block (a forward pre-hook raises a
dedicated exception that carries the block's arguments, caught here), so the walk can feed one block at a time;
`run_block` forwards every captured batch through a block and keeps its outputs the same way.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .activations import ActivationStore
from .blocks import module_device, modules_outside

__all__ = ["BlockInputs", "capture_block_inputs", "run_block", "block_output", "StopForward"]


class StopForward(Exception):
    """Raised by a statistics hook once every hooked Linear has seen its input, to skip the rest of the block."""


class _BlockInputsCaptured(Exception):
    def __init__(self, args: tuple, kwargs: dict) -> None:
        super().__init__("block inputs captured")
        self.args = args
        self.kwargs = kwargs


@dataclass
class BlockInputs:
    """Hidden states entering the current block, one tensor per calibration batch, and the keyword arguments
    (attention mask, rotary embeddings, ...) replayed for every block, keyed by batch size."""

    hidden: ActivationStore | list[torch.Tensor]
    kwargs: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        shapes = self.hidden.shapes if isinstance(self.hidden, ActivationStore) else [h.shape for h in self.hidden]
        return sum(shape[0] * shape[1] for shape in shapes)


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module, blocks: nn.ModuleList, batches: Sequence[torch.Tensor], device: torch.device,
    storage: str = "device", directory: str | None = None,
) -> BlockInputs:
    """Run the model on each batch of token ids up to the first block, recording its inputs and kwargs.

    The hidden states are kept in an `ActivationStore` with the given `storage` ("device", "cpu" or "disk")."""
    moved = []
    for module in modules_outside(model, blocks):
        home = module_device(module)
        if home != device and home.type != "meta":  # meta: offloaded by accelerate, its hooks onload it
            moved.append((module, home))
            module.to(device)

    def stop(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        raise _BlockInputsCaptured(args, kwargs)

    inputs = BlockInputs(hidden=ActivationStore(storage, device, directory))
    handle = blocks[0].register_forward_pre_hook(stop, with_kwargs=True)
    try:
        for batch in batches:
            try:
                model(input_ids=batch.to(device), use_cache=False)
            except _BlockInputsCaptured as captured:
                kwargs = dict(captured.kwargs)
                hidden = captured.args[0] if captured.args else kwargs.pop("hidden_states")
                if len(captured.args) > 1:  # GPT-2 passes cache and mask positionally: replay them by name
                    kwargs.update(_positional_as_keywords(blocks[0], captured.args, kwargs))
                inputs.hidden.append(hidden.detach())
                inputs.kwargs.setdefault(hidden.shape[0], kwargs)
            else:
                raise RuntimeError(
                    "The forward pass finished without reaching the first decoder block; check SIConfig(block_name=...)."
                )
    finally:
        handle.remove()
        for module, home in moved:
            module.to(home)
    return inputs


def _positional_as_keywords(block: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The block's positional arguments after the hidden states, named after its forward's parameters."""
    names = [name for name, p in inspect.signature(block.forward).parameters.items()
             if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    named = dict(zip(names[1:], args[1:]))
    if len(args) > len(names) or set(named) & set(kwargs):
        raise RuntimeError(
            f"{type(block).__name__} received {len(args)} positional arguments that cannot be named from its forward "
            "signature; only the hidden states are supported positionally."
        ) from None
    return named


def block_output(output: Any) -> torch.Tensor:
    """The hidden states of a block's output (blocks return a tensor or a tuple led by it)."""
    return output[0] if isinstance(output, (tuple, list)) else output


@torch.no_grad()
def run_block(block: nn.Module, inputs: BlockInputs, collector: Any = None):
    """Forward every batch through `block`; the outputs are stored like the inputs. With a statistics collector
    (`optimum_si.observers.stats.InputStatsCollector`), passes may stop early (no outputs kept for them)."""
    outputs = inputs.hidden.new() if isinstance(inputs.hidden, ActivationStore) else []
    for hidden in inputs.hidden:
        kwargs = inputs.kwargs[hidden.shape[0]]
        try:
            outputs.append(block_output(block(hidden, **kwargs)))
        except StopForward:
            pass
        finally:
            if collector is not None:
                collector.end_pass()
    return outputs
