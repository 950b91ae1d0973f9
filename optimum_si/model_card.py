"""Model card for a pruned checkpoint, rendered from the package's Jinja template through huggingface_hub."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from huggingface_hub import ModelCard, ModelCardData
from .config import SIConfig, version_stamp
from .report import PruneReport

__all__ = ["build_model_card", "TEMPLATE_PATH"]

TEMPLATE_PATH = os.path.join(os.path.dirname(__file__), "templates", "model_card.md.jinja")

_CITATIONS = {
    "si": "Jiang et al., Sparsity Induction for Accurate Post-Training Pruning of Large Language Models, arXiv 2602.21652 (2026).",
    "wanda": "Sun et al., A Simple and Effective Pruning Approach for Large Language Models (Wanda), arXiv 2306.11695 (ICLR 2024).",
    "sparsegpt": "Frantar & Alistarh, SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot, arXiv 2301.00774 (ICML 2023).",
    "magnitude": "Zhu & Gupta, To prune, or not to prune: exploring the efficacy of pruning for model compression, arXiv 1710.01878.",
}


_PLOT_KINDS = ("sparsity", "importance")


def build_model_card(model_config: Any, config: SIConfig, report: PruneReport | None, base_model: str | None = None,
                     plots: Mapping[str, str] | None = None, **extra: Any) -> ModelCard:
    """The card of a pruned checkpoint; `model_config` is the transformers config of the source model.

    `plots` maps chart kinds (`"sparsity"`, `"importance"`) to image files next to the card (see
    `optimum_si.plots.render_plots`); the card links exactly those, with relative links, so pass only files that
    exist. Without it the card has no images and is complete all the same."""
    base_model = base_model or getattr(model_config, "_name_or_path", None) or None
    if base_model and os.path.isabs(base_model):
        base_model = None  # a local path is meaningless on the Hub
    pattern = "unstructured" if config.mask_structure == "unstructured" else config.mask_structure
    tags = sorted({"sparse", "pruned", "sparsity", "optimum-si", config.method, pattern}
                  | ({"sparsity-induction"} if config.induction else set()))
    card_data = ModelCardData(
        base_model=base_model,
        library_name="transformers",
        pipeline_tag="text-generation",
        license=extra.pop("license", None),
        tags=tags,
    )
    citations = [_CITATIONS[config.method]] + ([_CITATIONS["si"]] if config.induction else [])
    if report is not None:
        extra.setdefault("pruned_layers", len(report.layers))
        extra.setdefault("achieved_sparsity", report.sparsity)
        extra.setdefault("perplexity", dict(report.perplexity))
    return ModelCard.from_template(
        card_data,
        template_path=TEMPLATE_PATH,
        model_name=extra.pop("model_name", None) or (base_model or "model").split("/")[-1] + "-pruned",
        base_model_name=base_model or "a local model",
        config=config,
        recipe=config.to_dict(),
        report=report.to_dict() if report is not None else None,
        versions=version_stamp(),
        citations=citations,
        plots={k: v for k, v in (plots or {}).items() if k in _PLOT_KINDS and v and not os.path.isabs(v)},
        **extra,
    )
