"""Streaming: prune a checkpoint that does not fit in memory, one decoder block at a time, from and to safetensors.

The model is built on the meta device; only the non-block weights (embeddings, final norm, LM head) and one block
are ever materialised. Each finished block is appended to the output shards, so host memory stays bounded by one
block, one output shard and the calibration activations. Same engine as the in-memory path: only the `BlockSource`
differs.

The run works in a sibling of `save_dir`, `.<name>.optimum-si-partial` (see `optimum_si.folders`), swapped in as
`save_dir` once complete. A block is written and recorded finished (`.optimum-si-progress.json`, atomically, with the
shards written so far) only after every planned Linear in it is pruned; a fault inside a block leaves the progress at
the last good block. A restarted run of the same run (same recipe, calibration tokens and source checkpoint: the
fingerprint) recomputes the activations through the finished blocks, read back from its own output, and continues;
with `sparsity_profile="owl"` the progress file also holds the outlier ratio of every block profiled so far
(`optimum_si.owl_streaming`), so the dense profiling pass is not repeated either;
every step of finishing (renames, index, side files, sidecars, manifest, swap) can be repeated, so a rerun after a
kill or a full disk at any point completes the folder.

Each tensor keeps its source dtype: blocks run in the checkpoint's main dtype, and a tensor stored in another dtype
is written back in its own (bit for bit when the run did not change it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
from typing import Any

import torch
from torch import nn

from .checkpoint_layout import CheckpointLayout
from .config import SIConfig
from .folders import inside, sync_dir, sync_file

__all__ = ["StreamingSource", "ShardWriter", "open_checkpoint", "run_fingerprint", "fingerprint_differences",
           "read_progress", "write_progress", "output_names", "is_complete", "PROGRESS_NAME"]

logger = logging.getLogger(__name__)

PROGRESS_NAME = ".optimum-si-progress.json"
INDEX_NAME = "model.safetensors.index.json"
_COPIED_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja",
                 "added_tokens.json", "LICENSE", "LICENSE.txt", "LICENSE.md", "USE_POLICY.md", "NOTICE")
# Run options that cannot change the pruned weights: they must not block a resume.
_RESULT_NEUTRAL = ("meta", "show_progress", "device", "activation_storage", "activation_dir")
_PART = re.compile(r"part-\d{5}\.safetensors")
_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
           "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
           "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
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
    from huggingface_hub import constants, snapshot_download

    try:
        return snapshot_download(path, revision=revision, token=token, allow_patterns=_DOWNLOAD_PATTERNS)
    except Exception as err:  # many hub error types; one clear message
        raise OSError(f"{path!r} is not a local folder and could not be downloaded from the Hub at "
                      f"{constants.ENDPOINT} ({type(err).__name__}: {err}).") from err


class CheckpointIndex:
    """Where each tensor of a safetensors checkpoint lives, validated before anything is written."""

    def __init__(self, folder: str, files: list[str] | None = None, layout: CheckpointLayout | None = None) -> None:
        from safetensors import safe_open

        self.folder = folder
        # How the tensors map onto the model's parameters (set by `open_checkpoint`); None: by the same names.
        self.layout = layout
        index_path = os.path.join(folder, INDEX_NAME)
        weight_map = None
        if files is not None:
            pass
        elif os.path.isfile(index_path):
            try:
                with open(index_path, encoding="utf-8") as handle:
                    weight_map = json.load(handle)["weight_map"]
                files = sorted(set(weight_map.values()))
            except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
                raise ValueError(f"{index_path} is corrupted ({err}); re-download the checkpoint.") from err
        elif os.path.isfile(os.path.join(folder, "model.safetensors")):
            files = ["model.safetensors"]
        else:
            raise FileNotFoundError(f"{folder} has no model.safetensors or {INDEX_NAME}; only safetensors checkpoints stream.")
        self.locations: dict[str, str] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, str] = {}
        self.total_bytes = 0
        self.files = list(files)
        for name in files:
            path = inside(folder, name, INDEX_NAME if weight_map is not None else "The progress file")
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

    def read_params(self, names: list[str], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Model parameters by their model names, converted from the checkpoint's layout where it differs (fused
        experts made from per-expert matrices, as `from_pretrained` does)."""
        if self.layout is None or self.layout.identity:
            return {name: self.read(name, device) for name in names}
        return self.layout.read(names, self, device)

    def stored_keys(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Model tensors under the checkpoint's keys and in its layout (what `read_params` undoes)."""
        return dict(tensors) if self.layout is None else self.layout.stored(tensors)

    def torch_dtype(self, key: str) -> torch.dtype | None:
        return _DTYPES.get(self.dtypes[key])

    def main_dtype(self) -> torch.dtype:
        """The floating dtype that holds most of the weights: the one blocks are computed in (never an 8-bit one)."""
        counts: dict[torch.dtype, int] = {}
        for key, shape in self.shapes.items():
            dtype = self.torch_dtype(key)
            if dtype is not None and dtype.is_floating_point and dtype.itemsize >= 2:
                counts[dtype] = counts.get(dtype, 0) + int(torch.Size(shape).numel())
        return max(counts, key=lambda d: (counts[d], d.itemsize)) if counts else torch.float32

    def identity(self) -> str:
        """A digest of what the checkpoint is: its index, its config and the other files copied into the output
        (tokenizer, generation config, licence), and each shard's name, size, header and the first and last 64 KiB of
        its data (cheap, yet another model of the same architecture differs)."""
        digest = hashlib.sha256()
        for name in (INDEX_NAME, *_COPIED_FILES):
            path = os.path.join(self.folder, name)
            if os.path.isfile(path):
                digest.update(f"{name}\0{os.path.getsize(path)}\0".encode())
                with open(path, "rb") as handle:
                    digest.update(handle.read())
        for name in self.files:
            path = os.path.join(self.folder, name)
            size = os.path.getsize(path)
            digest.update(f"{name}\0{size}\0".encode())
            with open(path, "rb") as handle:
                header = int.from_bytes(handle.read(8), "little")
                digest.update(handle.read(min(header, size) + 65536))
                handle.seek(max(0, size - 65536))
                digest.update(handle.read())
        return digest.hexdigest()[:16]


def open_checkpoint(folder: str, model_config) -> tuple[CheckpointIndex, nn.Module]:
    """Validate the checkpoint against its config and build the model skeleton on the meta device."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if model_config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ValueError(f"{folder} holds a {model_config.model_type!r} model, which is not a causal LM; optimum-si prunes causal LMs.")
    index = CheckpointIndex(folder)
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(model_config, dtype=index.main_dtype())
    # Every parameter is found (by name, or through transformers' conversion for fused experts) with its shape.
    index.layout = CheckpointLayout.of(skeleton, index, folder)
    return index, skeleton


def _materialise(module: nn.Module, prefix: str, index: CheckpointIndex, device: torch.device) -> None:
    from accelerate.utils import set_module_tensor_to_device

    params = dict(module.named_parameters(recurse=True))
    values = index.read_params([f"{prefix}{name}" for name in params], device)
    for name, param in params.items():
        set_module_tensor_to_device(module, name, device, value=values.pop(f"{prefix}{name}"), dtype=param.dtype)


def _to_meta(module: nn.Module) -> None:
    from accelerate.utils import set_module_tensor_to_device

    for name, _param in list(module.named_parameters(recurse=True)):
        set_module_tensor_to_device(module, name, "meta")


def _final_name(number: int, count: int) -> str:
    return "model.safetensors" if count == 1 else f"model-{number:05d}-of-{count:05d}.safetensors"


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
            final = os.path.join(self.folder, _final_name(i, count))
            part = inside(self.folder, shard["file"], "The progress file")
            if os.path.isfile(part):
                os.replace(part, final)
            elif not os.path.isfile(final):
                raise FileNotFoundError(f"{part} is missing, so the run cannot be finished; pass overwrite=True to "
                                        "start over.")
            weight_map.update({key: os.path.basename(final) for key in shard["keys"]})
            total += shard["bytes"]
        for name in os.listdir(self.folder):  # parts of a block that failed, or was killed, before it was recorded
            if _PART.fullmatch(name) or (name.startswith("part-") and name.endswith(".tmp")):
                os.remove(os.path.join(self.folder, name))
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

    def commit(self, index: int, block: nn.Module) -> None:
        """Write block `index` and record it finished. The engine calls this only once the block is fully pruned;
        `release` (which runs after a fault too) never writes."""
        if index < self.finished or self.writer is None:
            return
        state = {f"{self.prefix}.{index}.{name}": tensor for name, tensor in block.state_dict().items()}
        tensors = {key: self._as_stored(key, tensor) for key, tensor in self.index.stored_keys(state).items()
                   if key in self.index.shapes}
        self.writer.add(tensors)
        self.writer.flush()  # one part per block at least: a restart never loses a finished block
        if self.on_block_written is not None:
            self.on_block_written(index)

    def _as_stored(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` in its source dtype: the source bytes themselves when the run left its values unchanged."""
        dtype = self.index.torch_dtype(key)
        if dtype is None or tensor.dtype == dtype:
            return tensor
        original = self.index.read(key)
        if torch.equal(original.to(tensor.dtype), tensor.detach().cpu()):
            return original
        stored = tensor.detach().cpu().to(dtype)
        return stored + 0.0 if dtype.is_floating_point else stored  # a cast can round a tiny value to -0.0

    def release(self, index: int, block: nn.Module) -> None:
        _to_meta(block)


def run_fingerprint(config: SIConfig, ids: torch.Tensor | None, index: CheckpointIndex) -> dict[str, Any]:
    """What makes two runs the same run (so one may resume the other): the recipe, the calibration token ids and
    the source checkpoint. Options that do not change the result (device, activation storage, progress bars) are
    left out."""
    recipe = {k: v for k, v in config.to_dict().items() if k not in _RESULT_NEUTRAL}
    calibration = "none"
    if ids is not None:
        tokens = ids.detach().to("cpu", torch.int64).contiguous()
        calibration = hashlib.sha256(f"{tuple(tokens.shape)}".encode() + tokens.numpy().tobytes()).hexdigest()[:16]
    return {"recipe": json.loads(json.dumps(recipe, sort_keys=True)), "calibration": calibration,
            "source": index.identity()}


def fingerprint_differences(stored: Any, current: dict[str, Any]) -> str:
    """What differs between the run that wrote a folder and this one, in words."""
    if not isinstance(stored, dict):
        return "what it was made from (an in-memory save() or an earlier optimum-si version records no fingerprint)"
    parts = []
    old, new = stored.get("recipe") or {}, current["recipe"]
    fields = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if fields:
        parts.append("the recipe (" + ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in fields[:4]) + ")")
    if stored.get("calibration") != current["calibration"]:
        parts.append("the calibration data")
    if stored.get("source") != current["source"]:
        parts.append("the source checkpoint")
    return " and ".join(parts) or "nothing"


