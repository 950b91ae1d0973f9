"""Perplexity with the standard protocol of the SparseGPT/Wanda lineage, and zero-shot accuracy through
lm-evaluation-harness.

One token stream, cut into non-overlapping windows of `seqlen` (the remainder is dropped); per window the mean
next-token NLL times `seqlen`; PPL = exp(sum / (windows * seqlen)). This is the `eval_ppl` convention of the
Wanda code (locuslab/wanda `lib/eval.py`). The text may be a named set ("wikitext2": the test split joined with
blank lines; "c4": 256 windows of the first 1100 validation documents), see `optimum_si.calibration_sets`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

__all__ = ["perplexity", "zero_shot", "TASK_PRESETS"]

# perplexity() shows a progress bar by default from this many batches on (a few seconds each on a CPU for 2048-token
# windows of a small model; minutes in all).
PROGRESS_MIN_BATCHES = 8

# The seven zero-shot tasks of the Wanda paper (Table 2), as lm-evaluation-harness names them.
TASK_PRESETS = {"wanda7": ("boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")}


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

    `text` may also name a set of `optimum_si.calibration_sets.NAMED_SETS` ("wikitext2", "c4") or be a
    `calibration_sets.TextSet` (any Hub dataset or local folder, e.g. `text_set("owner/name", "evaluation",
    split="test")`): it is loaded through `datasets` and joined as the literature does."""
    # A window of one token has no next token to predict: its mean NLL is 0/0.
    for name, value, low in (("seqlen", seqlen, 2), ("batch_size", batch_size, 1), ("max_windows", max_windows, 1)):
        if value is None and name == "max_windows":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
    if device is not None:
        from .devices import check_device_available

        check_device_available(device)
    if isinstance(tokenizer_or_ids, torch.Tensor):
        if tokenizer_or_ids.dtype.is_floating_point or tokenizer_or_ids.dtype.is_complex or \
                tokenizer_or_ids.dtype == torch.bool:
            raise ValueError(f"Token ids must be an integer tensor, got dtype {tokenizer_or_ids.dtype}.")
        ids = tokenizer_or_ids.reshape(-1).long()
    elif _is_named_set(text):
        from .calibration_sets import evaluation_ids

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
    from .calibration_sets import NAMED_SETS, TextSet

    return isinstance(text, TextSet) or (isinstance(text, str) and text in NAMED_SETS)


def zero_shot(
    model: nn.Module,
    tokenizer: Any,
    tasks: str | list[str] | tuple[str, ...] = "wanda7",
    num_fewshot: int = 0,
    limit: int | float | None = None,
    include_path: str | None = None,
    batch_size: int = 1,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Zero-shot (or `num_fewshot`-shot) scores of the in-memory `model` with lm-evaluation-harness, as
    `{task: {metric: value}}` (e.g. `{"boolq": {"acc": 0.71, "acc_stderr": 0.008}}`).

    `tasks`: lm-eval task names, or a preset of `TASK_PRESETS` ("wanda7": BoolQ, RTE, HellaSwag, WinoGrande,
    ARC-e, ARC-c, OpenBookQA). `include_path` adds a folder of task YAML files; `limit` caps the documents per task
    (for quick checks; the scores are then not comparable with published ones). Needs the `eval` extra
    (`pip install "optimum-si[eval]"`) and the tasks' datasets (from the Hub, or its cache when offline)."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ImportError('Zero-shot evaluation needs lm-evaluation-harness: pip install "optimum-si[eval]".') from None
    names = _task_names(tasks)
    # Indexing lm-eval's ~15k built-in task files takes many seconds: skip it when include_path has every task.
    manager = TaskManager(include_path=include_path, include_defaults=False) if include_path else None
    if manager is None or any(name not in manager.all_tasks for name in names):
        manager = TaskManager(include_path=include_path)
    unknown = [name for name in names if name not in manager.all_tasks]
    if unknown:
        raise ValueError(f"Unknown lm-eval task(s) {unknown}; check the names (`lm-eval ls tasks`), or pass "
                         "include_path= for your own task YAML files.")
    device = next(model.parameters()).device
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(device))
    was_training = model.training
    try:
        output = lm_eval.simple_evaluate(model=lm, tasks=names, num_fewshot=num_fewshot, limit=limit,
                                         task_manager=manager, log_samples=False, random_seed=seed,
                                         numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    finally:
        model.train(was_training)
    return {task: _metrics(values) for task, values in output["results"].items() if task in names}


def _task_names(tasks: str | list[str] | tuple[str, ...]) -> list[str]:
    names: list[str] = []
    for task in [tasks] if isinstance(tasks, str) else list(tasks):
        names.extend(TASK_PRESETS.get(task, (task,)))
    if not names:
        raise ValueError(f"No tasks given; pass lm-eval task names or a preset ({', '.join(TASK_PRESETS)}).")
    return list(dict.fromkeys(names))


def _metrics(values: dict[str, Any]) -> dict[str, float]:
    """lm-eval's `{"acc,none": 0.5, "alias": ..., "sample_len": 3}` as `{"acc": 0.5}`: metrics carry a filter suffix
    (",none"), bookkeeping entries do not; the suffix is dropped, and non-numbers ("N/A" standard errors) too."""
    metrics = {}
    for key, value in values.items():
        if "," in key and isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics[key.split(",")[0]] = float(value)
    return metrics
