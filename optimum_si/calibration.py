"""Turn what users pass as `dataset` into a `[num_samples, seqlen]` tensor of token ids.

Accepted:

* text given directly: a list of strings, a path to a text file, or a `datasets.Dataset` with a text column. The
  texts are joined with blank lines, tokenised once, and `num_samples` windows of `seqlen` tokens start at positions
  drawn with `random.Random(seed).randint(0, T - seqlen - 1)` (the convention of the Wanda/SparseGPT loaders);
* token ids: a list of tokenised dicts (`input_ids`), concatenated and windowed the same way, or an integer tensor
  `[n, seqlen]` used as given;
* a text set loaded through `datasets` (`optimum_si.calibration_sets`): a named set (`"c4"`: seeded random
  documents longer than a window, one window each; `"wikitext2"`: the train split joined; `"pileval"`: shuffled
  documents cut into windows), a Hub dataset id (`"owner/name"`), a local dataset folder, or a `TextSet` from
  `calibration_sets.text_set(...)` for another split, column, config or revision. `build_calibration` then also
  returns the provenance (name, repo, config, split, revision and commit, sampling, windows, seed) that the recipe,
  `si_report.json` and the model card record.

Every input is checked (integer ids inside the vocabulary, windows that fit the text and the model's context)
before any weight is touched.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["build_calibration", "build_calibration_ids", "draw_windows", "token_stream"]

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
        texts = _dataset_texts(dataset)
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


def _available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux MemAvailable, else total RAM), None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def _check_windows_fit(num_samples: int, seqlen: int) -> None:
    """Refuse, before drawing anything, a window count whose token ids alone exceed the memory of this machine."""
    needed = num_samples * (seqlen * 8 * 2 + 64)  # int64 ids and their gather index, plus each window's start
    available = _available_memory()
    if available is not None and needed > available:
        raise ValueError(
            f"{num_samples} calibration windows of {seqlen} tokens need {needed / 2**30:.1f} GiB for their token ids "
            f"alone, more than the {available / 2**30:.1f} GiB of memory available; lower num_samples or seqlen."
        )


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
    starts = torch.tensor([rng.randint(0, total - seqlen - 1) for _ in range(num_samples)], dtype=torch.long)
    # One gather instead of a tensor view per window: many short windows stay cheap.
    return stream[starts[:, None] + torch.arange(seqlen)]


def build_calibration_ids(
    dataset: Any, tokenizer: Any, num_samples: int, seqlen: int, seed: int, vocab_size: int | None, max_context: int | None
) -> torch.Tensor:
    """Validated `[n, seqlen]` LongTensor of calibration token ids."""
    return build_calibration(dataset, tokenizer, num_samples, seqlen, seed, vocab_size, max_context)[0]


def build_calibration(
    dataset: Any, tokenizer: Any, num_samples: int, seqlen: int, seed: int, vocab_size: int | None, max_context: int | None
) -> tuple[torch.Tensor, dict[str, Any] | None]:
    """`build_calibration_ids`, plus where the text came from when `dataset` is a named set ("c4", "wikitext2",
    "pileval"), a Hub dataset id, a local dataset folder or a `calibration_sets.TextSet` (None otherwise)."""
    from .calibration_sets import calibration_ids, is_text_set_reference

    provenance = None
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
        _check_windows_fit(num_samples, seqlen)
        if is_text_set_reference(dataset):
            ids, provenance = calibration_ids(dataset, tokenizer, num_samples, seqlen, seed)
        else:
            ids = draw_windows(token_stream(dataset, tokenizer), num_samples, seqlen, seed)
    if max_context is not None and ids.shape[1] > max_context:
        raise ValueError(
            f"Calibration windows of {ids.shape[1]} tokens are longer than the model's context ({max_context} positions)."
        )
    if ids.numel() and (int(ids.min()) < 0 or (vocab_size is not None and int(ids.max()) >= vocab_size)):
        raise ValueError(f"Calibration token ids must lie in [0, {vocab_size}); got values in [{int(ids.min())}, {int(ids.max())}].")
    return ids, provenance
