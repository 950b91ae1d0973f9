"""`StreamingSource`: the blocks of a safetensors checkpoint, read one at a time onto the execution device (the model
is a skeleton on the meta device), each finished block handed to a `ShardWriter`."""

from __future__ import annotations

import torch
from torch import nn

from ...checkpoint.index import CheckpointIndex
from ...checkpoint.shards import ShardWriter

__all__ = ["StreamingSource"]


def _materialise(module: nn.Module, prefix: str, index: CheckpointIndex, device: torch.device) -> None:
    from accelerate.utils import set_module_tensor_to_device

    params = dict(module.named_parameters(recurse=True))
    values = index.read_params([f"{prefix}{name}" for name in params], device)
    for name, param in params.items():
        set_module_tensor_to_device(module, name, device, value=values.pop(f"{prefix}{name}"), dtype=param.dtype)


def _to_meta(module: nn.Module) -> None:
    from accelerate.utils import set_module_tensor_to_device

    for name, _param in list(module.named_parameters(recurse=True)):
        set_module_tensor_to_device(module, name, "meta")


class StreamingSource:
    """`BlockSource` that reads block i from the source shards and hands the finished block to a `ShardWriter`."""

    def __init__(self, skeleton_blocks: nn.ModuleList, prefix: str, index: CheckpointIndex, device: torch.device,
                 writer: ShardWriter | None, on_block_written=None, finished_index: CheckpointIndex | None = None,
                 finished: int = 0) -> None:
        self.blocks = skeleton_blocks
        self.prefix = prefix
        self.index = index
        self.device = device
        self.writer = writer
        self.on_block_written = on_block_written
        self.finished_index = finished_index  # the output folder's own parts, for blocks done before a restart
        self.finished = finished

    def __len__(self) -> int:
        return len(self.blocks)

    def load(self, index: int) -> nn.Module:
        block = self.blocks[index]
        source = self.finished_index if index < self.finished else self.index
        _materialise(block, f"{self.prefix}.{index}.", source, self.device)
        return block

    def load_dense(self, index: int) -> nn.Module:
        block = self.blocks[index]
        _materialise(block, f"{self.prefix}.{index}.", self.index, self.device)
        return block

    def commit(self, index: int, block: nn.Module) -> None:
        """Write block `index` and record it finished. The walker calls this only once the block is fully pruned;
        `release` (which runs after a fault too) never writes."""
        if index < self.finished or self.writer is None:
            return
        state = {f"{self.prefix}.{index}.{name}": tensor for name, tensor in block.state_dict().items()}
        tensors = {key: self._as_stored(key, tensor) for key, tensor in self.index.stored_keys(state).items()
                   if key in self.index.shapes}
        self.writer.add(tensors)
        self.writer.flush()  # one part per block at least: a restart never loses a finished block
        if self.on_block_written is not None:
            self.on_block_written(index)

    def _as_stored(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` in its source dtype: the source bytes themselves when the run left its values unchanged."""
        dtype = self.index.torch_dtype(key)
        if dtype is None or tensor.dtype == dtype:
            return tensor
        original = self.index.read(key)
        if torch.equal(original.to(tensor.dtype), tensor.detach().cpu()):
            return original
        stored = tensor.detach().cpu().to(dtype)
        return stored + 0.0 if dtype.is_floating_point else stored  # a cast can round a tiny value to -0.0

    def release(self, index: int, block: nn.Module) -> None:
        _to_meta(block)
