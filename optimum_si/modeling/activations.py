"""Where the calibration activations live between two blocks: on the execution device, in CPU memory, or on disk.

With 128 x 2048 calibration tokens, one activation stream of a 70B model (hidden size 8192) is 4 GiB in bf16 and
Sparsity Induction keeps two (the pruned stream and the dense teacher), plus the dense targets. On a GPU those
would compete with the block's weights and working memory, so by default they stay in pinned CPU memory and move
to the device one batch at a time; `"disk"` writes each batch to a file for calibration sets larger than RAM.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator, Sequence

import torch

__all__ = ["ActivationStore", "resolve_storage"]


def resolve_storage(storage: str, device: torch.device) -> str:
    """The concrete storage for `SIConfig(activation_storage=...)`: "auto" keeps activations on the device when it
    is the CPU, and in (pinned) CPU memory otherwise."""
    if storage != "auto":
        return storage
    return "device" if device.type == "cpu" else "cpu"


class ActivationStore(Sequence[torch.Tensor]):
    """A list of activation tensors kept in `storage` ("device", "cpu" or "disk") and handed out on `device`.

    Indexing returns the tensor on the execution device; `append` takes it from there. `new()` makes an empty store
    with the same placement (the outputs of a block). Disk files are deleted by `clear()`, or when the store is
    garbage-collected.
    """

    def __init__(self, storage: str, device: torch.device, directory: str | None = None) -> None:
        if storage not in ("device", "cpu", "disk"):
            raise ValueError(f"Unknown activation storage {storage!r}; use 'device', 'cpu' or 'disk'.")
        self.storage = storage
        self.device = torch.device(device)
        self.directory = directory
        self._items: list[torch.Tensor | str] = []
        self.shapes: list[torch.Size] = []
        self._pin = storage == "cpu" and self.device.type == "cuda"

    def new(self) -> ActivationStore:
        return ActivationStore(self.storage, self.device, self.directory)

    def append(self, tensor: torch.Tensor) -> None:
        tensor = tensor.detach()
        self.shapes.append(tensor.shape)
        if self.storage == "device":
            self._items.append(tensor)
        elif self.storage == "cpu":
            cpu = tensor.to("cpu", copy=tensor.device.type == "cpu")
            self._items.append(cpu.pin_memory() if self._pin else cpu)
        else:
            directory = self.directory or tempfile.gettempdir()
            os.makedirs(directory, exist_ok=True)
            path = os.path.join(directory, f"optimum-si-activations-{uuid.uuid4().hex}.pt")
            torch.save(tensor.to("cpu").contiguous(), path)
            self._items.append(path)

    def __getitem__(self, index: int) -> torch.Tensor:  # type: ignore[override]
        item = self._items[index]
        if isinstance(item, str):
            return torch.load(item, map_location=self.device, weights_only=True)
        return item.to(self.device, non_blocking=self._pin)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for index in range(len(self._items)):
            yield self[index]

    def clear(self) -> None:
        for item in self._items:
            if isinstance(item, str) and os.path.exists(item):
                os.remove(item)
        self._items.clear()
        self.shapes.clear()

    def __del__(self) -> None:
        try:
            self.clear()
        except Exception:  # interpreter shutdown: nothing useful left to do
            pass
