"""Writing a checkpoint block by block: numbered safetensors parts (at least one per block, so that a finished block is
on the disk at once), packed at the end into shards of at most `max_shard_size` with the standard names and index,
as `save_pretrained` shards."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from typing import Any

import torch

from .files import INDEX_NAME
from .folders import sync_dir, sync_file
from .links import resolved

__all__ = ["ShardWriter", "parse_size", "shard_name", "PART_PATTERN", "packed_away"]

PART_PATTERN = re.compile(r"part-\d{5}\.safetensors")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]I?B|B)?")
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30,
          "TIB": 2**40}
# Bytes per element of the safetensors dtypes (a shard keeps the larger ones first, so every tensor stays aligned).
_ITEMSIZE = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2}
_COPY_CHUNK = 64 << 20


def parse_size(value: str | int) -> int:
    """Bytes of a shard size: an integer, or a number with a unit (5GB, 500MB, 2GiB, 1.5TB); one clear error naming
    `max_shard_size` otherwise."""
    size: float = math.nan
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str):
        match = _SIZE.fullmatch(value.strip().upper())
        if match:
            size = float(match[1]) * _UNITS[match[2] or "B"]
    if not math.isfinite(size) or size < 1:
        raise ValueError(f"max_shard_size={value!r} is not a size; use e.g. '5GB', '500MB', '2GiB' or a number of "
                         "bytes.")
    return int(size)


def shard_name(number: int, count: int) -> str:
    return "model.safetensors" if count == 1 else f"model-{number:05d}-of-{count:05d}.safetensors"


def _header(path: str) -> tuple[int, dict[str, Any]]:
    """(where the data starts, the header) of a safetensors file."""
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        return 8 + length, json.loads(handle.read(length))


def _concatenate(folder: str, entries: list[list[str]], dest: str) -> int:
    """Write the tensors `entries` ([part file, key] pairs) into the safetensors file `dest`, copying their bytes
    (nothing is decoded); on the disk (fsync) before it is renamed into place. Returns the bytes of tensor data."""
    headers: dict[str, tuple[int, dict[str, Any]]] = {}
    items = []
    for part, key in entries:
        path = resolved(folder, part, "The progress file")
        if path not in headers:
            headers[path] = _header(path)
        start, header = headers[path]
        info = header[key]
        begin, end = info["data_offsets"]
        items.append((key, info["dtype"], info["shape"], path, start + begin, end - begin))
    items.sort(key=lambda item: (-_ITEMSIZE.get(item[1], 1), item[0]))
    layout: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, dtype, shape, _path, _start, size in items:
        layout[key] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(layout, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    tmp = dest + ".tmp"
    sources: dict[str, Any] = {}
    try:
        with open(tmp, "wb") as out:
            out.write(len(text).to_bytes(8, "little"))
            out.write(text)
            for _key, _dtype, _shape, path, start, size in items:
                source = sources.get(path) or sources.setdefault(path, open(path, "rb"))  # noqa: SIM115
                source.seek(start)
                while size:
                    chunk = source.read(min(size, _COPY_CHUNK))
                    if not chunk:
                        raise ValueError(f"{path} is truncated; pass overwrite=True to start over.")
                    out.write(chunk)
                    size -= len(chunk)
            out.flush()
            os.fsync(out.fileno())
    finally:
        for source in sources.values():
            source.close()
    os.replace(tmp, dest)
    return offset


def packed_away(folder: str, packing: list[list[list[str]]] | None, part: str) -> bool:
    """Whether `part` may be missing because every shard made from it is written (a finish that was interrupted)."""
    if not packing:
        return False
    count = len(packing)
    return all(os.path.isfile(os.path.join(folder, shard_name(j, count)))
               for j, shard in enumerate(packing, start=1) if any(p == part for p, _key in shard))


class ShardWriter:
    """Appends tensors to numbered safetensors parts, flushing at `max_shard_size`; packs them into the final shards
    and writes the index at the end."""

    def __init__(self, folder: str, max_shard_size: str | int, done: list[dict] | None = None,
                 packing: list[list[list[str]]] | None = None) -> None:
        self.folder = folder
        self.max_bytes = parse_size(max_shard_size)
        self.shards: list[dict] = list(done or [])  # {"file": tmp name, "keys": [...], "bytes": n}
        # The final shards as [part file, key] lists, fixed (and recorded) once packing starts, so that a rerun
        # after an interruption finishes the same shards whatever its own max_shard_size.
        self.packing = packing
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

    def plan(self) -> list[list[list[str]]]:
        """The final shards: the tensors in the order they were written, a new shard whenever the next tensor would
        take it past `max_shard_size` (a larger tensor gets a shard of its own), as `save_pretrained` splits."""
        shards: list[list[list[str]]] = []
        current: list[list[str]] = []
        size = 0
        for part in self.shards:
            path = resolved(self.folder, part["file"], "The progress file")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path} is missing, so the run cannot be finished; pass overwrite=True to "
                                        "start over.")
            _start, header = _header(path)
            for key in part["keys"]:
                begin, end = header[key]["data_offsets"]
                if current and size + (end - begin) > self.max_bytes:
                    shards.append(current)
                    current, size = [], 0
                current.append([part["file"], key])
                size += end - begin
        if current:
            shards.append(current)
        return shards

    def finish(self, on_plan: Callable[[list[list[list[str]]]], None] | None = None) -> None:
        """Pack the parts into `model-0000i-of-0000N.safetensors` (or `model.safetensors`) and write the index.
        `on_plan(packing)` records the plan before anything is packed. Can be repeated after an interruption: a
        shard already written is kept, a part is deleted once every shard made from it is on the disk, and parts no
        progress lists are dropped."""
        self.flush()
        if self.packing is None:
            self.packing = self.plan()
            if on_plan is not None:
                on_plan(self.packing)
        count = len(self.packing)
        weight_map, total = {}, 0
        last_use = {part: j for j, shard in enumerate(self.packing) for part, _key in shard}
        for j, shard in enumerate(self.packing):
            final = os.path.join(self.folder, shard_name(j + 1, count))
            if not os.path.isfile(final):
                for part in {p for p, _key in shard}:
                    if not os.path.isfile(os.path.join(self.folder, part)):
                        raise FileNotFoundError(f"{os.path.join(self.folder, part)} is missing, so the run cannot "
                                                "be finished; pass overwrite=True to start over.")
                _concatenate(self.folder, shard, final)
                sync_dir(self.folder)  # the shard is in place before the parts it was made from go
            for part in [p for p, use in last_use.items() if use == j]:
                path = os.path.join(self.folder, part)
                if os.path.isfile(path):
                    os.remove(path)
            weight_map.update({key: os.path.basename(final) for _part, key in shard})
        for shard_file in {shard_name(j + 1, count) for j in range(count)}:
            total += _data_bytes(os.path.join(self.folder, shard_file))
        for name in os.listdir(self.folder):  # parts of a block that failed, or was killed, before it was recorded
            if PART_PATTERN.fullmatch(name) or (name.startswith("part-") and name.endswith(".tmp")):
                os.remove(os.path.join(self.folder, name))
        if count > 1:
            tmp = os.path.join(self.folder, INDEX_NAME + ".tmp")
            with open(tmp, "w", encoding="utf-8") as handle:
                json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, handle,
                          indent=2)
            os.replace(tmp, os.path.join(self.folder, INDEX_NAME))


def _data_bytes(path: str) -> int:
    start, _header_ = _header(path)
    return os.path.getsize(path) - start
