"""Writing a pruned checkpoint: plain safetensors with exact zeros, the recipe, the report, charts and a model card.

The folder loads with plain `AutoModelForCausalLM.from_pretrained`: no `quantization_config` and no
`sparsity_config` go into `config.json` (see docs: runtimes reject or mis-load sparse formats).
Everything is written into a temporary sibling folder first and moved in at the end, so an interrupted save
never leaves a folder that looks complete, and files of an earlier checkpoint are replaced, not mixed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from typing import Any

from torch import nn

from .config import CONFIG_NAME, SIConfig
from .offload import is_offloaded, offloaded_state_dict
from .plots import PLOT_FILES
from .report import REPORT_NAME, PruneReport

__all__ = ["save_pruned_model", "write_sidecars", "write_plots", "recipe_dict"]

logger = logging.getLogger(__name__)

_FORBIDDEN_CONFIG_KEYS = ("quantization_config", "sparsity_config", "compression_config")


def recipe_dict(config: SIConfig, model_config: Any, report: PruneReport | None, base_model: str | None = None) -> dict[str, Any]:
    """`si_config.json` content: the recipe plus, under `meta`, versions, base model and achieved sparsity."""
    data = config.to_dict()
    data["meta"].update(
        {
            "base_model": base_model or getattr(model_config, "_name_or_path", None) or None,
            "base_revision": getattr(model_config, "_commit_hash", None),
        }
    )
    if report is not None:
        data["meta"]["achieved_sparsity"] = report.sparsity
    return data


def write_plots(folder: str, report: PruneReport | None) -> dict[str, str]:
    """The charts of `report` (see `optimum_si.plots`) as `{kind: file name}`; empty without matplotlib (the optional
    `plots` extra) or without a report. Plotting never fails a save: a chart that cannot be drawn is logged and left
    out. Chart files of an earlier save that this one does not produce are removed, so the folder never shows a
    picture of another run."""
    from .plots import PlotUnavailable, render_plots

    written: dict[str, str] = {}
    if report is not None:
        try:
            written = render_plots(report, folder, strict=False)
        except PlotUnavailable:
            logger.info("matplotlib is not installed: no charts in %s (pip install 'optimum-si[plots]').", folder)
        except Exception as err:  # noqa: BLE001 - e.g. a report the chart code does not understand
            logger.warning("Could not draw the charts (%s: %s); the model card leaves them out.",
                           type(err).__name__, err)
    for name in PLOT_FILES:
        if name not in written.values() and os.path.isfile(os.path.join(folder, name)):
            os.remove(os.path.join(folder, name))
    return written


def write_sidecars(folder: str, config: SIConfig, report: PruneReport | None, model_config: Any,
                   base_model: str | None = None, card: bool = True, card_info: dict[str, Any] | None = None,
                   plots: bool = True) -> None:
    """Report, charts, model card and recipe; the recipe goes last, since its presence marks a complete checkpoint.
    The card links a chart only when its file was written."""
    if report is not None:
        report.save(folder)
    charts = write_plots(folder, report if plots else None)
    if card:
        from .model_card import build_model_card

        card_info = {k: v for k, v in (card_info or {}).items() if k != "plots"}  # links follow the files written
        build_model_card(model_config, config, report, base_model=base_model, plots=charts, **card_info).save(
            os.path.join(folder, "README.md"))
    tmp = os.path.join(folder, CONFIG_NAME + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(recipe_dict(config, model_config, report, base_model), handle, indent=2)
        handle.write("\n")
    os.replace(tmp, os.path.join(folder, CONFIG_NAME))


def save_pruned_model(
    model: nn.Module,
    save_dir: str | os.PathLike,
    config: SIConfig,
    report: PruneReport | None,
    tokenizer: Any = None,
    max_shard_size: str | int = "5GB",
    card: bool = True,
    card_info: dict[str, Any] | None = None,
    plots: bool = True,
) -> str:
    save_dir = os.fspath(save_dir)
    model_config = getattr(model, "config", None)
    for key in _FORBIDDEN_CONFIG_KEYS:
        if model_config is not None and getattr(model_config, key, None) is not None:
            raise ValueError(
                f"The model config carries a `{key}`; a pruned checkpoint must be plain dense safetensors. Remove it "
                f"(for GGUF-loaded models: model.hf_quantizer.remove_quantization_config(model))."
            )
    parent = os.path.dirname(os.path.abspath(save_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(save_dir)}.", dir=parent)
    try:
        # Offloaded modules sit on meta; their real (pruned) tensors live in the accelerate weights map.
        state_dict = offloaded_state_dict(model) if is_offloaded(model) else None
        model.save_pretrained(staging, max_shard_size=max_shard_size, state_dict=state_dict)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        write_sidecars(staging, config, report, model_config, card=card, card_info=card_info, plots=plots)
        _move_into(staging, save_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("Saved the pruned model to %s", save_dir)
    return save_dir


def _move_into(staging: str, save_dir: str) -> None:
    os.makedirs(save_dir, exist_ok=True)
    new_files = set(os.listdir(staging))
    # Shards of an earlier save that the new index does not list would confuse loaders; charts of an earlier run
    # would show another model.
    for name in os.listdir(save_dir):
        if name not in new_files and (name.endswith(".safetensors") or name == "model.safetensors.index.json"
                                      or name in PLOT_FILES):
            os.remove(os.path.join(save_dir, name))
    if CONFIG_NAME in os.listdir(save_dir):
        os.remove(os.path.join(save_dir, CONFIG_NAME))  # the folder reads as incomplete until the new recipe lands
    for name in sorted(new_files - {CONFIG_NAME}) + [CONFIG_NAME]:
        src = os.path.join(staging, name)
        dst = os.path.join(save_dir, name)
        if os.path.isdir(dst) and not os.path.islink(dst):
            shutil.rmtree(dst)
        os.replace(src, dst)
