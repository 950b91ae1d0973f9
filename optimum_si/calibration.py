"""Turn what users pass as `dataset` into a `[num_samples, seqlen]` tensor of token ids.

Accepted: a list of strings, a path to a text file, a `datasets.Dataset` with a text column, a list of
tokenised dicts (`input_ids`), or an integer tensor `[n, seqlen]` used as given. Text is joined with blank
lines, tokenised once, and `num_samples` windows of `seqlen` tokens start at positions drawn with
`random.Random(seed).randint(0, T - seqlen - 1)` (the convention of the Wanda/SparseGPT calibration loaders).
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["build_calibration_ids", "draw_windows", "token_stream"]

logger = logging.getLogger(__name__)

_TEXT_COLUMNS = ("text", "content", "sentence")


def _dataset_texts(dataset: Any) -> list[str]:
    """Texts of a `datasets.Dataset`-like object (duck-typed so `datasets` stays optional)."""
    columns = list(getattr(dataset, "column_names", []) or [])
    if "input_ids" in columns:
        return []
    column = next((c for c in _TEXT_COLUMNS if c in columns), None)
    if column is None:
        string_columns = [c for c in columns if isinstance(dataset[0][c], str)] if len(dataset) else []
        if len(string_columns) != 1:
            raise ValueError(
                f"Cannot tell which column of the dataset holds the text (columns: {columns}); pass "
                "`dataset[\"<column>\"]` (a list of strings) instead."
            )
        column = string_columns[0]
    return list(dataset[column])


def token_stream(dataset: Any, tokenizer: Any) -> torch.Tensor:
    """One 1-D LongTensor of token ids from any accepted non-tensor dataset."""
    if isinstance(dataset, (str, os.PathLike)):
        path = os.fspath(dataset)
        if not os.path.isfile(path):
            raise ValueError(
                f"dataset={path!r} is not an existing text file. Pass a path to a UTF-8 text file, a list of strings, "
                "a datasets.Dataset, a list of {'input_ids': ...} dicts or a [n, seqlen] tensor of token ids."
            )
        with open(path, encoding="utf-8") as handle:
            texts = [handle.read()]
    elif hasattr(dataset, "column_names"):
        texts = _dataset_texts(dataset)
        if not texts:
            return token_stream(list(dataset), tokenizer)
    elif isinstance(dataset, Sequence) and dataset and all(isinstance(t, str) for t in dataset):
        texts = list(dataset)
    elif isinstance(dataset, Sequence) and dataset and all(isinstance(t, dict) for t in dataset):
        pieces = []
        for item in dataset:
            if "input_ids" not in item:
                raise ValueError("Tokenised calibration samples must be dicts with an 'input_ids' entry.")
            ids = torch.as_tensor(item["input_ids"])
            if ids.dtype.is_floating_point or ids.dtype == torch.bool:
                raise ValueError(f"input_ids must be integer token ids, got dtype {ids.dtype}.")
            pieces.append(ids.reshape(-1).long())
        return torch.cat(pieces)
    else:
        raise ValueError(
            f"Unsupported dataset of type {type(dataset).__name__}. Pass a list of strings, a path to a text file, a "
            "datasets.Dataset with a text column, a list of {'input_ids': ...} dicts or a [n, seqlen] tensor of token ids."
        )
    if tokenizer is None:
        raise ValueError("The calibration dataset is text, so a tokenizer is needed: pass prune(..., tokenizer=tokenizer).")
    text = "\n\n".join(texts)
    return torch.as_tensor(tokenizer(text, verbose=False)["input_ids"], dtype=torch.long).reshape(-1)


def draw_windows(stream: torch.Tensor, num_samples: int, seqlen: int, seed: int) -> torch.Tensor:
    """`num_samples` windows of `seqlen` consecutive tokens at seeded random starts."""
    total = stream.numel()
    if total < seqlen + 1:
        raise ValueError(
            f"The calibration text has only {total} tokens, too little for windows of seqlen={seqlen} "
            f"(needs at least {seqlen + 1}). Pass more text, or lower SIConfig(seqlen=...)."
        )
    if total < num_samples * seqlen // 4:
        logger.warning(
            "The calibration text has %d tokens for %d windows of %d: the windows overlap heavily.", total, num_samples, seqlen
        )
    rng = random.Random(seed)
    starts = [rng.randint(0, total - seqlen - 1) for _ in range(num_samples)]
    return torch.stack([stream[s:s + seqlen] for s in starts])


def build_calibration_ids(
    dataset: Any, tokenizer: Any, num_samples: int, seqlen: int, seed: int, vocab_size: int | None, max_context: int | None
) -> torch.Tensor:
    """Validated `[n, seqlen]` LongTensor of calibration token ids."""
    if dataset is None:
        raise ValueError("This method needs calibration data: pass prune(model, tokenizer=..., dataset=...).")
    if isinstance(dataset, torch.Tensor):
        if dataset.dtype.is_floating_point or dataset.dtype.is_complex or dataset.dtype == torch.bool:
            raise ValueError(f"A tensor dataset must hold integer token ids, got dtype {dataset.dtype}.")
        if dataset.dim() != 2 or dataset.shape[0] < 1 or dataset.shape[1] < 2:
            raise ValueError(
                f"A tensor dataset must have shape [num_samples, seqlen] with seqlen >= 2, got {tuple(dataset.shape)}."
            )
        ids = dataset.long()
        if dataset.shape[0] != num_samples or dataset.shape[1] != seqlen:
            logger.info("Using the given %d x %d calibration tokens as they are.", *dataset.shape)
    else:
        if max_context is not None and seqlen > max_context:
            raise ValueError(
                f"seqlen={seqlen} is longer than the model's context ({max_context} positions); lower SIConfig(seqlen=...)."
            )
        ids = draw_windows(token_stream(dataset, tokenizer), num_samples, seqlen, seed)
    if max_context is not None and ids.shape[1] > max_context:
        raise ValueError(
            f"Calibration windows of {ids.shape[1]} tokens are longer than the model's context ({max_context} positions)."
        )
    if ids.numel() and (int(ids.min()) < 0 or (vocab_size is not None and int(ids.max()) >= vocab_size)):
        raise ValueError(f"Calibration token ids must lie in [0, {vocab_size}); got values in [{int(ids.min())}, {int(ids.max())}].")
    return ids
