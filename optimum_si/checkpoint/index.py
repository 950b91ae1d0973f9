"""A safetensors checkpoint as a source of tensors: where each tensor lives (validated before anything is written),
read one at a time, in the checkpoint's own layout or converted to the model's (`layout.py`); and the skeleton of
its model on the meta device.
"""

from __future__ import annotations

import hashlib
import json
import os

import torch
from torch import nn

from .files import INDEX_NAME
from .layout import CheckpointLayout
from .links import resolved, trusted_roots

__all__ = ["CheckpointIndex", "open_checkpoint", "resolve_source", "tensor_digest", "COPIED_FILES"]

# Files of the source folder besides the weights that a streamed output carries over.
COPIED_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja",
                "added_tokens.json", "LICENSE", "LICENSE.txt", "LICENSE.md", "USE_POLICY.md", "NOTICE")
_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
           "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
           "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
_DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "LICENSE*", "USE_POLICY.md", "NOTICE"]


def resolve_source(source: str | os.PathLike, revision: str | None = None, token: str | None = None) -> str:
    """A local folder, or the snapshot of a Hub repo (weights, configs and tokenizer files only)."""
    path = os.fspath(source)
    if os.path.isdir(path):
        return path
    from huggingface_hub import snapshot_download

    from ..network import NetworkError, endpoint, hub_access
    from ..settings import network_timeout

    try:
        with hub_access(f"download {path!r}"):
            return snapshot_download(path, revision=revision, token=token, allow_patterns=_DOWNLOAD_PATTERNS,
                                     etag_timeout=network_timeout())
    except NetworkError:
        raise
    except Exception as err:  # many hub error types; one clear message
        raise OSError(f"{path!r} is not a local folder and could not be downloaded from the Hub at "
                      f"{endpoint()} ({type(err).__name__}: {err}).") from err


def tensor_digest(key: str, tensor: torch.Tensor) -> str:
    """A digest of one tensor as read from a checkpoint: its name, dtype, shape and bytes."""
    digest = hashlib.sha256(f"{key}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
    digest.update(tensor.detach().reshape(-1).contiguous().view(torch.uint8).numpy())
    return digest.hexdigest()


class CheckpointIndex:
    """Where each tensor of a safetensors checkpoint lives, validated before anything is written."""

    def __init__(self, folder: str, files: list[str] | None = None, layout: CheckpointLayout | None = None) -> None:
        from safetensors import safe_open

        self.folder = folder
        # How the tensors map onto the model's parameters (set by `open_checkpoint`); None: by the same names.
        self.layout = layout
        # Every file is read only where it really lives inside the folder (links are resolved: see links.py).
        self.roots = trusted_roots(folder)
        # The digest of each tensor as last read (`read`): what the progress file records of the source bytes each
        # finished block was computed from, taken as the bytes are read.
        self.digests: dict[str, str] = {}
        index_path = os.path.join(folder, INDEX_NAME)
        weight_map = None
        if files is not None:
            pass
        elif os.path.isfile(index_path):
            index_path = resolved(folder, INDEX_NAME, INDEX_NAME, self.roots)
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
            path = resolved(folder, name, INDEX_NAME if weight_map is not None else "The progress file", self.roots)
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
        """Tensor `key`, read on the CPU (where its bytes are digested, see `digests`) and moved to `device`."""
        from safetensors import safe_open

        with safe_open(self.locations[key], framework="pt", device="cpu") as handle:
            tensor = handle.get_tensor(key)
        self.digests[key] = tensor_digest(key, tensor)
        return tensor if torch.device(device).type == "cpu" else tensor.to(device)

    def digest_of(self, keys: list[str]) -> str:
        """One digest of tensors `keys` as this run read them (read now those it has not read yet)."""
        digest = hashlib.sha256()
        for key in sorted(set(keys)):
            if key not in self.digests:
                self.read(key)
            digest.update(f"{key}={self.digests[key]}\n".encode())
        return digest.hexdigest()[:32]

    def fresh_digest_of(self, keys: list[str]) -> str:
        """`digest_of(keys)` from the bytes on the disk now (each tensor read again)."""
        for key in set(keys):
            self.read(key)
        return self.digest_of(keys)

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
        for name in (INDEX_NAME, *COPIED_FILES):
            path = os.path.join(self.folder, name)
            if os.path.isfile(path):
                path = resolved(self.folder, name, name, self.roots)
                digest.update(f"{name}\0{os.path.getsize(path)}\0".encode())
                with open(path, "rb") as handle:
                    digest.update(handle.read())
        for name in self.files:
            path = resolved(self.folder, name, "The checkpoint", self.roots)
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
