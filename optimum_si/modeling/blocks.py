"""Where a model's decoder blocks are, and what lies outside them."""

from __future__ import annotations

from torch import nn

from .architectures import BLOCK_PATTERNS, spec_for

__all__ = ["find_decoder_blocks", "modules_outside", "module_device"]


def module_device(module: nn.Module):
    """The device of the first parameter (or buffer) of `module`; the CPU for a module without tensors."""
    import torch

    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def _get_submodule(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def find_decoder_blocks(model: nn.Module, block_name: str | None = None) -> tuple[str, nn.ModuleList]:
    """The dotted path and the ModuleList of decoder blocks; a clear error if none is found."""
    if block_name is not None:
        candidates = [block_name]
    else:
        spec = spec_for(getattr(getattr(model, "config", None), "model_type", None))
        candidates = ([spec.block_path] if spec else []) + list(BLOCK_PATTERNS)
    for path in candidates:
        blocks = _get_submodule(model, path)
        if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
            return path, blocks
    if block_name is not None:
        raise ValueError(f"block_name={block_name!r} does not name a non-empty nn.ModuleList in {type(model).__name__}.")
    raise ValueError(
        f"Could not find the decoder blocks of {type(model).__name__} (tried {', '.join(candidates)}). "
        "Pass the dotted path of its block list as SIConfig(block_name=...), e.g. block_name='model.layers'."
    )


def modules_outside(root: nn.Module, blocks: nn.Module) -> list[nn.Module]:
    """The largest submodules of `root` that do not contain `blocks` (embeddings, rotary embedding, final norm...)."""
    outside = []
    for child in root.children():
        if child is blocks:
            continue
        if any(m is blocks for m in child.modules()):
            outside.extend(modules_outside(child, blocks))
        else:
            outside.append(child)
    return outside
