"""`OffloadedBlocks`: in-memory pruning of a model offloaded to CPU by accelerate hooks (see
`optimum_si.modeling.offload` for where such a model's weights live).

While the walker holds a block:

- `load`: copies the block's stored tensors onto the execution device and swaps its offload hooks for no-op hooks,
  so the walker sees, runs and writes an ordinary module;
- `release`: copies every tensor back into the stored CPU tensor *in place* (the very tensor the hooks read on the
  next forward and `save_pretrained` reads), puts the module back on meta and restores its hooks.

The walker does not know about any of this; only the source differs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from accelerate.hooks import ModelHook
from accelerate.utils import set_module_tensor_to_device
from torch import nn

from ...modeling.offload import OffloadedModule, offloaded_modules, owner_of
from ...modeling.weights import STORAGE_ATTR, write_stored
from .in_memory import InMemoryBlocks

__all__ = ["OffloadedBlocks"]


class OffloadedBlocks(InMemoryBlocks):
    """Decoder blocks offloaded by accelerate hooks, materialised on `device` one at a time (see module docstring).

    Blocks (or parts of blocks) that are not offloaded are handled as by `InMemoryBlocks`.
    """

    def __init__(self, blocks: Sequence[nn.Module], device: torch.device) -> None:
        super().__init__(blocks, device)
        self._parts = [list(offloaded_modules(block).values()) for block in blocks]
        for index, (block, parts) in enumerate(zip(blocks, self._parts)):
            covered = {id(getattr(*owner_of(p.module, name))) for p in parts for name in p.storage}
            missing = [n for n, t in block.named_parameters() if t.is_meta and id(t) not in covered]
            if missing:  # e.g. a hook on an ancestor of the blocks that loads the whole model at once
                raise ValueError(f"Block {index} has meta parameters that no offload hook inside the block holds: "
                                 f"{', '.join(missing[:3])}.")
            on_disk = [n for p in parts for n, t in p.storage.items() if t is None]
            if on_disk:
                raise ValueError(f"Block {index}: {', '.join(on_disk[:3])} are offloaded to disk; stream the "
                                 "checkpoint instead, SIPruner(...).prune('<folder or repo>', save_dir='out/').")

    def load(self, index: int) -> nn.Module:
        done: list[OffloadedModule] = []
        try:
            for part in self._parts[index]:
                done.append(part)
                for name, stored in part.storage.items():
                    # An independent copy even when the execution device is the CPU (where `.to` would alias the
                    # storage): the stored weights then change only in `release`, whatever the device.
                    set_module_tensor_to_device(part.module, name, self.device, value=stored.to(self.device, copy=True),
                                                clear_cache=False)
                    owner, local = owner_of(part.module, name)
                    # Lets the undo log restore the stored tensor after `release` has put the module back on meta.
                    owner.__dict__.setdefault(STORAGE_ATTR, {})[local] = stored
                # Neutralise the hook while the walker holds the block: its pre_forward would overwrite our (pruned)
                # tensors with the stored ones, its post_forward would drop them to meta. `add_hook_to_module`'s
                # forward looks `module._hf_hook` up at every call, so swapping the attribute is enough.
                part.module._hf_hook = ModelHook()
            return super().load(index)
        except BaseException:
            for part in done:  # nothing was written yet: just undo the materialisation
                self._put_back(part, write=False)
            raise

    def release(self, index: int, block: nn.Module) -> None:
        super().release(index, block)
        for part in self._parts[index]:
            self._put_back(part, write=True)

    @staticmethod
    @torch.no_grad()
    def _put_back(part: OffloadedModule, write: bool) -> None:
        for name, stored in part.storage.items():
            owner, local = owner_of(part.module, name)
            tensor = getattr(owner, local)
            if write and not tensor.is_meta:
                write_stored(stored, tensor)
            owner.__dict__.pop(STORAGE_ATTR, None)
            set_module_tensor_to_device(part.module, name, "meta")
        part.module._hf_hook = part.hook
