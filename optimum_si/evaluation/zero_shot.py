"""Zero-shot (or few-shot) task scores of an in-memory model through lm-evaluation-harness (the `eval` extra)."""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["zero_shot", "TASK_PRESETS"]

# The seven zero-shot tasks of the Wanda paper (Table 2), as lm-evaluation-harness names them.
TASK_PRESETS = {"wanda7": ("boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")}


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
    (the `eval` extra) and the tasks' datasets (from the Hub, or its cache when offline)."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ImportError('Zero-shot evaluation needs lm-evaluation-harness (the `eval` extra): '
                          'pip install "lm-eval>=0.4.5".') from None
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
    from ..network import hub_access

    try:
        with hub_access(f"load the datasets of the tasks {', '.join(names)}", datasets=True):
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
