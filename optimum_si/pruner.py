"""`SIPruner`: the public entry point, shaped like Optimum's `GPTQQuantizer`. It holds a recipe (`SIConfig`) and run
options (`RunOptions`) and hands each call to its run: `optimum_si.runs.in_memory` for a model in memory,
`optimum_si.runs.streamed` for a checkpoint folder or Hub repo, `optimum_si.export` to save and `optimum_si.hub` to
push. No tensor maths here."""

from __future__ import annotations

import logging
import os
import weakref
from typing import Any

import torch
from torch import nn

from . import distributed
from .checkpoint import folders
from .checkpoint.shards import parse_size
from .recipe.config import SIConfig
from .recipe.run_options import RunOptions
from .reporting.report import PruneReport
from .runs.in_memory import PRUNED_FLAG, prune_in_memory

__all__ = ["SIPruner"]

logger = logging.getLogger(__name__)

_RUN_OPTIONS = tuple(RunOptions.field_names())


def _split_options(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(recipe fields, run options) of keyword arguments."""
    options = {name: kwargs.pop(name) for name in list(kwargs) if name in _RUN_OPTIONS}
    return kwargs, options


def _check_replace(save_dir: str | os.PathLike, overwrite: bool) -> None:
    """Refuse, before any work, a save_dir that holds a pruned checkpoint (the save checks again under its lock)."""
    folders.check_replace(save_dir, folders.describe(folders.resolve(save_dir)), overwrite)


class SIPruner:
    """Prunes a causal LM block by block with a base method (magnitude, Wanda, SparseGPT, RIA, Z-Pruner, ALPS, or
    your own), optionally with OWL's allocation and Sparsity Induction.

    Lifecycle::

        pruner = SIPruner(SIConfig(method="wanda", sparsity=0.5))   # or SIPruner(method="wanda", sparsity=0.5)
        model = pruner.prune(model, tokenizer=tok, dataset=texts)    # in place; returns the model
        pruner.report                                                 # per-layer sparsity, errors, timings
        pruner.save(model, "out/")                                    # safetensors + si_config.json + card

    Keyword arguments are recipe fields, or run options (`device`, `activation_storage`, `activation_dir`,
    `show_progress`: see `RunOptions`), which apply to every run of this pruner and are never saved.
    """

    def __init__(self, config: SIConfig | dict | None = None, *, options: RunOptions | None = None,
                 **kwargs: Any) -> None:
        recipe, run_options = _split_options(dict(kwargs))
        if config is None:
            config = SIConfig.from_dict(recipe)
        elif isinstance(config, dict):
            config = SIConfig.from_dict(config, **recipe)
        elif isinstance(config, SIConfig):
            if recipe:
                config = config.replace(**recipe)
        else:
            raise TypeError(f"SIPruner expects an SIConfig (or keyword arguments), got {type(config).__name__}.")
        if options is not None and not isinstance(options, RunOptions):
            raise TypeError(f"options must be a RunOptions, got {type(options).__name__}.")
        self.config = config
        self.options = (options or RunOptions()).replace(**run_options) if run_options else (options or RunOptions())
        self.report: PruneReport | None = None
        self._report_model: weakref.ref[nn.Module] | None = None  # the in-memory model `report` describes
        self._tokenizer = None
        self._calibration_ids: torch.Tensor | None = None

    @classmethod
    def from_pretrained(cls, dir_or_repo: str | os.PathLike, **overrides: Any) -> SIPruner:
        """Load the recipe (`si_config.json`) of a folder or Hub repo; keyword arguments override its fields (or are
        run options)."""
        recipe, run_options = _split_options(dict(overrides))
        return cls(SIConfig.from_pretrained(dir_or_repo, **recipe), **run_options)

    # ------------------------------------------------------------------------------------------ prune
    @distributed.entry_point  # under torchrun: one data-parallel run over all ranks (optimum_si.distributed)
    def prune(self, model: nn.Module | str | os.PathLike, tokenizer: Any = None, dataset: Any = None, *,
              save_dir: str | os.PathLike | None = None, max_shard_size: str | int = "5GB", overwrite: bool = False,
              revision: str | None = None, token: str | None = None, device: str | None = None,
              activation_storage: str | None = None, activation_dir: str | None = None,
              show_progress: bool | None = None) -> nn.Module | str:
        """Prune `model` in place and return it. `dataset` is the calibration data (see `SIConfig` and
        `optimum_si.data.calibration`); plain magnitude pruning needs none.

        Given a local folder or Hub repo id instead of a model, the checkpoint is *streamed*: built on the meta device,
        read one decoder block at a time from its safetensors shards and written block by block to `save_dir`
        (resumable; see `optimum_si.runs.streamed`). Returns `save_dir` then.

        Every check (config vs model, calibration data, finite weights) runs before any weight is touched; if the
        run fails later, the weights already changed are restored before the error propagates.

        An in-memory model with `save_dir` is pruned and then saved there (`save`); `revision` and `token` belong to
        streaming and are refused for an in-memory model rather than ignored. Either way, a `save_dir` that already
        holds a pruned checkpoint is refused before any weight changes unless `overwrite=True` (a streamed run
        resumes, or finds complete, a folder of this very run).

        `device`, `activation_storage`, `activation_dir` and `show_progress` are run options for this call (they
        override the pruner's; all give the same result and none is written to the saved recipe).
        """
        options = self.options.updated(device=device, activation_storage=activation_storage,
                                       activation_dir=activation_dir, show_progress=show_progress)
        parse_size(max_shard_size)  # a bad size is refused before any weight is touched
        self.report, self._report_model = None, None  # a failed run must not leave an earlier run's report for save()
        if isinstance(model, (str, os.PathLike)):
            if save_dir is None:
                raise ValueError("Streaming a checkpoint needs an output folder: prune(path, save_dir='out/', ...).")
            from .runs.streamed import prune_checkpoint

            self.report = prune_checkpoint(self.config, options, os.fspath(model), os.fspath(save_dir), tokenizer,
                                           dataset, max_shard_size, overwrite, revision, token)
            done = os.fspath(save_dir)
            group = distributed.active()
            if group is not None and group.is_main:  # the folder is complete: release the ranks waiting for it
                group.release_followers()
            return done
        streaming_only = [name for name, value in (("revision", revision), ("token", token)) if value]
        if streaming_only:
            raise ValueError(f"{', '.join(streaming_only)} only apply when streaming a checkpoint (prune('<folder or "
                             "repo>', save_dir=...)); an in-memory model takes none of them.")
        if overwrite and save_dir is None:
            raise ValueError("overwrite applies to save_dir: pass save_dir='out/' with it, or save(..., overwrite=True).")
        if save_dir is not None:
            _check_replace(save_dir, overwrite)
        self._run(model, tokenizer, dataset, self.config, options, prune=True)
        if save_dir is not None:
            self.save(model, save_dir, tokenizer=tokenizer, max_shard_size=max_shard_size, overwrite=overwrite)
        return model

    @distributed.entry_point
    def induce(self, model: nn.Module, tokenizer: Any = None, dataset: Any = None) -> nn.Module:
        """Run only the distribution-level Sparsity Induction and fold it into `model` (in place; returned).

        The dense function is unchanged (up to rounding); the folded weights are what the base pruner then sees, so
        the result can be inspected or handed to another pruner.
        """
        if not isinstance(model, nn.Module):
            raise TypeError(f"induce() expects a torch.nn.Module, got {type(model).__name__}.")
        self.report, self._report_model = None, None
        self._run(model, tokenizer, dataset, self.config.replace(induction=True), self.options, prune=False)
        return model

    def _run(self, model: nn.Module, tokenizer: Any, dataset: Any, config: SIConfig, options: RunOptions,
             prune: bool) -> None:
        report, run = prune_in_memory(config, options, model, tokenizer, dataset, prune=prune)
        self._tokenizer = tokenizer
        self._calibration_ids = run.ids
        self.report, self._report_model = report, weakref.ref(model)

    # ------------------------------------------------------------------------------------------ save
    @distributed.entry_point
    def save(self, model: nn.Module, save_dir: str | os.PathLike, tokenizer: Any = None, max_shard_size: str | int = "5GB",
             perplexity: dict[str, float] | None = None, push_to_hub: bool = False, repo_id: str | None = None,
             card_info: dict[str, Any] | None = None, plots: bool = True, base_model: str | None = None,
             results: dict[str, Any] | None = None, dense_results: dict[str, Any] | None = None,
             overwrite: bool = False, **push_kwargs: Any) -> str:
        """Write the pruned model (safetensors), `si_config.json`, `si_report.json`, the tokenizer and a model card;
        with `push_to_hub=True`, then upload the folder to `repo_id` (see `push_to_hub`). `card_info` adds fields to
        the model card (e.g. `calibration="..."`, `license="apache-2.0"`, `model_name=...`).

        `base_model="org/name"` names the source on the Hub when the model was loaded from a local folder (a Hub cache
        snapshot is recognised by itself; other local paths are never written). `results` / `dense_results` are the
        pruned / dense model's `{"perplexity": {"wikitext2": ...}, "zero_shot": {...}, "seqlen": n}` (see
        `optimum_si.evaluation`): they go into `si_report.json` and the card's table and model-index metadata.

        With matplotlib installed (the `plots` extra) and `plots=True`, the folder also gets
        `output_error_per_block.png` (relative output error of each block; after Sparsity Induction, the base pruner
        alone against SI) and, only when the Linears got different sparsities, `sparsity_per_layer.png`, linked from
        the card; without matplotlib they are skipped (logged at INFO). Plotting never fails a save.
        `card_info={"weights_source": "..."}` adds a line saying where the source weights came from, and
        `card_info={"si_perplexity": {"without": 95.2, "with": 88.5, "on": "wikitext2"}}` the perplexity of the base
        method alone and with Sparsity Induction, which leads the card's SI section.

        A `save_dir` that already holds a pruned checkpoint is refused unless `overwrite=True` (files of yours in
        it are kept either way)."""
        from .checkpoint.folders import resolve
        from .export.save import save_pruned_model

        if push_to_hub and not repo_id:
            raise ValueError("save(..., push_to_hub=True) needs repo_id='owner/name'.")
        shard_bytes = parse_size(max_shard_size)
        # Rank 0 alone writes: every rank must have been asked for the same folder and shards.
        distributed.agree({"the output's folder": resolve(save_dir), "the output's shard size": shard_bytes,
                           "the Hub repo to push to": repo_id if push_to_hub else None})
        _check_replace(save_dir, overwrite)
        if self.report is not None and self._report_model is not None and self._report_model() is not model:
            raise ValueError("This pruner's report describes another model than the one given to save(); save the "
                             "model this pruner last pruned, or prune this one first.")
        if self.report is None and not getattr(model, PRUNED_FLAG, False):
            raise ValueError("This model has not been pruned by optimum-si (or its prune failed, and its weights were "
                             "restored): saving it would publish dense weights under a pruning recipe. Prune it first.")
        if self.report is not None and perplexity:
            self.report.perplexity.update(perplexity)
        for kind, given in (("pruned", results), ("dense", dense_results)):
            if given and self.report is not None:
                self.report.add_results(given, kind)
        if repo_id:  # the card's loading snippet names the repo instead of "this folder"
            card_info = {"repo_id": repo_id, **(card_info or {})}
        group = distributed.active()
        if group is not None and not group.is_main:  # rank 0 writes; the others wait for its path (a barrier)
            return group.broadcast_object()
        path = save_pruned_model(
            model, save_dir, self.config, self.report, tokenizer if tokenizer is not None else self._tokenizer,
            max_shard_size=max_shard_size, card_info=card_info, plots=plots, base_model=base_model, overwrite=overwrite,
        )
        if push_to_hub:
            self.push_to_hub(path, repo_id, **push_kwargs)
        return group.broadcast_object(path) if group is not None else path

    @staticmethod
    @distributed.entry_point
    def push_to_hub(save_dir: str | os.PathLike, repo_id: str, *, private: bool | None = None, token: str | None = None,
                    commit_message: str | None = None, create_pr: bool = False, endpoint: str | None = None) -> str:
        """Upload a saved checkpoint folder to the Hub (`HfApi.create_repo(exist_ok=True)` + `upload_folder`).
        Returns the commit URL; errors raise `optimum_si.hub.HubPushError` and leave the folder untouched."""
        from .hub import push_to_hub

        distributed.agree({"the Hub repo to push to": repo_id, "the folder to push": os.path.realpath(save_dir)
                           if isinstance(save_dir, (str, os.PathLike)) else repr(save_dir)})
        group = distributed.active()
        if group is not None and not group.is_main:  # one upload, from rank 0; the others get its commit URL
            return group.broadcast_object()
        url = push_to_hub(save_dir, repo_id, private=private, token=token, commit_message=commit_message,
                          create_pr=create_pr, endpoint=endpoint)
        return group.broadcast_object(url) if group is not None else url
