"""The one place that writes weights, and the undo log that makes a failed run leave the model untouched."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["write_parameter", "UndoLog"]


@torch.no_grad()
def write_parameter(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Replace `module.<name>` in place with `value`, cast to the parameter's dtype and device.

    Refuses non-finite values (nothing is written), and turns -0.0 into +0.0: some sparse runtimes
    mis-handle negative zeros.
    """
    param = getattr(module, name)
    if value.shape != param.shape:
        raise ValueError(f"Refusing to write a {tuple(value.shape)} tensor into {name} of shape {tuple(param.shape)}.")
    if not bool(torch.isfinite(value).all()):
        raise FloatingPointError(f"Refusing to write non-finite values into {type(module).__name__}.{name}.")
    value = value.to(device=param.device, dtype=param.dtype)
    param.copy_(value + 0.0)  # x + 0.0 == x for every x except -0.0, which becomes +0.0


class UndoLog:
    """Keeps CPU copies of tensors before they are first overwritten, to restore them if the run fails."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._saved: list[tuple[nn.Module, str, torch.Tensor]] = []
        self._keys: set[tuple[int, str]] = set()

    def record(self, module: nn.Module, name: str) -> None:
        key = (id(module), name)
        if not self.enabled or key in self._keys:
            return
        self._keys.add(key)
        self._saved.append((module, name, getattr(module, name).detach().to("cpu", copy=True)))

    @torch.no_grad()
    def restore(self) -> None:
        for module, name, original in reversed(self._saved):
            getattr(module, name).copy_(original)
        self.clear()

    def clear(self) -> None:
        self._saved.clear()
        self._keys.clear()
