"""Model card for a pruned checkpoint, rendered from the package's Jinja template through huggingface_hub."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..data.named_sets import NAMED_SETS
from ..recipe.config import SIConfig
from ..reporting.report import PruneReport
from ..version import version_stamp

__all__ = ["build_model_card", "resolve_base_model", "TEMPLATE_PATH"]

TEMPLATE_PATH = os.path.join(os.path.dirname(__file__), "templates", "model_card.md.jinja")

# The base method's citation comes from its registered `PruningMethod` (optimum_si.methods).
_OWL_CITATION = ("Yin et al., Outlier Weighed Layerwise Sparsity (OWL): A Missing Secret Sauce for Pruning LLMs to "
                 "High Sparsity, arXiv 2310.05175 (ICML 2024).")
_SI_CITATION = ("Jiang et al., Sparsity Induction for Accurate Post-Training Pruning of Large Language Models, "
                "arXiv 2602.21652 (2026).")


_PLOT_KINDS = ("output_error", "sparsity")

# A file in the Hugging Face cache: .../models--org--name/snapshots/<commit>/...
_CACHE_SNAPSHOT = re.compile(r"models--(?P<repo>[^/\\]+)[/\\]snapshots[/\\](?P<revision>[0-9a-f]{40})(?:[/\\]|$)")
_LM_EVAL_URL = "https://github.com/EleutherAI/lm-evaluation-harness"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def resolve_base_model(name_or_path: str | os.PathLike | None) -> tuple[str | None, str | None]:
    """`(repo id, revision)` of a base model given as a Hub id or as a Hugging Face cache snapshot folder; `(None,
    None)` for any other local path, which means nothing on the Hub and must not be published."""
    if not name_or_path:
        return None, None
    value = os.fspath(name_or_path)
    snapshot = _CACHE_SNAPSHOT.search(value)
    if snapshot:  # "--" cannot occur in a Hub name, so it only separates owner and name here
        return snapshot["repo"].replace("--", "/"), snapshot["revision"]
    if _HUB_ID.match(value) and not os.path.exists(value):
        return value, None
    return None, None


def _local_name(name_or_path: str | os.PathLike | None) -> str | None:
    """The last part of a local model's path (`/data/models/my-llama/` -> `my-llama`): a name for its card that
    publishes nothing else of the path."""
    if not name_or_path:
        return None
    return os.path.basename(os.path.normpath(os.fspath(name_or_path))) or None


def _dataset_label(name: str) -> tuple[str, str | None, str | None]:
    """(Hub dataset id, config, split) of an evaluation set for model-index metadata."""
    named = NAMED_SETS.get(name, {}).get("evaluation")
    if named is not None:
        return named.path, named.config, named.split
    return name, None, None


def _eval_results(report: PruneReport | None) -> list[EvalResult]:
    """model-index entries for the pruned model's perplexities on named sets and its zero-shot scores."""
    if report is None:
        return []
    results = []
    for name, value in report.dataset_perplexity.get("pruned", {}).items():
        dataset, dataset_config, split = _dataset_label(name)
        results.append(EvalResult(task_type="text-generation", dataset_type=dataset, dataset_name=name,
                                  dataset_config=dataset_config, dataset_split=split, metric_type="perplexity",
                                  metric_value=round(float(value), 4)))
    for task, metrics in report.zero_shot.get("pruned", {}).items():
        for metric, value in metrics.items():
            if not metric.endswith("_stderr"):  # standard errors stay in si_report.json
                results.append(EvalResult(task_type="text-generation", dataset_type=task, dataset_name=task,
                                          metric_type=metric, metric_value=round(float(value), 4),
                                          source_name="lm-evaluation-harness", source_url=_LM_EVAL_URL))
    return results


def _results_table(report: PruneReport | None) -> list[dict[str, Any]]:
    """Rows `{label, dense, pruned}` (None where not measured), perplexities first, then zero-shot metrics."""
    if report is None:
        return []
    rows = []
    names = dict.fromkeys([*report.dataset_perplexity.get("dense", {}), *report.dataset_perplexity.get("pruned", {})])
    for name in names:
        rows.append({"label": f"{name} perplexity", "dense": report.dataset_perplexity.get("dense", {}).get(name),
                     "pruned": report.dataset_perplexity.get("pruned", {}).get(name)})
    tasks = dict.fromkeys([*report.zero_shot.get("dense", {}), *report.zero_shot.get("pruned", {})])
    for task in tasks:
        dense = report.zero_shot.get("dense", {}).get(task, {})
        pruned = report.zero_shot.get("pruned", {}).get(task, {})
        for metric in (m for m in dict.fromkeys([*dense, *pruned]) if not m.endswith("_stderr")):
            rows.append({"label": f"{task} {metric}", "dense": dense.get(metric), "pruned": pruned.get(metric)})
    return rows


