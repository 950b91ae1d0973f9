"""Checks of the run option `device` (`RunOptions`) and of the other places a run will use, made before any weight is touched.

`validate_device` checks the spelling when a config is built (no torch import: the CLI checks its arguments with it
before loading anything); `check_runtime` checks, at the start of a prune, that the device exists on this machine
and that the activation folder can be written.
"""

from __future__ import annotations

import os
import re
import tempfile
from typing import Any

__all__ = ["validate_device", "check_device_available", "check_runtime", "check_bfloat16"]

# Device types a block can execute on. "meta" has no storage: pruning "there" would replace the weights with empty
# tensors that the undo log cannot bring back, so it is refused with its own message.
_DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu", "hpu", "npu", "mtia")
_DEVICE_PATTERN = re.compile(rf"^({'|'.join(_DEVICE_TYPES)})(:(\d+))?$")
_ACCELERATOR_NAMES = {"cuda": "CUDA", "mps": "MPS (Apple GPU)", "xpu": "XPU (Intel GPU)", "hpu": "HPU (Gaudi)",
                      "npu": "NPU (Ascend)", "mtia": "MTIA"}


def validate_device(device: Any, name: str = "device") -> str | None:
    """The device as a normalised string ('cuda:0', 'cpu', ...) or None; ValueError for 'meta' and unknown names."""
    if device is None:
        return None
    text = str(device).strip().lower() if not isinstance(device, bool) else ""
    if isinstance(device, int) and not isinstance(device, bool):
        text = f"cuda:{device}"  # torch's convention for a bare index
    if text.startswith("meta"):
        raise ValueError(
            f"{name}={device!r}: the meta device holds no data, so pruning there would destroy the weights; leave "
            f"{name} unset (the blocks' own device) or use 'cpu' or 'cuda'."
        )
    if not _DEVICE_PATTERN.match(text):
        raise ValueError(
            f"{name}={device!r} is not a device; use 'cpu', 'cuda', 'cuda:N', 'mps' or 'xpu', or leave it unset."
        )
    return text


def check_device_available(device: Any, name: str = "device") -> None:
    """ValueError when `device` names an accelerator (or an index of one) that this machine does not have."""
    text = validate_device(device, name)
    if text is None or text == "cpu":
        return
    import torch

    kind, _, index = text.partition(":")
    backend = getattr(torch.backends, kind, None) if kind == "mps" else getattr(torch, kind, None)
    is_available = getattr(backend, "is_available", None)
    label = _ACCELERATOR_NAMES.get(kind, kind)
    if is_available is None or not is_available():
        raise ValueError(f"{name}={device!r}: there is no {label} device here; leave `{name}` unset or use 'cpu'.")
    count = getattr(backend, "device_count", None)
    if index and count is not None and int(index) >= count():
        raise ValueError(
            f"{name}={device!r}: this machine has {count()} {label} device(s), numbered from 0; pick one of them."
        )


def check_runtime(options: Any) -> None:
    """Everything about where a run executes and writes (`RunOptions`) that can be checked before a weight is
    touched."""
    check_device_available(options.device)
    folder = options.activation_dir
    if folder is not None and os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"activation_dir={folder!r} is a file, not a folder; name a folder for the activations.")
    if options.activation_storage == "disk":
        folder = folder or tempfile.gettempdir()
        existing = os.path.abspath(folder)
        while not os.path.exists(existing):  # the run creates the missing part: its nearest existing parent is written
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
            raise ValueError(
                f"activation_dir={folder!r} cannot be written ({existing} is not a writable folder); name a writable "
                "folder with room for the calibration activations."
            )


def check_bfloat16(device: Any, field: str) -> None:
    """ValueError when `field` asks for bfloat16 training on a GPU without bf16 support (autocast would silently
    fall back to float32 there); CPU autocast always has bf16."""
    import torch

    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"{field}='bfloat16': the GPU {device} has no bfloat16 support; use precision='float32'.")
