"""What every rank of a data-parallel run must agree on before any weight is touched: the run fingerprint (the recipe
field by field and the method's class, the calibration token ids, the source's identity), the world layout (the kind
of run, the execution device's kind, the library versions) and, when the run writes a folder, the output. A
disagreement stops every rank with the fields and the ranks named (`distributed.agree`); one process checks nothing.

A rank given another recipe, model, source folder, calibration set or output folder would otherwise compute with
the others' reduced statistics and its own inputs, and rank 0 alone would write (and record) its own recipe."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import nn

from .. import distributed
from ..version import version_stamp
from .setup import RunSetup

__all__ = ["agree_on_run", "model_identity"]

# Elements of each tensor that the in-memory identity reads (evenly spaced): enough to tell two checkpoints apart,
# cheap for any model size.
_SAMPLE = 1024


def agree_on_run(run: RunSetup, fingerprint: dict[str, Any], kind: str, output: dict[str, Any] | None = None) -> None:
    """Stop every rank unless all hold the same run: `fingerprint` is `checkpoint.progress.run_fingerprint`'s
    (recipe, calibration, source), `kind` what the run does, `output` what it writes where."""
    if distributed.active() is None:
        return
    method = run.config.pruning_method
    fields: dict[str, Any] = {f"recipe field {name!r}": value for name, value in fingerprint["recipe"].items()}
    fields["the method's code"] = f"{type(method).__module__}.{type(method).__qualname__}"
    fields["the calibration token ids"] = fingerprint["calibration"]
    fields["the source model"] = fingerprint["source"]
    fields["the kind of run"] = kind
    fields["the execution device"] = run.device.type
    fields["the library versions"] = version_stamp()
    for name, value in (output or {}).items():
        fields[f"the output's {name}"] = value
    distributed.agree(fields)


def model_identity(model: nn.Module) -> str:
    """A digest of a model in memory: its config (less where it was loaded from), and each parameter's and buffer's
    name, dtype, shape and evenly spaced elements."""
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        public = {k: v for k, v in config.to_dict().items() if not k.startswith("_") and k != "transformers_version"}
        digest.update(json.dumps(public, sort_keys=True, default=repr).encode())
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    for name in sorted(tensors):
        tensor = tensors[name].detach()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        if tensor.is_meta or not tensor.numel():
            continue
        flat = tensor.reshape(-1)
        sample = flat[::max(1, flat.numel() // _SAMPLE)][:_SAMPLE].contiguous().cpu()
        digest.update(sample.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
