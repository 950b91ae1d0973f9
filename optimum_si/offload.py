"""In-memory pruning of a model offloaded to CPU by accelerate hooks.

`accelerate.cpu_offload(model, ...)`, or a `device_map` with "cpu" entries while the main device is a GPU, leaves the
parameters of offloaded modules on `meta`: the real tensors live in the hook's `weights_map` (a `PrefixedDataset`
over a CPU state dict or an `OffloadedWeightsLoader`). Each hooked forward copies them onto the execution device
(pre_forward) and drops the copies again (post_forward), so writing into those copies is lost
(docs/hf-integration.md §5.2). `OffloadedBlocks` is a `BlockSource` that, while the engine holds a block:

- `load`: copies the block's stored tensors onto the execution device and swaps its offload hooks for no-op hooks,
  so the engine sees, runs and writes an ordinary module;
- `release`: copies every tensor back into the stored CPU tensor *in place* (the very tensor the hooks read on the
  next forward and `save_pretrained` reads), puts the module back on meta and restores its hooks.

The engine does not know about any of this; only the source differs. Disk offload (weights re-read from `.dat`
memmaps or from the original safetensors files at every access) cannot be written to and is refused up front.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from accelerate.hooks import AlignDevicesHook, ModelHook, SequentialHook
from accelerate.utils import OffloadedWeightsLoader, PrefixedDataset, set_module_tensor_to_device
from accelerate.utils.modeling import named_module_tensors
from torch import nn

from .engine import InMemoryBlocks
from .weights import STORAGE_ATTR, write_stored

__all__ = ["OffloadedBlocks", "is_offloaded", "offloaded_tensors", "offload_execution_device", "offloaded_state_dict",
           "offload_hooks_above"]


def _offload_hook(module: nn.Module) -> AlignDevicesHook | None:
    """The accelerate hook of `module` that offloads its weights, if any (possibly inside a SequentialHook)."""
    hook = getattr(module, "_hf_hook", None)
    hooks = hook.hooks if isinstance(hook, SequentialHook) else (hook,)
    for candidate in hooks:
        if isinstance(candidate, AlignDevicesHook) and candidate.offload:
            return candidate
    return None


def _stored_tensor(weights_map: Mapping, key: str) -> torch.Tensor | None:
    """The in-memory tensor that `weights_map[key]` returns every time, or None when there is none to write to.

    Only a plain dict, or the `state_dict` part of an `OffloadedWeightsLoader`, hands out the same tensor on every
    access; disk entries (`.dat` memmaps, safetensors files) are read afresh each time, so an in-place write there
    would either be lost or modify the user's files.
    """
    while isinstance(weights_map, PrefixedDataset):  # PrefixedDataset(d, p)[k] is d[p + k]
        key = weights_map.prefix + key
        weights_map = weights_map.dataset
    if isinstance(weights_map, OffloadedWeightsLoader):
        weights_map = weights_map.state_dict
    if not isinstance(weights_map, dict):
        return None
    tensor = weights_map.get(key)
    return tensor if isinstance(tensor, torch.Tensor) and not tensor.is_meta else None


@dataclass
class _OffloadedModule:
    """One module with an offload hook: the tensors that hook onloads (names relative to the module) and where
    each is stored (None: on disk)."""

    module: nn.Module
    hook: AlignDevicesHook
    storage: dict[str, torch.Tensor | None]


def _offloaded_modules(root: nn.Module) -> dict[str, _OffloadedModule]:
    """Every module under `root` (itself included) whose weights an accelerate hook offloads, by qualified name."""
    found = {}
    for prefix, module in root.named_modules():
        hook = _offload_hook(module)
        if hook is None:
            continue
        # Exactly the tensors pre_forward would onload, so that we materialise what a hooked forward would see.
        names = [name for name, _ in named_module_tensors(module, include_buffers=hook.offload_buffers,
                                                          recurse=hook.place_submodules, remove_non_persistent=True)]
        found[prefix] = _OffloadedModule(module, hook, {name: _stored_tensor(hook.weights_map, name) for name in names})
    return found


def is_offloaded(module: nn.Module) -> bool:
    """Whether any weight of `module` (or of a submodule) is offloaded by an accelerate hook."""
    return any(_offload_hook(m) is not None for m in module.modules())


def offloaded_tensors(model: nn.Module) -> dict[str, torch.Tensor | None]:
    """Qualified tensor name -> its stored tensor (what the hook onloads), for every offloaded tensor of `model`;
    None for tensors offloaded to disk (or to a weights_map that is not an in-memory dict)."""
    return {f"{prefix}.{name}" if prefix else name: stored
            for prefix, part in _offloaded_modules(model).items() for name, stored in part.storage.items()}


def offload_hooks_above(model: nn.Module, blocks: nn.Module) -> list[str]:
    """Modules that hold `blocks` (the block list or an ancestor of it) and whose offload hook onloads everything below
    at once (accelerate's `preload_module_classes`). Their forward would load and drop all blocks together, so the
    blocks cannot be handed to the engine one at a time."""
    return [name for name, m in model.named_modules() if (hook := _offload_hook(m)) is not None
            and hook.place_submodules and any(x is blocks for x in m.modules())]


def offload_execution_device(module: nn.Module) -> torch.device | None:
    """The device the offload hooks of `module` compute on (None if nothing in it is offloaded)."""
    for m in module.modules():
        hook = _offload_hook(m)
        if hook is not None and hook.execution_device is not None:
            return torch.device(hook.execution_device)
    return None


def offloaded_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model.state_dict()` with each offloaded (meta) entry replaced by its stored tensor.

    `save_pretrained` only looks inside the hooks when `model.hf_device_map` mentions "cpu" or "disk"; a model
    offloaded with `accelerate.cpu_offload` has no such map, so saving it needs this as `state_dict=`.
    """
    stored = offloaded_tensors(model)
    state = model.state_dict()
    for name, tensor in state.items():
        if tensor.is_meta:
            if stored.get(name) is None:
                raise ValueError(f"{name} is on the meta device and has no in-memory offloaded copy to read.")
            state[name] = stored[name]
    return state


def _owner(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, local = name.rpartition(".")
    return (module.get_submodule(path) if path else module), local


class OffloadedBlocks(InMemoryBlocks):
    """Decoder blocks offloaded by accelerate hooks, materialised on `device` one at a time (see module docstring).

    Blocks (or parts of blocks) that are not offloaded are handled as by `InMemoryBlocks`.
    """

    def __init__(self, blocks: Sequence[nn.Module], device: torch.device) -> None:
        super().__init__(blocks, device)
        self._parts = [list(_offloaded_modules(block).values()) for block in blocks]
        for index, (block, parts) in enumerate(zip(blocks, self._parts)):
            covered = {id(getattr(*_owner(p.module, name))) for p in parts for name in p.storage}
            missing = [n for n, t in block.named_parameters() if t.is_meta and id(t) not in covered]
            if missing:  # e.g. a hook on an ancestor of the blocks that loads the whole model at once
                raise ValueError(f"Block {index} has meta parameters that no offload hook inside the block holds: "
                                 f"{', '.join(missing[:3])}.")
            on_disk = [n for p in parts for n, t in p.storage.items() if t is None]
            if on_disk:
                raise ValueError(f"Block {index}: {', '.join(on_disk[:3])} are offloaded to disk; stream the "
                                 "checkpoint instead, SIPruner(...).prune('<folder or repo>', save_dir='out/').")

    def load(self, index: int) -> nn.Module:
        done: list[_OffloadedModule] = []
        try:
            for part in self._parts[index]:
                done.append(part)
                for name, stored in part.storage.items():
                    # An independent copy even when the execution device is the CPU (where `.to` would alias the
                    # storage): the stored weights then change only in `release`, whatever the device.
                    set_module_tensor_to_device(part.module, name, self.device, value=stored.to(self.device, copy=True),
                                                clear_cache=False)
                    owner, local = _owner(part.module, name)
                    # Lets the undo log restore the stored tensor after `release` has put the module back on meta.
                    owner.__dict__.setdefault(STORAGE_ATTR, {})[local] = stored
                # Neutralise the hook while the engine holds the block: its pre_forward would overwrite our (pruned)
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
    def _put_back(part: _OffloadedModule, write: bool) -> None:
        for name, stored in part.storage.items():
            owner, local = _owner(part.module, name)
            tensor = getattr(owner, local)
            if write and not tensor.is_meta:
                write_stored(stored, tensor)
            owner.__dict__.pop(STORAGE_ATTR, None)
            set_module_tensor_to_device(part.module, name, "meta")
        part.module._hf_hook = part.hook
