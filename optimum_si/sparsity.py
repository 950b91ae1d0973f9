"""`sparsity_report`: measured sparsity of a model or a checkpoint folder, per module and overall.

A folder is read without torch (`checkpoint/raw_tensors.py`), so `optimum-si report DIR` starts at once; a model's
weights are read through torch, which it is made of anyway. Both give each matrix as a boolean non-zero array."""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from .checkpoint.raw_tensors import nonzero_matrices

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


def _module_matrices(model: Any) -> Iterator[tuple[str, Any]]:
    """`(name, weight [out, in])` of every Linear, GPT-2 Conv1D and fused expert matrix of a model."""
    from torch import nn

    from .modeling.targets import FUSED_EXPERT_PARAMS

    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            yield f"{name}.weight", module.weight.detach()
        elif type(module).__name__ == "Conv1D":  # GPT-2 stores [in, out]; N:M groups run along the inputs
            yield f"{name}.weight", module.weight.detach().T
        for param_name, param in module.named_parameters(recurse=False):
            if param.dim() == 3 and param_name in FUSED_EXPERT_PARAMS:  # fused MoE experts: one matrix each
                for expert, matrix in enumerate(param.detach()):
                    yield f"{name}.{param_name}.{expert}", matrix


def _nonzeros_of(model_or_dir: Any) -> Iterator[tuple[str, np.ndarray]]:
    if not isinstance(model_or_dir, (str, os.PathLike)):
        for name, weight in _module_matrices(model_or_dir):
            yield name, (weight != 0).cpu().numpy()
        return
    files = _weight_files(os.fspath(model_or_dir))
    if not files:
        raise FileNotFoundError(f"No .safetensors files in {model_or_dir}.")
    for path in files:
        yield from nonzero_matrices(path)  # one matrix at a time: bounded memory


def _follows_nm(nonzero: np.ndarray, n_keep: int, m: int) -> bool:
    """True when every group of `m` consecutive inputs in every row has at most `n_keep` non-zeros."""
    rows, cols = nonzero.shape
    if cols % m:
        return False
    return bool((nonzero.reshape(rows, cols // m, m).sum(-1) <= n_keep).all())


def sparsity_report(model_or_dir) -> dict:
    """Per-module zeros and sparsity, the overall sparsity of the pruned modules, and which N:M patterns hold.

    Accepts an `nn.Module` (its Linear weights) or a folder of safetensors (its 2-D `.weight` tensors, read one at a
    time). Embeddings and the LM head are listed but never count as pruned.
    """
    modules = {}
    for name, nonzero in _nonzeros_of(model_or_dir):
        numel = int(nonzero.size)
        zeros = numel - int(np.count_nonzero(nonzero))
        sparsity = zeros / numel if numel else 0.0
        pruned = sparsity >= PRUNED_THRESHOLD and not any(part in name for part in _DENSE_NAMES)
        entry = {"numel": numel, "zeros": zeros, "sparsity": sparsity, "pruned": pruned}
        if pruned:
            entry["patterns"] = {f"{n}:{m}": _follows_nm(nonzero, n, m) for n, m in _CHECKED_PATTERNS}
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
