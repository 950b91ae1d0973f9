"""Optional: turn 2:4-pruned Linears into PyTorch semi-structured sparse tensors for faster GPU inference.

`torch.sparse.to_sparse_semi_structured` (cuSPARSELt / CUTLASS kernels) needs an NVIDIA GPU with compute capability
8.0 or newer and fp16/bf16 weights. The speed-up is typically 1.1-1.3x end to end on large batches, often none at
batch-1 decode (see pruning-reference.md §6). The converted model is for inference only; save the dense checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn

from .methods.masks import follows_nm

__all__ = ["to_semi_structured"]


def to_semi_structured(model: nn.Module, modules: list[str] | None = None) -> list[str]:
    """Convert every 2:4 Linear of `model` (or the named `modules`) in place; returns the converted names.

    Raises `ValueError` when a named module does not follow 2:4, and `RuntimeError` without a supported GPU.
    """
    candidates = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    if modules is not None:
        missing = sorted(set(modules) - set(candidates))
        if missing:
            raise ValueError(f"Not Linear modules of this model: {', '.join(missing)}.")
        candidates = {name: candidates[name] for name in modules}
    chosen = {name: m for name, m in candidates.items() if follows_nm(m.weight.detach(), 2, 4)}
    if modules is not None and len(chosen) != len(candidates):
        bad = sorted(set(candidates) - set(chosen))
        raise ValueError(f"These modules are not 2:4 sparse: {', '.join(bad[:5])}; prune with mask_structure='2:4'.")
    if not chosen:
        raise ValueError("No Linear of this model follows the 2:4 pattern; prune with mask_structure='2:4' first.")
    if not torch.cuda.is_available():
        raise RuntimeError(
            "Semi-structured (2:4) sparse kernels need an NVIDIA GPU with compute capability >= 8.0; none is available. "
            "On CPU keep the dense checkpoint: it is already the fastest form there."
        )
    if torch.cuda.get_device_capability() < (8, 0):
        raise RuntimeError("Semi-structured sparse kernels need compute capability >= 8.0 (Ampere or newer).")
    from torch.sparse import to_sparse_semi_structured

    for name, linear in chosen.items():
        if linear.weight.dtype not in (torch.float16, torch.bfloat16) or linear.weight.device.type != "cuda":
            raise ValueError(f"{name}: move the model to CUDA in float16/bfloat16 before converting.")
        linear.weight = nn.Parameter(to_sparse_semi_structured(linear.weight.detach()), requires_grad=False)
    return sorted(chosen)