def read_progress(folder: str, num_blocks: int) -> dict[str, Any] | None:
    """The progress of an unfinished run in `folder`, checked; a clear error if it is corrupted or was edited."""
    path = os.path.join(folder, PROGRESS_NAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            progress = json.load(handle)
        _check_progress(progress, num_blocks)
        count = len(progress["shards"])
        for i, shard in enumerate(progress["shards"], start=1):
            if not any(os.path.isfile(os.path.join(folder, name)) for name in (shard["file"], _final_name(i, count))):
                raise ValueError(f"its part {shard['file']} is missing")
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as err:  # JSONDecodeError: a ValueError
        raise ValueError(f"The progress file {path} is corrupted ({err}); pass overwrite=True to start over.") from err
    return progress


def _check_progress(progress: dict[str, Any], num_blocks: int) -> None:
    if not isinstance(progress["fingerprint"], dict):
        raise ValueError("it has no run fingerprint")
    finished = progress["finished_blocks"]
    if not isinstance(finished, int) or not 0 <= finished <= num_blocks:
        raise ValueError(f"finished_blocks={finished!r} for a model of {num_blocks} blocks")
    for shard in progress["shards"]:
        if not isinstance(shard["file"], str) or not _PART.fullmatch(shard["file"]):
            raise ValueError(f"{shard['file']!r} is not a part file of this run")
        if not all(isinstance(k, str) for k in shard["keys"]) or not isinstance(shard["bytes"], int):
            raise ValueError(f"bad entry for {shard['file']}")
    ratios = progress.get("owl_ratios", [])
    if not isinstance(ratios, list) or len(ratios) > num_blocks or not all(
            r is None or type(r) in (int, float) and math.isfinite(r) for r in ratios):
        raise ValueError(f"bad OWL profile {str(ratios)[:80]}")
    for name, layer in progress["layers"].items():
        if set(layer) - {"name", "numel", "zeros", "error"} or not isinstance(layer["name"], str) \
                or not isinstance(layer["numel"] + layer["zeros"], int):
            raise ValueError(f"bad layer record for {name}")


def write_progress(folder: str, progress: dict[str, Any]) -> None:
    path = os.path.join(folder, PROGRESS_NAME)
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(progress, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(path + ".tmp", path)
    sync_dir(folder)  # the parts it names were renamed into place before: both renames are now durable


def copy_side_files(source: str, save_dir: str) -> None:
    for name in _COPIED_FILES:
        path = os.path.join(source, name)
        if os.path.isfile(path):
            shutil.copyfile(path, os.path.join(save_dir, name))


def output_names(source: str, present: list[str]) -> set[str]:
    """The names a streaming run will write (of `present`, the shard names it may write), to refuse clashes early."""
    from .plots import PLOT_FILES

    shards = {name for name in present if re.fullmatch(r"model-\d{5}-of-\d{5}\.safetensors", name)}
    copied = {name for name in _COPIED_FILES if os.path.isfile(os.path.join(source, name))}
    return shards | copied | {"config.json", "model.safetensors", INDEX_NAME, "si_config.json", "si_report.json",
                              "README.md", *PLOT_FILES}


def is_complete(save_dir: str) -> bool:
    """Whether `save_dir` holds a finished checkpoint (its manifest is written last)."""
    from .folders import describe

    return describe(os.path.realpath(save_dir)).complete
