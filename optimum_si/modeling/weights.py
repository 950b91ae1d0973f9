"""The one place that writes weights, and the undo log that makes a failed run leave the model untouched."""

from __future__ import annotations

import logging
import math
import tempfile
from typing import BinaryIO, NamedTuple

import torch
from torch import nn

__all__ = ["write_parameter", "write_stored", "UndoLog", "STORAGE_ATTR"]

# Set by `optimum_si.pipeline.sources.offloaded.OffloadedBlocks` on a module while it materialises its
# accelerate-offloaded weights: {tensor name: the stored CPU tensor (inside the hook's weights_map) that really holds
# it}. The undo log reads it, as by the time a failed run is rolled back the module is back on meta and only the stored
# tensor is left to restore.
STORAGE_ATTR = "_optimum_si_storage"

logger = logging.getLogger(__name__)


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


class _Spilled(NamedTuple):
    """Where the undo file holds one original: its bytes at `offset`, and how to read them back as a tensor."""

    offset: int
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class UndoLog:
    """Keeps the original of every tensor before it is first overwritten, to restore them all if the run fails.

    By default (`spill=True`) the originals go to an anonymous temporary file in `directory` (the system's temporary
    folder by default), not to RAM: an in-memory run would otherwise hold a second copy of every pruned weight until
    the end (measured: its peak RSS was 1.4-1.5x the reference loop's). The file has no name on Linux (O_TMPFILE, or
    unlinked at once), so nothing is left behind even if the process is killed; `restore` and `clear` close it. If
    the disk refuses a write, that original and every later one stay in RAM (with a warning) instead of failing a
    run that would have fitted in memory before.
    """

    def __init__(self, enabled: bool = True, spill: bool = True, directory: str | None = None) -> None:
        self.enabled = enabled
        self.spill = spill
        self.directory = directory
        # (module, name, original values or where the file holds them, stored offloaded tensor or None)
        self._saved: list[tuple[nn.Module, str, torch.Tensor | _Spilled, torch.Tensor | None]] = []
        self._keys: set[tuple[int, str]] = set()
        self._file: BinaryIO | None = None
        self._end = 0
        self.memory_bytes = 0  # originals held in RAM
        self.spilled_bytes = 0  # originals written to the undo file

    def record(self, module: nn.Module, name: str) -> None:
        key = (id(module), name)
        if not self.enabled or key in self._keys:
            return
        stored = getattr(module, STORAGE_ATTR, {}).get(name)
        current = getattr(module, name).detach()
        original: torch.Tensor | _Spilled | None = self._write(current) if self.spill else None
        if original is None:
            original = current.to("cpu", copy=True)
            self.memory_bytes += original.nbytes
        self._saved.append((module, name, original, stored))
        self._keys.add(key)

    def _write(self, tensor: torch.Tensor) -> _Spilled | None:
        """Append `tensor`'s bytes to the undo file; None if it has no byte view, or (after a warning, and for the rest
        of the run) if the disk refuses."""
        data = tensor.to("cpu").contiguous()  # no copy for a contiguous CPU tensor: it is written before it changes
        try:
            raw = _as_bytes(data)
        except (RuntimeError, TypeError):  # no plain byte view (a quantized or lazily conjugated tensor): kept in RAM
            return None
        try:
            if self._file is None:
                self._file = tempfile.TemporaryFile(prefix="optimum-si-undo-", dir=self.directory)
            self._file.seek(self._end)
            self._file.write(raw)
        except OSError as err:
            logger.warning("Cannot write the undo copies to a temporary file (%s); keeping them in memory instead.",
                           err)
            self.spill = False
            return None
        spilled = _Spilled(self._end, data.dtype, tuple(data.shape))
        self._end += spilled.nbytes
        self.spilled_bytes += spilled.nbytes
        return spilled

    def _read(self, spilled: _Spilled) -> torch.Tensor:
        assert self._file is not None
        out = torch.empty(spilled.shape, dtype=spilled.dtype)
        self._file.seek(spilled.offset)
        if self._file.readinto(_as_bytes(out)) != spilled.nbytes:
            raise OSError("The undo file is shorter than what was written to it.")
        return out

    @torch.no_grad()
    def restore(self) -> None:
        """Put every recorded tensor back, newest first. A tensor that cannot be read back does not stop the others
        from being restored; the first such error is raised at the end."""
        failure: BaseException | None = None
        for module, name, saved, stored in reversed(self._saved):
            try:
                original = self._read(saved) if isinstance(saved, _Spilled) else saved
                current = getattr(module, name)
                if not current.is_meta:
                    current.copy_(original)
                if stored is not None:  # offloaded: the stored tensor is what the model reads (and saves)
                    stored.copy_(original)
            except Exception as err:  # noqa: BLE001 - keep restoring, report the first failure
                failure = failure or err
        self.clear()
        if failure is not None:
            raise failure

    def clear(self) -> None:
        self._saved.clear()
        self._keys.clear()
        if self._file is not None:
            self._file.close()
            self._file = None
        self._end = self.memory_bytes = self.spilled_bytes = 0


def _as_bytes(tensor: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor, without a copy (numpy, which transformers requires, has no bfloat16, but
    every dtype views as bytes)."""
    return memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
