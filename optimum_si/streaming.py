"""Streaming: prune a checkpoint that does not fit in memory, one decoder block at a time, from and to safetensors.

The model is built on the meta device; only the non-block weights (embeddings, final norm, LM head) and one block
are ever materialised. Each finished block is appended to the output shards, so host memory stays bounded by one
block, one output shard and the calibration activations. Same engine as the in-memory path: only the `BlockSource`
differs.

Resume: progress is recorded in `save_dir/.optimum-si-progress.json` after every block (atomically, with the
shards written so far). A restarted run with the same recipe recomputes the activations through the finished
blocks (read back from its own output) and continues; the index and the recipe are written last, so a folder that
is not complete never looks complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from typing import Any

import torch
from torch import nn

from .config import CONFIG_NAME, SIConfig

__all__ = ["StreamingSource", "ShardWriter", "open_checkpoint", "PROGRESS_NAME"]

logger = logging.getLogger(__name__)

PROGRESS_NAME = ".optimum-si-progress.json"
INDEX_NAME = "model.safetensors.index.json"
_COPIED_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja",
                 "added_tokens.json", "LICENSE", "LICENSE.txt", "LICENSE.md", "USE_POLICY.md", "NOTICE")
_DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "LICENSE*", "USE_POLICY.md", "NOTICE"]


def _parse_size(value: str | int) -> int:
    if isinstance(value, int):
        return value
    text = value.strip().upper()
    for unit, factor in (("GIB", 2**30), ("MIB", 2**20), ("KIB", 2**10), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def resolve_source(source: str | os.PathLike, revision: str | None = None, token: str | None = None) -> str:
    """A local folder, or the snapshot of a Hub repo (weights, configs and tokenizer files only)."""
    path = os.fspath(source)
    if os.path.isdir(path):
        return path
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(path, revision=revision, token=token, allow_patterns=_DOWNLOAD_PATTERNS)
    except Exception as err:  # many hub error types; one clear message
        raise OSError(f"{path!r} is not a local folder and could not be downloaded from the Hub ({type(err).__name__}: {err}).") from err


class CheckpointIndex:
    """Where each tensor of a safetensors checkpoint lives, validated before anything is written."""

    def __init__(self, folder: str, files: list[str] | None = None) -> None:
        from safetensors import safe_open

        self.folder = folder
        index_path = os.path.join(folder, INDEX_NAME)
        weight_map = None
        if files is not None:
            pass
        elif os.path.isfile(index_path):
            try:
                with open(index_path, encoding="utf-8") as handle:
                    weight_map = json.load(handle)["weight_map"]
            except (json.JSONDecodeError, KeyError) as err:
                raise ValueError(f"{index_path} is corrupted ({err}); re-download the checkpoint.") from err
            files = sorted(set(weight_map.values()))
        elif os.path.isfile(os.path.join(folder, "model.safetensors")):
            files = ["model.safetensors"]
        else:
            raise FileNotFoundError(f"{folder} has no model.safetensors or {INDEX_NAME}; only safetensors checkpoints stream.")
        self.locations: dict[str, str] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, str] = {}
        self.total_bytes = 0
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"Shard {name} listed in {INDEX_NAME} is missing from {folder}; re-download it.")
            self.total_bytes += os.path.getsize(path)
            try:
                with safe_open(path, framework="pt") as handle:
                    for key in handle.keys():
                        info = handle.get_slice(key)
                        self.locations[key] = path
                        self.shapes[key] = tuple(info.get_shape())
                        self.dtypes[key] = info.get_dtype()
            except Exception as err:  # safetensors raises SafetensorError for truncated/corrupted headers
                raise ValueError(f"Shard {name} is truncated or corrupted ({err}); re-download it.") from err
        if weight_map:
            missing = sorted(k for k, f in weight_map.items() if k not in self.locations)
            if missing:
                raise ValueError(f"{len(missing)} tensor(s) listed in {INDEX_NAME} are not in their shard (e.g. {missing[0]}).")

    def read(self, key: str, device: torch.device | str = "cpu") -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(self.locations[key], framework="pt", device=str(device)) as handle:
            return handle.get_tensor(key)


def open_checkpoint(folder: str, model_config) -> tuple[CheckpointIndex, nn.Module]:
    """Validate the checkpoint against its config and build the model skeleton on the meta device."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if model_config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ValueError(f"{folder} holds a {model_config.model_type!r} model, which is not a causal LM; optimum-si prunes causal LMs.")
    index = CheckpointIndex(folder)
    dtypes = {index.dtypes[k] for k in index.dtypes}
    dtype = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}.get(sorted(dtypes)[0], torch.float32)
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(model_config, dtype=dtype)
    tied = getattr(model_config, "tie_word_embeddings", False)
    for name, param in skeleton.named_parameters():
        if name not in index.shapes:
            if tied and name.endswith("lm_head.weight"):
                continue
            raise ValueError(f"The checkpoint has no tensor {name!r} that the config requires; the download is incomplete.")
        if index.shapes[name] != tuple(param.shape):
            raise ValueError(
                f"Tensor {name} has shape {index.shapes[name]} in the checkpoint but {tuple(param.shape)} in its config; "
                "the checkpoint and config.json do not match."
            )
    return index, skeleton


