"""Models offloaded to CPU by accelerate hooks: where their weights really are.

`accelerate.cpu_offload(model, ...)`, or a `device_map` with "cpu" entries while the main device is a GPU, leaves the
parameters of offloaded modules on `meta`: the real tensors live in the hook's `weights_map` (a `PrefixedDataset`
over a CPU state dict or an `OffloadedWeightsLoader`). Each hooked forward copies them onto the execution device
(pre_forward) and drops the copies again (post_forward), so writing into those copies is lost
(docs/hf-integration.md §5.2). These helpers find the stored tensors, the hooks and their device; the block source
that prunes such a model in place is `optimum_si.pipeline.sources.offloaded.OffloadedBlocks`. Disk offload (weights
re-read from `.dat` memmaps or from the original safetensors files at every access) cannot be written to.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from accelerate.hooks import AlignDevicesHook, SequentialHook
from accelerate.utils import OffloadedWeightsLoader, PrefixedDataset
from accelerate.utils.modeling import named_module_tensors
from torch import nn

__all__ = ["OffloadedModule", "offloaded_modules", "owner_of", "is_offloaded", "offloaded_tensors",
           "offload_execution_device", "offloaded_state_dict", "offload_hooks_above"]


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
class OffloadedModule:
    """One module with an offload hook: the tensors that hook onloads (names relative to the module) and where
    each is stored (None: on disk)."""

    module: nn.Module
    hook: AlignDevicesHook
    storage: dict[str, torch.Tensor | None]


def offloaded_modules(root: nn.Module) -> dict[str, OffloadedModule]:
    """Every module under `root` (itself included) whose weights an accelerate hook offloads, by qualified name."""
    found = {}
    for prefix, module in root.named_modules():
        hook = _offload_hook(module)
        if hook is None:
            continue
        # Exactly the tensors pre_forward would onload, so that we materialise what a hooked forward would see.
        names = [name for name, _ in named_module_tensors(module, include_buffers=hook.offload_buffers,
                                                          recurse=hook.place_submodules, remove_non_persistent=True)]
        found[prefix] = OffloadedModule(module, hook, {name: _stored_tensor(hook.weights_map, name) for name in names})
    return found


def is_offloaded(module: nn.Module) -> bool:
    """Whether any weight of `module` (or of a submodule) is offloaded by an accelerate hook."""
    return any(_offload_hook(m) is not None for m in module.modules())


def offloaded_tensors(model: nn.Module) -> dict[str, torch.Tensor | None]:
    """Qualified tensor name -> its stored tensor (what the hook onloads), for every offloaded tensor of `model`;
    None for tensors offloaded to disk (or to a weights_map that is not an in-memory dict)."""
    return {f"{prefix}.{name}" if prefix else name: stored
            for prefix, part in offloaded_modules(model).items() for name, stored in part.storage.items()}


def offload_hooks_above(model: nn.Module, blocks: nn.Module) -> list[str]:
    """Modules that hold `blocks` (the block list or an ancestor of it) and whose offload hook onloads everything below
    at once (accelerate's `preload_module_classes`). Their forward would load and drop all blocks together, so the
    blocks cannot be handed to the walker one at a time."""
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


def owner_of(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, local = name.rpartition(".")
    return (module.get_submodule(path) if path else module), local
