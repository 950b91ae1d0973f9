"""Perplexity with the standard protocol of the SparseGPT/Wanda lineage.

One token stream, cut into non-overlapping windows of `seqlen` (the remainder is dropped); per window the mean
next-token NLL times `seqlen`; PPL = exp(sum / (windows * seqlen)). This is the `eval_ppl` convention of the
Wanda code (locuslab/wanda `lib/eval.py`). The text may be a named set ("wikitext2": the test split joined with
blank lines; "c4": 256 windows of the first 1100 validation documents), see `optimum_si.data.named_sets`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

__all__ = ["perplexity"]

# perplexity() shows a progress bar by default from this many batches on (a few seconds each on a CPU for 2048-token
# windows of a small model; minutes in all).
PROGRESS_MIN_BATCHES = 8


@torch.no_grad()
def perplexity(
    model: nn.Module,
    tokenizer_or_ids: Any,
    text: str | None = None,
    seqlen: int = 2048,
    max_windows: int | None = None,
    batch_size: int = 1,
    device: str | torch.device | None = None,
    show_progress: bool | None = None,
) -> float:
    """Perplexity of `model` on `text` (tokenised once with the tokenizer) or on a 1-D/2-D tensor of token ids.

    `show_progress`: a tqdm bar over the batches; by default (None) only for long runs, of `PROGRESS_MIN_BATCHES` or
    more batches.

    `text` may also name a set of `optimum_si.data.named_sets.NAMED_SETS` ("wikitext2", "c4") or be a
    `named_sets.TextSet` (any Hub dataset or local folder, e.g. `text_set("owner/name", "evaluation",
    split="test")`): it is loaded through `datasets` and joined as the literature does."""
    # A window of one token has no next token to predict: its mean NLL is 0/0.
    for name, value, low in (("seqlen", seqlen, 2), ("batch_size", batch_size, 1), ("max_windows", max_windows, 1)):
        if value is None and name == "max_windows":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
    if device is not None:
        from ..modeling.devices import check_device_available

        check_device_available(device)
    if isinstance(tokenizer_or_ids, torch.Tensor):
        if tokenizer_or_ids.dtype.is_floating_point or tokenizer_or_ids.dtype.is_complex or \
                tokenizer_or_ids.dtype == torch.bool:
            raise ValueError(f"Token ids must be an integer tensor, got dtype {tokenizer_or_ids.dtype}.")
        ids = tokenizer_or_ids.reshape(-1).long()
    elif _is_named_set(text):
        from ..data.named_sets import evaluation_ids

        ids, _record = evaluation_ids(text, tokenizer_or_ids, seqlen)
    else:
        if text is None:
            raise ValueError("Pass the evaluation text, or a tensor of token ids instead of a tokenizer.")
        ids = torch.as_tensor(tokenizer_or_ids(text, verbose=False)["input_ids"], dtype=torch.long).reshape(-1)
    vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
    if ids.numel() and (int(ids.min()) < 0 or (isinstance(vocab_size, int) and int(ids.max()) >= vocab_size)):
        raise ValueError(f"Token ids must lie in [0, {vocab_size}) for this model; got values in "
                         f"[{int(ids.min())}, {int(ids.max())}] (a tokenizer of another model?).")
    windows = ids.numel() // seqlen
    if max_windows is not None:
        windows = min(windows, max_windows)
    if windows < 1:
        raise ValueError(f"The evaluation text has {ids.numel()} tokens, fewer than one window of seqlen={seqlen}.")
    if device is None:
        device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_nll = 0.0
    try:
        starts = list(range(0, windows, batch_size))
        if show_progress is None:
            show_progress = len(starts) >= PROGRESS_MIN_BATCHES
        for first in tqdm(starts, desc="Perplexity", unit="window" if batch_size == 1 else "batch",
                          disable=not show_progress):
            count = min(batch_size, windows - first)
            batch = ids[first * seqlen:(first + count) * seqlen].reshape(count, seqlen).to(device)
            logits = model(input_ids=batch, use_cache=False).logits.float()
            nll = nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="none"
            ).reshape(count, seqlen - 1)
            total_nll += float(nll.mean(dim=1).sum()) * seqlen
    finally:
        model.train(was_training)
    mean_nll = total_nll / (windows * seqlen)
    if not math.isfinite(mean_nll):
        raise FloatingPointError(
            "The model's loss on the evaluation text is NaN or inf: its weights or activations are not finite (check "
            "the checkpoint, or evaluate in float32)."
        )
    return math.exp(mean_nll) if mean_nll < 709.0 else math.inf  # math.exp overflows (raises) past ~709.78


def _is_named_set(text: Any) -> bool:
    # Only exact set names and TextSet objects: any other string stays evaluation text, as it always was.
    from ..data.named_sets import NAMED_SETS, LoadedTextSet, TextSet

    return isinstance(text, (TextSet, LoadedTextSet)) or (isinstance(text, str) and text in NAMED_SETS)
