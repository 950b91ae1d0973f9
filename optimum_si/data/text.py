"""What users pass as calibration or evaluation text, as text or token ids: a file, a list of strings, a `datasets`
dataset's text column, tokenised dicts."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["dataset_texts", "read_text_file", "token_stream", "TEXT_COLUMNS"]

TEXT_COLUMNS = ("text", "content", "sentence")


def dataset_texts(dataset: Any) -> list[str]:
    """Texts of a `datasets.Dataset`-like object (duck-typed so `datasets` stays optional)."""
    columns = list(getattr(dataset, "column_names", []) or [])
    if "input_ids" in columns:
        return []
    column = next((c for c in TEXT_COLUMNS if c in columns), None)
    if column is None:
        string_columns = [c for c in columns if isinstance(dataset[0][c], str)] if len(dataset) else []
        if len(string_columns) != 1:
            raise ValueError(
                f"Cannot tell which column of the dataset holds the text (columns: {columns}); pass "
                "`dataset[\"<column>\"]` (a list of strings) instead."
            )
        column = string_columns[0]
    texts = list(dataset[column])
    bad = next((i for i, text in enumerate(texts) if not isinstance(text, str)), None)
    if bad is not None:
        raise ValueError(f"Row {bad} of the dataset's {column!r} column is {type(texts[bad]).__name__}, not text; "
                         "drop or fill the empty rows first.")
    return texts


def read_text_file(path: str | os.PathLike, what: str = "") -> str:
    """The content of a UTF-8 text file; ValueError naming the file (and `what` it was given as) otherwise."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{what}{os.fspath(path)!r} is not UTF-8 text ({err.reason} at byte {err.start}); convert it to UTF-8, "
            "e.g. with `iconv -t UTF-8`."
        ) from None
    except IsADirectoryError:
        raise ValueError(f"{what}{os.fspath(path)!r} is a folder; pass a UTF-8 text file.") from None


def token_stream(dataset: Any, tokenizer: Any) -> torch.Tensor:
    """One 1-D LongTensor of token ids from any accepted non-tensor dataset."""
    if isinstance(dataset, (str, os.PathLike)):
        path = os.fspath(dataset)
        if not os.path.isfile(path):
            raise ValueError(
                f"dataset={path!r} is not an existing text file. Pass a path to a UTF-8 text file, a list of strings, "
                "a datasets.Dataset, a list of {'input_ids': ...} dicts or a [n, seqlen] tensor of token ids."
            )
        texts = [read_text_file(path, "dataset=")]
    elif _is_empty(dataset):
        raise ValueError(
            f"The calibration dataset is an empty {type(dataset).__name__}; pass at least one text (or tokenised "
            "sample) with enough tokens for the calibration windows."
        )
    elif hasattr(dataset, "column_names"):
        texts = dataset_texts(dataset)
        if not texts:
            return token_stream(list(dataset), tokenizer)
    elif isinstance(dataset, Sequence) and dataset and all(isinstance(t, str) for t in dataset):
        texts = list(dataset)
    elif isinstance(dataset, Sequence) and dataset and all(isinstance(t, dict) for t in dataset):
        pieces = []
        for number, item in enumerate(dataset):
            if "input_ids" not in item:
                raise ValueError("Tokenised calibration samples must be dicts with an 'input_ids' entry.")
            try:
                ids = torch.as_tensor(item["input_ids"])
            except (TypeError, ValueError, RuntimeError):
                raise ValueError(f"input_ids of calibration sample {number} is not a list or tensor of integer token "
                                 f"ids: {str(item['input_ids'])[:60]!r}.") from None
            if ids.dtype.is_floating_point or ids.dtype == torch.bool:
                raise ValueError(f"input_ids must be integer token ids, got dtype {ids.dtype}.")
            pieces.append(ids.reshape(-1).long())
        return torch.cat(pieces)
    elif isinstance(dataset, Sequence) and not isinstance(dataset, (bytes, bytearray)):
        kinds = sorted({type(item).__name__ for item in dataset})
        raise ValueError(
            f"A calibration {type(dataset).__name__} must hold only strings or only {{'input_ids': ...}} dicts; "
            f"this one holds {', '.join(kinds)}."
        )
    else:
        raise ValueError(
            f"Unsupported dataset of type {type(dataset).__name__}. Pass a list of strings, a path to a text file, a "
            "datasets.Dataset with a text column, a list of {'input_ids': ...} dicts or a [n, seqlen] tensor of token ids."
        )
    if tokenizer is None:
        raise ValueError("The calibration dataset is text, so a tokenizer is needed: pass prune(..., tokenizer=tokenizer).")
    text = "\n\n".join(texts)
    return torch.as_tensor(tokenizer(text, verbose=False)["input_ids"], dtype=torch.long).reshape(-1)


def _is_empty(dataset: Any) -> bool:
    try:
        return len(dataset) == 0
    except TypeError:  # no length: not a container we accept, reported as unsupported
        return False