def _materialise(module: nn.Module, prefix: str, index: CheckpointIndex, device: torch.device) -> None:
    from accelerate.utils import set_module_tensor_to_device

    for name, param in module.named_parameters(recurse=True):
        key = f"{prefix}{name}"
        set_module_tensor_to_device(module, name, device, value=index.read(key, device), dtype=param.dtype)


def _to_meta(module: nn.Module) -> None:
    from accelerate.utils import set_module_tensor_to_device

    for name, _param in list(module.named_parameters(recurse=True)):
        set_module_tensor_to_device(module, name, "meta")


class ShardWriter:
    """Appends tensors to numbered safetensors shards, flushing at `max_shard_size`; writes the index at the end."""

    def __init__(self, folder: str, max_shard_size: str | int, done: list[dict] | None = None) -> None:
        self.folder = folder
        self.max_bytes = _parse_size(max_shard_size)
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
        os.replace(tmp, os.path.join(self.folder, name))
        self.shards.append({"file": name, "keys": list(self._pending), "bytes": self._pending_bytes})
        self._pending, self._pending_bytes = {}, 0

    def finish(self) -> None:
        """Rename the parts to the standard `model-0000i-of-0000N.safetensors` names and write the index."""
        self.flush()
        count = len(self.shards)
        weight_map, total = {}, 0
        for i, shard in enumerate(self.shards, start=1):
            final = "model.safetensors" if count == 1 else f"model-{i:05d}-of-{count:05d}.safetensors"
            os.replace(os.path.join(self.folder, shard["file"]), os.path.join(self.folder, final))
            weight_map.update({key: final for key in shard["keys"]})
            total += shard["bytes"]
        if count > 1:
            tmp = os.path.join(self.folder, INDEX_NAME + ".tmp")
            with open(tmp, "w", encoding="utf-8") as handle:
                json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, handle, indent=2)
            os.replace(tmp, os.path.join(self.folder, INDEX_NAME))


class StreamingSource:
    """`BlockSource` that reads block i from the source shards and hands the finished block to a `ShardWriter`."""

    def __init__(self, skeleton_blocks: nn.ModuleList, prefix: str, index: CheckpointIndex, device: torch.device,
                 writer: ShardWriter | None, on_block_written=None, finished_index: CheckpointIndex | None = None,
                 finished: int = 0) -> None:
        self.blocks = skeleton_blocks
        self.prefix = prefix
        self.index = index
        self.device = device
        self.writer = writer
        self.on_block_written = on_block_written
        self.finished_index = finished_index  # the output folder's own parts, for blocks done before a restart
        self.finished = finished

    def __len__(self) -> int:
        return len(self.blocks)

    def load(self, index: int) -> nn.Module:
        block = self.blocks[index]
        source = self.finished_index if index < self.finished else self.index
        _materialise(block, f"{self.prefix}.{index}.", source, self.device)
        return block

    def load_dense(self, index: int) -> nn.Module:
        block = self.blocks[index]
        _materialise(block, f"{self.prefix}.{index}.", self.index, self.device)
        return block

    def release(self, index: int, block: nn.Module) -> None:
        if index >= self.finished and self.writer is not None:
            self.writer.add({f"{self.prefix}.{index}.{name}": p for name, p in block.state_dict().items()
                             if f"{self.prefix}.{index}.{name}" in self.index.shapes})
            self.writer.flush()  # one part per block at least: a restart never loses a finished block
            if self.on_block_written is not None:
                self.on_block_written(index)
        _to_meta(block)


def recipe_fingerprint(config: SIConfig, source: str) -> str:
    data = {k: v for k, v in config.to_dict().items() if k not in ("meta", "show_progress", "device")}
    return hashlib.sha256(json.dumps([data, os.path.abspath(source)], sort_keys=True).encode()).hexdigest()[:16]


def read_progress(save_dir: str) -> dict[str, Any] | None:
    path = os.path.join(save_dir, PROGRESS_NAME)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def write_progress(save_dir: str, progress: dict[str, Any]) -> None:
    path = os.path.join(save_dir, PROGRESS_NAME)
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(progress, handle)
    os.replace(path + ".tmp", path)


def copy_side_files(source: str, save_dir: str) -> None:
    for name in _COPIED_FILES:
        path = os.path.join(source, name)
        if os.path.isfile(path):
            shutil.copyfile(path, os.path.join(save_dir, name))


def is_complete(save_dir: str) -> bool:
    return os.path.isfile(os.path.join(save_dir, CONFIG_NAME)) and not os.path.isfile(os.path.join(save_dir, PROGRESS_NAME))
