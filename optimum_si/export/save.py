"""Writing a pruned checkpoint: plain safetensors with exact zeros, the recipe, the report, charts and a model card.

The folder loads with plain `AutoModelForCausalLM.from_pretrained`: no `quantization_config` and no
`sparsity_config` go into `config.json` (see docs: runtimes reject or mis-load sparse formats).
Everything is written into a staging sibling folder and swapped in as a whole at the end (`optimum_si.checkpoint.folders`), under
the folder's lock (`optimum_si.checkpoint.locking`): an interrupted save leaves the previous checkpoint or the new one, never a
mix, and files in `save_dir` that optimum-si did not write are kept.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any

from torch import nn

from ..checkpoint import folders
from ..checkpoint.files import CARD_NAME, CONFIG_NAME, PLOT_FILES
from ..checkpoint.locking import output_lock
from ..checkpoint.shards import parse_size
from ..modeling.offload import is_offloaded, offloaded_state_dict
from ..recipe.config import SIConfig
from ..reporting.report import PruneReport
from .card import build_model_card, resolve_base_model

__all__ = ["save_pruned_model", "write_sidecars", "write_plots", "recipe_dict"]

logger = logging.getLogger(__name__)

_FORBIDDEN_CONFIG_KEYS = ("quantization_config", "sparsity_config", "compression_config")


def recipe_dict(config: SIConfig, model_config: Any, report: PruneReport | None, base_model: str | None = None) -> dict[str, Any]:
    """`si_config.json` content: the recipe plus, under `meta`, versions, base model and achieved sparsity."""
    data = config.to_dict()
    # A local path means nothing to readers of a published recipe: only Hub ids (or a Hub cache snapshot's) go in.
    repo_id, snapshot_revision = resolve_base_model(base_model or getattr(model_config, "_name_or_path", None))
    data["meta"].update(
        {
            "base_model": repo_id,
            "base_revision": getattr(model_config, "_commit_hash", None) or snapshot_revision,
        }
    )
    if report is not None:
        data["meta"]["achieved_sparsity"] = report.sparsity
        if report.calibration:
            data["meta"]["calibration"] = report.calibration
    return data


def write_plots(folder: str, report: PruneReport | None) -> dict[str, str]:
    """The charts of `report` (see `optimum_si.reporting.plots`) as `{kind: file name}`; empty without matplotlib (the optional
    `plots` extra) or without a report. Plotting never fails a save: a chart that cannot be drawn is logged and left
    out. Chart files of an earlier save that this one does not produce are removed, so the folder never shows a
    picture of another run."""
    from ..reporting.plots import PlotUnavailable, render_plots

    written: dict[str, str] = {}
    if report is not None:
        try:
            written = render_plots(report, folder, strict=False)
        except PlotUnavailable:
            logger.info("matplotlib is not installed: no charts in %s (the `plots` extra: pip install matplotlib).",
                        folder)
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
        card_info = {k: v for k, v in (card_info or {}).items() if k != "plots"}  # links follow the files written
        build_model_card(model_config, config, report, base_model=base_model, plots=charts, **card_info).save(
            os.path.join(folder, CARD_NAME))
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
    base_model: str | None = None,
    overwrite: bool = False,
) -> str:
    save_dir = os.fspath(save_dir)
    model_config = getattr(model, "config", None)
    for key in _FORBIDDEN_CONFIG_KEYS:
        if model_config is not None and getattr(model_config, key, None) is not None:
            raise ValueError(
                f"The model config carries a `{key}`; a pruned checkpoint must be plain dense safetensors. Remove it "
                f"(for GGUF-loaded models: model.hf_quantizer.remove_quantization_config(model))."
            )
    target = folders.resolve(save_dir)
    source = getattr(model_config, "_name_or_path", None)
    folders.check_target(target, source if source and os.path.isdir(source) else None)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with output_lock(target):
        folders.recover(target)
        existing = folders.describe(target)
        folders.check_replace(save_dir, existing, overwrite)
        staging = folders.work_folder(target, "staging")
        os.makedirs(staging)
        try:
            # Offloaded modules sit on meta; their real (pruned) tensors live in the accelerate weights map.
            state_dict = offloaded_state_dict(model) if is_offloaded(model) else None
            model.save_pretrained(staging, max_shard_size=parse_size(max_shard_size), state_dict=state_dict)
            if tokenizer is not None:
                tokenizer.save_pretrained(staging)
            write_sidecars(staging, config, report, model_config, base_model=base_model, card=card, card_info=card_info,
                           plots=plots)
            folders.write_manifest(staging)
            folders.publish(staging, target, existing)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("Saved the pruned model to %s", save_dir)
    return save_dir
