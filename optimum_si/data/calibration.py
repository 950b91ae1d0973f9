"""Turn what users pass as `dataset` into a `[num_samples, seqlen]` tensor of token ids.

Accepted:

* text given directly: a list of strings, a path to a text file, or a `datasets.Dataset` with a text column. The
  texts are joined with blank lines, tokenised once, and `num_samples` windows of `seqlen` tokens start at positions
  drawn with `random.Random(seed).randint(0, T - seqlen - 1)` (the convention of the Wanda/SparseGPT loaders);
* token ids: a list of tokenised dicts (`input_ids`), concatenated and windowed the same way, or an integer tensor
  `[n, seqlen]` used as given;
* a text set loaded through `datasets` (`optimum_si.data.named_sets`): a named set (`"c4"`: seeded random
  documents longer than a window, one window each; `"wikitext2"`: the train split joined; `"pileval"`: shuffled
  documents cut into windows), a Hub dataset id (`"owner/name"`), a local dataset folder, or a `TextSet` from
  `named_sets.text_set(...)` for another split, column, config or revision. `build_calibration` then also
  returns the provenance (name, repo, config, split, revision and commit, sampling, windows, seed) that the recipe,
  `si_report.json` and the model card record.

Every input is checked (integer ids inside the vocabulary, windows that fit the text and the model's context)
before any weight is touched.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from .named_sets import calibration_ids, is_text_set_reference, warn_if_shadowing
from .text import token_stream
from .windows import check_windows_fit, draw_windows

__all__ = ["build_calibration", "build_calibration_ids"]

logger = logging.getLogger(__name__)


def build_calibration_ids(
    dataset: Any, tokenizer: Any, num_samples: int, seqlen: int, seed: int, vocab_size: int | None, max_context: int | None
) -> torch.Tensor:
    """Validated `[n, seqlen]` LongTensor of calibration token ids."""
    return build_calibration(dataset, tokenizer, num_samples, seqlen, seed, vocab_size, max_context)[0]


def build_calibration(
    dataset: Any, tokenizer: Any, num_samples: int, seqlen: int, seed: int, vocab_size: int | None, max_context: int | None
) -> tuple[torch.Tensor, dict[str, Any] | None]:
    """`build_calibration_ids`, plus where the text came from when `dataset` is a named set ("c4", "wikitext2",
    "pileval"), a Hub dataset id, a local dataset folder or a `named_sets.TextSet` (None otherwise)."""
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
        check_windows_fit(num_samples, seqlen)
        if is_text_set_reference(dataset):
            ids, provenance = calibration_ids(dataset, tokenizer, num_samples, seqlen, seed)
        else:
            warn_if_shadowing(dataset)
            ids = draw_windows(token_stream(dataset, tokenizer), num_samples, seqlen, seed)
    if max_context is not None and ids.shape[1] > max_context:
        raise ValueError(
            f"Calibration windows of {ids.shape[1]} tokens are longer than the model's context ({max_context} positions)."
        )
    if ids.numel() and (int(ids.min()) < 0 or (vocab_size is not None and int(ids.max()) >= vocab_size)):
        raise ValueError(f"Calibration token ids must lie in [0, {vocab_size}); got values in [{int(ids.min())}, {int(ids.max())}].")
    return ids, provenance
