"""`SIPruner`: the public entry point. Orchestration only (checks, data, engine, save); no tensor maths here.

The set-up every run shares (plan, checks, calibration, device, engine) is `optimum_si.run_setup`; a streamed
checkpoint's run is `optimum_si.streaming_run`. This module holds the in-memory run and what only a model in memory
needs (placement checks, the undo log, `save`)."""

from __future__ import annotations

import logging
import os
import time
import weakref
from typing import Any

import torch
from torch import nn

from . import distributed
from .config import SIConfig
from .devices import check_runtime
from .engine import InMemoryBlocks, find_decoder_blocks
from .offload import OffloadedBlocks, is_offloaded, offload_execution_device, offload_hooks_above, offloaded_tensors
from .report import PruneReport
from .run_setup import set_up_run
from .weights import UndoLog

__all__ = ["SIPruner"]

logger = logging.getLogger(__name__)

_PRUNED_FLAG = "_optimum_si_pruned"


class SIPruner:
    """Prunes a causal LM block by block with magnitude, Wanda or SparseGPT, optionally after Sparsity Induction.

    Lifecycle::

        pruner = SIPruner(SIConfig(method="wanda", sparsity=0.5))   # or SIPruner(method="wanda", sparsity=0.5)
        model = pruner.prune(model, tokenizer=tok, dataset=texts)    # in place; returns the model
        pruner.report                                                 # per-layer sparsity, errors, timings
        pruner.save(model, "out/")                                    # safetensors + si_config.json + card
    """

    def __init__(self, config: SIConfig | dict | None = None, **kwargs: Any) -> None:
        if config is None:
            config = SIConfig.from_dict(kwargs)
        elif isinstance(config, dict):
            config = SIConfig.from_dict(config, **kwargs)
        elif isinstance(config, SIConfig):
            if kwargs:
                config = config.replace(**kwargs)
        else:
            raise TypeError(f"SIPruner expects an SIConfig (or keyword arguments), got {type(config).__name__}.")
        self.config = config
        self.report: PruneReport | None = None
        self._report_model: weakref.ref[nn.Module] | None = None  # the in-memory model `report` describes
        self._tokenizer = None
        self._calibration_ids: torch.Tensor | None = None

    @classmethod
    def from_pretrained(cls, dir_or_repo: str | os.PathLike, **overrides: Any) -> SIPruner:
        """Load the recipe (`si_config.json`) of a folder or Hub repo; keyword arguments override its fields."""
        return cls(SIConfig.from_pretrained(dir_or_repo, **overrides))

    # ------------------------------------------------------------------------------------------ prune
    @distributed.entry_point  # under torchrun: one data-parallel run over all ranks (optimum_si.distributed)
    def prune(self, model: nn.Module | str | os.PathLike, tokenizer: Any = None, dataset: Any = None, *,
              save_dir: str | os.PathLike | None = None, max_shard_size: str | int = "5GB", overwrite: bool = False,
              revision: str | None = None, token: str | None = None, device: str | None = None,
              activation_storage: str | None = None, activation_dir: str | None = None,
              show_progress: bool | None = None) -> nn.Module | str:
        """Prune `model` in place and return it. `dataset` is the calibration data (see `SIConfig` and
        `optimum_si.calibration`); plain magnitude pruning needs none.

        Given a local folder or Hub repo id instead of a model, the checkpoint is *streamed*: built on the meta device,
        read one decoder block at a time from its safetensors shards and written block by block to `save_dir`
        (resumable; see `optimum_si.streaming`). Returns `save_dir` then.

        Every check (config vs model, calibration data, finite weights) runs before any weight is touched; if the
        run fails later, the weights already changed are restored before the error propagates.

        An in-memory model with `save_dir` is pruned and then saved there (`save`); `revision`, `token` and
        `overwrite` belong to streaming and are refused for an in-memory model rather than ignored.

        `device`, `activation_storage`, `activation_dir` and `show_progress` are run options for this call (they
        override the config's; all give the same result and none is written to the saved recipe).
        """
        options = {name: value for name, value in (("device", device), ("activation_storage", activation_storage),
                                                   ("activation_dir", activation_dir), ("show_progress", show_progress))
                   if value is not None}
        if options:
            runner = SIPruner(self.config.replace(**options))
            try:
                return runner.prune(model, tokenizer, dataset, save_dir=save_dir, max_shard_size=max_shard_size,
                                    overwrite=overwrite, revision=revision, token=token)
            finally:
                self.report, self._report_model = runner.report, runner._report_model
                self._tokenizer, self._calibration_ids = runner._tokenizer, runner._calibration_ids
        if isinstance(model, (str, os.PathLike)):
            if save_dir is None:
                raise ValueError("Streaming a checkpoint needs an output folder: prune(path, save_dir='out/', ...).")
            from .streaming_run import prune_checkpoint

            self.report, self._report_model = None, None
            self.report = prune_checkpoint(self.config, os.fspath(model), os.fspath(save_dir), tokenizer, dataset,
                                           max_shard_size, overwrite, revision, token)
            done = os.fspath(save_dir)
            group = distributed.active()
            if group is not None and group.is_main:  # the folder is complete: release the ranks waiting for it
                group.release_followers()
            return done
        streaming_only = [name for name, value in (("revision", revision), ("token", token), ("overwrite", overwrite))
                          if value]
        if streaming_only:
            raise ValueError(f"{', '.join(streaming_only)} only apply when streaming a checkpoint (prune('<folder or "
                             "repo>', save_dir=...)); an in-memory model takes none of them.")
        self._run(model, tokenizer, dataset, prune=True)
        if save_dir is not None:
            self.save(model, save_dir, tokenizer=tokenizer, max_shard_size=max_shard_size)
        return model

    @distributed.entry_point
    def induce(self, model: nn.Module, tokenizer: Any = None, dataset: Any = None) -> nn.Module:
        """Run only the distribution-level Sparsity Induction and fold it into `model` (in place; returned).

        The dense function is unchanged (up to rounding); the folded weights are what the base pruner then sees, so
        the result can be inspected or handed to another pruner.
        """
        if not isinstance(model, nn.Module):
            raise TypeError(f"induce() expects a torch.nn.Module, got {type(model).__name__}.")
        config = self.config.replace(induction=True)
        runner = SIPruner(config)
        self.report, self._report_model = None, None
        runner._run(model, tokenizer, dataset, prune=False)
        self.report, self._report_model = runner.report, runner._report_model
        return model

    def _run(self, model: nn.Module, tokenizer: Any, dataset: Any, prune: bool) -> nn.Module:
        self.report, self._report_model = None, None  # a failed run must not leave an earlier run's report for save()
        check_runtime(self.config)
        if not isinstance(model, nn.Module):
            raise TypeError(f"prune() expects a torch.nn.Module (e.g. a transformers causal LM), got {type(model).__name__}.")
        if getattr(model, _PRUNED_FLAG, False):
            raise RuntimeError(
                "This model was already pruned by optimum-si; pruning it twice would compound the sparsity. Load a fresh "
                "copy of the dense model."
            )
        self._check_placement(model)
        run = set_up_run(self.config, model, getattr(model, "config", None), tokenizer, dataset,
                         source_checks=lambda _cfg: _check_finite_parameters(model))
        cfg, blocks, plan = run.config, run.blocks, run.plan
        self._tokenizer = tokenizer
        self._calibration_ids = run.ids

        report = run.new_report()
        undo = UndoLog()
        engine = run.engine(report, undo, prune=prune)
        use_cache = getattr(getattr(model, "config", None), "use_cache", None)
        was_training = model.training
        started = time.perf_counter()
        try:
            model.eval()
            if use_cache is not None:
                model.config.use_cache = False
            inputs = None
            if run.ids is not None:
                if cfg.sparsity_profile == "owl":  # profiled on the dense model, before any block is pruned
                    from .owl import owl_block_sparsities

                    plan.block_sparsities = owl_block_sparsities(model, blocks, plan, run.batches, cfg.sparsity,
                                                                 cfg.owl_m, cfg.owl_lambda)
                inputs = run.capture(model)
                report.capture_seconds = time.perf_counter() - started
                report.num_samples, report.seqlen = run.ids.shape
            with torch.no_grad():
                # Blocks offloaded by accelerate hooks need a source that writes back into the offloaded storage.
                source = OffloadedBlocks(blocks, run.device) if is_offloaded(blocks) else \
                    InMemoryBlocks(blocks, run.device)
                engine.run(source, run.block_path, inputs, lambda i, _block: plan[i])
        except BaseException:
            undo.restore()
            raise
        finally:
            model.train(was_training)
            if use_cache is not None:
                model.config.use_cache = use_cache
        undo.clear()
        report.total_seconds = time.perf_counter() - started
        if prune:
            setattr(model, _PRUNED_FLAG, True)
        self.report, self._report_model = report, weakref.ref(model)
        logger.info(report.summary())
        return model

    def _check_placement(self, model: nn.Module) -> None:
        """Refuse, before anything is touched, weights that cannot be pruned in memory (meta without storage, disk)."""
        streaming = "stream the checkpoint instead, SIPruner(...).prune('<folder or repo>', save_dir='out/', ...), " \
                    "which reads one block at a time"
        device_map = getattr(model, "hf_device_map", None) or {}
        # Disk-offloaded weights are re-read from .dat memmaps or the original safetensors files at every access:
        # there is nothing in memory to write the pruned weights into (and the source files must not be modified).
        stored = offloaded_tensors(model)  # accelerate-offloaded tensor -> its in-memory copy (None: on disk)
        on_disk = [name for name, tensor in stored.items() if tensor is None]
        if any(str(d) == "disk" for d in device_map.values()) or on_disk:
            raise ValueError(
                f"Models offloaded to disk are not supported in memory{f' ({on_disk[0]}, ...)' if on_disk else ''}: "
                f"{streaming}."
            )
        # Meta parameters without an offload hook holding them (init_empty_weights) have no values at all.
        if any(p.is_meta and name not in stored for name, p in model.named_parameters()):
            raise ValueError(
                "The model has weights on the meta device (built with init_empty_weights, or loaded without its "
                "weights), so they cannot be pruned in memory. Load real weights with "
                f"AutoModelForCausalLM.from_pretrained, or {streaming}."
            )
        if not stored:
            return
        # Offloaded to CPU by accelerate hooks: pruned block by block through `OffloadedBlocks` (optimum_si.offload).
        above = offload_hooks_above(model, find_decoder_blocks(model, self.config.block_name)[1])
        if above:
            raise ValueError(
                f"accelerate offloads {above[0] or 'the model'} as a whole, decoder blocks included "
                "(preload_module_classes); in-memory pruning needs the blocks offloaded one by one (cpu_offload "
                f"or a device_map without preload_module_classes), or {streaming}."
            )
        hooks_device = offload_execution_device(model)
        if self.config.device and hooks_device is not None and not _same_device(torch.device(self.config.device),
                                                                                 hooks_device):
            raise ValueError(
                f"SIConfig(device={self.config.device!r}) differs from {hooks_device}, where the model's accelerate "
                "hooks run its offloaded modules; leave `device` unset for an offloaded model."
            )

    # ------------------------------------------------------------------------------------------ save
    @distributed.entry_point
    def save(self, model: nn.Module, save_dir: str | os.PathLike, tokenizer: Any = None, max_shard_size: str | int = "5GB",
             perplexity: dict[str, float] | None = None, push_to_hub: bool = False, repo_id: str | None = None,
             card_info: dict[str, Any] | None = None, plots: bool = True, base_model: str | None = None,
             results: dict[str, Any] | None = None, dense_results: dict[str, Any] | None = None,
             **push_kwargs: Any) -> str:
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
        `card_info={"weights_source": "..."}` adds a line saying where the source weights came from."""
        from .checkpoint import save_pruned_model

        if push_to_hub and not repo_id:
            raise ValueError("save(..., push_to_hub=True) needs repo_id='owner/name'.")
        if self.report is not None and self._report_model is not None and self._report_model() is not model:
            raise ValueError("This pruner's report describes another model than the one given to save(); save the "
                             "model this pruner last pruned, or prune this one first.")
        if self.report is None and not getattr(model, _PRUNED_FLAG, False):
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
            max_shard_size=max_shard_size, card_info=card_info, plots=plots, base_model=base_model,
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

        group = distributed.active()
        if group is not None and not group.is_main:  # one upload, from rank 0; the others get its commit URL
            return group.broadcast_object()
        url = push_to_hub(save_dir, repo_id, private=private, token=token, commit_message=commit_message,
                          create_pr=create_pr, endpoint=endpoint)
        return group.broadcast_object(url) if group is not None else url


def _check_finite_parameters(model: nn.Module) -> None:
    # Offloaded parameters sit on meta: check their in-memory copies instead.
    tensors = {name: p for name, p in model.named_parameters() if not p.is_meta}
    tensors.update({name: t for name, t in offloaded_tensors(model).items() if t is not None})
    bad = [name for name, p in tensors.items() if p.is_floating_point() and not bool(torch.isfinite(p).all())]
    if bad:
        raise ValueError(
            f"The model has NaN or inf in {len(bad)} parameter(s) ({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}); "
            "pruning would produce a broken model. Reload the checkpoint."
        )


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index or 0) == (b.index or 0)