def _calibration_text(record: Mapping[str, Any] | None) -> str | None:
    """One line for the card: which text set, where from, at which revision."""
    if not record:
        return None
    where = ", ".join(f"{key} {record[key]}" for key in ("config", "split", "revision") if record.get(key))
    commit = f" (commit {record['commit'][:12]})" if record.get("commit") else ""
    source = f"`{record['repo']}`" if record.get("repo") else "a local dataset folder"
    return f"{record['name']}: {source}, {where}{commit}, {record.get('sampling')} sampling"


def build_model_card(model_config: Any, config: SIConfig, report: PruneReport | None, base_model: str | None = None,
                     plots: Mapping[str, str] | None = None, **extra: Any) -> ModelCard:
    """The card of a pruned checkpoint; `model_config` is the transformers config of the source model.

    `plots` maps chart kinds (`"output_error"`, `"sparsity"`) to image files next to the card (see
    `optimum_si.reporting.plots.render_plots`); the card links exactly those, with relative links, so pass only files that
    exist. Without it the card has no images and is complete all the same.

    `extra` fills the template's optional fields: `model_name`, `repo_id`, `license`, `weights_source`,
    `calibration` (a line on the calibration text), `perplexity` (`{label: value}`), `si_perplexity`
    (`{"without": ..., "with": ..., "on": "<evaluation text>"}`: the base method alone and with Sparsity
    Induction, which leads the SI section), `versions` (`{package: version}` of the run, when the card is rendered
    in another environment), and `pruned_layers` / `achieved_sparsity` without a report."""
    base_model, _revision = resolve_base_model(base_model or getattr(model_config, "_name_or_path", None))
    repo_id = extra.pop("repo_id", None)
    calibration = report.calibration if report is not None else None
    eval_results = _eval_results(report)
    model_type = getattr(model_config, "model_type", None) or "causal LM"
    local_name = _local_name(getattr(model_config, "_name_or_path", None))
    model_name = (extra.pop("model_name", None) or (repo_id.split("/")[-1] if repo_id else None)
                  or (base_model.split("/")[-1] + "-pruned" if base_model else None)
                  or (f"{local_name}-pruned" if local_name else f"Pruned {model_type}"))
    pattern = "unstructured" if config.mask_structure == "unstructured" else config.mask_structure
    tags = sorted({"sparse", "pruned", "sparsity", "optimum-si", config.method, pattern}
                  | ({"sparsity-induction"} if config.induction else set())
                  | ({"reconstruction"} if config.reconstruction else set()))
    card_data = ModelCardData(
        base_model=base_model,
        library_name="transformers",
        pipeline_tag="text-generation",
        license=extra.pop("license", None),
        tags=tags,
        datasets=[calibration["repo"]] if calibration and calibration.get("repo") else None,
        model_name=model_name if eval_results else None,
        eval_results=eval_results or None,
    )
    method = config.pruning_method
    owl = config.profile_args
    citations = [c for c in [method.citation, _OWL_CITATION if owl else "", _SI_CITATION if config.induction else ""]
                 if c]
    method_rows = method.card_rows(config.pattern) + ([(
        "Sparsity profile", f"OWL: per-block sparsities with mean {config.sparsity:g} (M = {owl.m:g}, "
        f"lambda = {owl.lam:g})")] if owl else [])
    if report is not None:
        extra.setdefault("pruned_layers", len(report.layers))
        extra.setdefault("achieved_sparsity", report.sparsity)
        extra.setdefault("perplexity", dict(report.perplexity))
        extra.setdefault("induction_summary", report.induction_summary())
        extra.setdefault("reconstruction_summary", report.reconstruction_summary())
    recipe = config.to_dict()
    return ModelCard.from_template(
        card_data,
        template_path=TEMPLATE_PATH,
        model_name=model_name,
        base_model_name=base_model or f"A local {model_type} model",
        repo_id=repo_id,
        calibration_source=_calibration_text(calibration),
        results=_results_table(report),
        evaluation_seqlen=report.evaluation_seqlen if report is not None else None,
        config=config,
        recipe=recipe,
        recipe_json=json.dumps({k: v for k, v in recipe.items() if k != "meta"}, indent=2),
        report=report.to_dict() if report is not None else None,
        versions=extra.pop("versions", None) or version_stamp(),
        citations=citations,
        method_rows=method_rows,
        plots={k: v for k, v in (plots or {}).items() if k in _PLOT_KINDS and v and not os.path.isabs(v)},
        **extra,
    )
