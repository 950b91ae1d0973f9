"""Writing a checkpoint block by block: numbered safetensors parts, renamed to the standard shard names and indexed
once the run is complete."""

from __future__ import annotations

import json
import os
import re

import torch

from .files import INDEX_NAME
from .folders import inside, sync_file

__all__ = ["ShardWriter", "parse_size", "shard_name", "PART_PATTERN"]

PART_PATTERN = re.compile(r"part-\d{5}\.safetensors")


def parse_size(value: str | int) -> int:
    if isinstance(value, int):
        return value
    text = value.strip().upper()
    for unit, factor in (("GIB", 2**30), ("MIB", 2**20), ("KIB", 2**10), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def shard_name(number: int, count: int) -> str:
    return "model.safetensors" if count == 1 else f"model-{number:05d}-of-{count:05d}.safetensors"


class ShardWriter:
    """Appends tensors to numbered safetensors shards, flushing at `max_shard_size`; writes the index at the end."""

    def __init__(self, folder: str, max_shard_size: str | int, done: list[dict] | None = None) -> None:
        self.folder = folder
        self.max_bytes = parse_size(max_shard_size)
        self.shards: list[dict] = list(done or [])  # {"file": tmp name, "keys": [...], "bytes": n}
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        for key, tensor in tensors.items():
            size = tensor.numel() * tensor.element_size()
            if self._pending and self._pending_bytes + size > self.max_bytes:
                self.flush()
            self._pending[key] = tensor.detach().to("cpu").contiguous()
            self._pending_bytes += size

    def flush(self) -> None:
        from safetensors.torch import save_file

        if not self._pending:
            return
        name = f"part-{len(self.shards):05d}.safetensors"
        tmp = os.path.join(self.folder, name + ".tmp")
        save_file(self._pending, tmp, metadata={"format": "pt"})
        sync_file(tmp)  # on the disk before the progress file can name it (write_progress syncs the folder)
        os.replace(tmp, os.path.join(self.folder, name))
        self.shards.append({"file": name, "keys": list(self._pending), "bytes": self._pending_bytes})
        self._pending, self._pending_bytes = {}, 0

    def finish(self) -> None:
        """Rename the parts to the standard `model-0000i-of-0000N.safetensors` names and write the index. Can be
        repeated after an interruption: a part already renamed is skipped, and parts no progress lists are dropped."""
        self.flush()
        count = len(self.shards)
        weight_map, total = {}, 0
        for i, shard in enumerate(self.shards, start=1):
            final = os.path.join(self.folder, shard_name(i, count))
            part = inside(self.folder, shard["file"], "The progress file")
            if os.path.isfile(part):
                os.replace(part, final)
            elif not os.path.isfile(final):
                raise FileNotFoundError(f"{part} is missing, so the run cannot be finished; pass overwrite=True to "
                                        "start over.")
            weight_map.update({key: os.path.basename(final) for key in shard["keys"]})
            total += shard["bytes"]
        for name in os.listdir(self.folder):  # parts of a block that failed, or was killed, before it was recorded
            if PART_PATTERN.fullmatch(name) or (name.startswith("part-") and name.endswith(".tmp")):
                os.remove(os.path.join(self.folder, name))
        if count > 1:
            tmp = os.path.join(self.folder, INDEX_NAME + ".tmp")
            with open(tmp, "w", encoding="utf-8") as handle:
                json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, handle, indent=2)
            os.replace(tmp, os.path.join(self.folder, INDEX_NAME))
