"""`sparsity_report`: measured sparsity of a model or a checkpoint folder, per module and overall."""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator

import torch
from torch import nn

from .methods.masks import follows_nm

__all__ = ["sparsity_report"]

# Below this fraction of zeros a matrix is taken as dense (trained weights have a few exact zeros by chance).
PRUNED_THRESHOLD = 0.01
_CHECKED_PATTERNS = ((2, 4), (4, 8))
_DENSE_NAMES = ("embed", "lm_head", "wte", "wpe")


def _weight_files(folder: str) -> list[str]:
    """The checkpoint's own weight files: the shards its index names (each must lie inside the folder), or
    `model.safetensors`; other `*.safetensors` files beside them (e.g. an adapter) are not part of the model. A folder
    with neither: every `*.safetensors` file in it."""
    from .checkpoint.folders import inside

    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as handle:
                names = sorted(set(json.load(handle)["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
            raise ValueError(f"{index} is corrupted ({err}).") from err
        return [inside(folder, name, index) for name in names]
    if os.path.isfile(os.path.join(folder, "model.safetensors")):
        return [os.path.join(folder, "model.safetensors")]
    return sorted(glob.glob(os.path.join(folder, "*.safetensors")))


def _tensors_of(model_or_dir) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(model_or_dir, nn.Module):
        from .modeling.targets import FUSED_EXPERT_PARAMS

        for name, module in model_or_dir.named_modules():
            if isinstance(module, nn.Linear):
                yield f"{name}.weight", module.weight.detach()
            elif type(module).__name__ == "Conv1D":  # GPT-2 stores [in, out]; N:M groups run along the inputs
                yield f"{name}.weight", module.weight.detach().T
            for param_name, param in module.named_parameters(recurse=False):
                if param.dim() == 3 and param_name in FUSED_EXPERT_PARAMS:  # fused MoE experts: one matrix each
                    for expert, matrix in enumerate(param.detach()):
                        yield f"{name}.{param_name}.{expert}", matrix
        return
    from safetensors import safe_open

    files = _weight_files(os.fspath(model_or_dir))
    if not files:
        raise FileNotFoundError(f"No .safetensors files in {model_or_dir}.")
    for path in files:
        with safe_open(path, framework="pt") as handle:
            for key in handle.keys():
                if key.endswith(".weight") and len(handle.get_slice(key).get_shape()) == 2:
                    yield key, handle.get_tensor(key)  # one tensor at a time: bounded memory


def sparsity_report(model_or_dir) -> dict:
    """Per-module zeros and sparsity, the overall sparsity of the pruned modules, and which N:M patterns hold.

    Accepts an `nn.Module` (its Linear weights) or a folder of safetensors (its 2-D `.weight` tensors, read one at a
    time). Embeddings and the LM head are listed but never count as pruned.
    """
    modules = {}
    for name, weight in _tensors_of(model_or_dir):
        zeros = int((weight == 0).sum())
        sparsity = zeros / weight.numel()
        pruned = sparsity >= PRUNED_THRESHOLD and not any(part in name for part in _DENSE_NAMES)
        entry = {"numel": weight.numel(), "zeros": zeros, "sparsity": sparsity, "pruned": pruned}
        if pruned:
            entry["patterns"] = {f"{n}:{m}": follows_nm(weight, n, m) for n, m in _CHECKED_PATTERNS}
        modules[name] = entry
    pruned = [e for e in modules.values() if e["pruned"]]
    numel = sum(e["numel"] for e in pruned)
    return {
        "modules": modules,
        "pruned_modules": len(pruned),
        "sparsity": sum(e["zeros"] for e in pruned) / numel if numel else 0.0,
        "patterns": {f"{n}:{m}": bool(pruned) and all(e["patterns"][f"{n}:{m}"] for e in pruned)
                     for n, m in _CHECKED_PATTERNS},
    }
