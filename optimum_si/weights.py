"""The one place that writes weights, and the undo log that makes a failed run leave the model untouched."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["write_parameter", "write_stored", "UndoLog", "STORAGE_ATTR"]

# Set by `optimum_si.offload.OffloadedBlocks` on a module while it materialises its accelerate-offloaded weights:
# {tensor name: the stored CPU tensor (inside the hook's weights_map) that really holds it}. The undo log reads it, as
# by the time a failed run is rolled back the module is back on meta and only the stored tensor is left to restore.
STORAGE_ATTR = "_optimum_si_storage"


@torch.no_grad()
def write_parameter(module: nn.Module, name: str, value: torch.Tensor, index: tuple | None = None) -> None:
    """Replace `module.<name>` (or its part `module.<name>[index]`, e.g. one expert of a fused 3-D parameter) in
    place with `value`, cast to the parameter's dtype and device.

    Refuses non-finite values (nothing is written), and turns -0.0 into +0.0: some sparse runtimes
    mis-handle negative zeros.
    """
    param = getattr(module, name)
    if index is not None:
        param = param[index]
    if value.shape != param.shape:
        raise ValueError(f"Refusing to write a {tuple(value.shape)} tensor into {name} of shape {tuple(param.shape)}.")
    if not bool(torch.isfinite(value).all()):
        raise FloatingPointError(f"Refusing to write non-finite values into {type(module).__name__}.{name}.")
    value = value.to(device=param.device, dtype=param.dtype)
    param.copy_(value + 0.0)  # x + 0.0 == x for every x except -0.0, which becomes +0.0


@torch.no_grad()
def write_stored(stored: torch.Tensor, value: torch.Tensor) -> None:
    """Copy a materialised tensor back into the offloaded tensor it was loaded from, in place (its dtype kept).

    Every change to `value` already went through `write_parameter` (finite, +0.0 zeros), and untouched tensors must
    come back bit for bit, so no finiteness check or zero rewrite here; only when a cast to the stored dtype is needed
    can a tiny negative value round to -0.0, and that is turned into +0.0.
    """
    if value.shape != stored.shape:
        raise ValueError(f"Refusing to write a {tuple(value.shape)} tensor into a stored {tuple(stored.shape)} tensor.")
    if value.dtype != stored.dtype:
        value = value.to(stored.dtype) + 0.0
    stored.copy_(value)


class UndoLog:
    """Keeps CPU copies of tensors before they are first overwritten, to restore them if the run fails."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        # (module, name, original values, stored offloaded tensor or None)
        self._saved: list[tuple[nn.Module, str, torch.Tensor, torch.Tensor | None]] = []
        self._keys: set[tuple[int, str]] = set()

    def record(self, module: nn.Module, name: str) -> None:
        key = (id(module), name)
        if not self.enabled or key in self._keys:
            return
        self._keys.add(key)
        stored = getattr(module, STORAGE_ATTR, {}).get(name)
        self._saved.append((module, name, getattr(module, name).detach().to("cpu", copy=True), stored))

    @torch.no_grad()
    def restore(self) -> None:
        for module, name, original, stored in reversed(self._saved):
            current = getattr(module, name)
            if not current.is_meta:
                current.copy_(original)
            if stored is not None:  # offloaded: the stored tensor is what the model reads (and saves)
                stored.copy_(original)
        self.clear()

    def clear(self) -> None:
        self._saved.clear()
        self._keys.clear()
