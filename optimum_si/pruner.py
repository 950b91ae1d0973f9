"""`SIPruner`: the public entry point. Orchestration only (checks, data, engine, save); no tensor maths here."""

from __future__ import annotations

import logging
import os
import time
import weakref
from typing import Any

import torch
from torch import nn

from . import distributed
from .activations import resolve_storage
from .architectures import spec_for
from .calibration import build_calibration
from .config import SIConfig
from .devices import check_runtime
from .engine import BlockEngine, InMemoryBlocks, capture_block_inputs, find_decoder_blocks
from .offload import OffloadedBlocks, is_offloaded, offload_execution_device, offload_hooks_above, offloaded_tensors
from .plan import PrunePlan
from .report import LayerRecord, PruneReport
from .targets import WeightTarget, config_experts, plan_block
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
                self.report, self._tokenizer, self._calibration_ids = (runner.report, runner._tokenizer,
                                                                       runner._calibration_ids)
        if isinstance(model, (str, os.PathLike)):
            if save_dir is None:
                raise ValueError("Streaming a checkpoint needs an output folder: prune(path, save_dir='out/', ...).")
            done = self._prune_streaming(os.fspath(model), os.fspath(save_dir), tokenizer, dataset, max_shard_size,
                                         overwrite, revision, token)
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
        cfg = self.config
        if not isinstance(model, nn.Module):
            raise TypeError(f"prune() expects a torch.nn.Module (e.g. a transformers causal LM), got {type(model).__name__}.")
        if getattr(model, _PRUNED_FLAG, False):
            raise RuntimeError(
                "This model was already pruned by optimum-si; pruning it twice would compound the sparsity. Load a fresh "
                "copy of the dense model."
            )
        self._check_placement(model)
        block_path, blocks = find_decoder_blocks(model, cfg.block_name)
        if cfg.induction:
            cfg = self._check_induction_support(model, blocks[0])
        plan = self._plan(blocks, block_path, cfg)
        _check_finite_parameters(model)
        # Offloaded blocks sit on meta: they run where their accelerate hooks would run them.
        device = torch.device(cfg.device) if cfg.device else (
            offload_execution_device(blocks[0]) or next(blocks[0].parameters()).device)

        ids, calibration = None, None
        if cfg.needs_calibration:
            model_config = getattr(model, "config", None)
            ids, calibration = build_calibration(
                dataset, tokenizer, cfg.num_samples, cfg.seqlen, cfg.seed,
                vocab_size=getattr(model_config, "vocab_size", None),
                max_context=getattr(model_config, "max_position_embeddings", None),
            )
        self._tokenizer = tokenizer
        self._calibration_ids = ids

        report = PruneReport(method=cfg.method, mask_structure=cfg.mask_structure, target_sparsity=cfg.sparsity)
        report.calibration = calibration
        report.skipped = plan.skipped
        undo = UndoLog()
        spec = spec_for(getattr(getattr(model, "config", None), "model_type", None))
        engine = BlockEngine(distributed.quiet(cfg), report, undo,
                             sequential_groups=spec.sequential_groups if spec else None,
                             sparsity_for=plan.sparsity_for,
                             model_config=getattr(model, "config", None), prune=prune)
        distributed.prepare_engine(engine)  # data-parallel: reduced statistics, Hessians solved on owner ranks
        use_cache = getattr(getattr(model, "config", None), "use_cache", None)
        was_training = model.training
        started = time.perf_counter()
        try:
            model.eval()
            if use_cache is not None:
                model.config.use_cache = False
            inputs = None
            if ids is not None:
                batches = distributed.calibration_batches(ids, cfg.batch_size)  # data-parallel: this rank's share
                if cfg.sparsity_profile == "owl":  # profiled on the dense model, before any block is pruned
                    from .owl import owl_block_sparsities

                    plan.block_sparsities = owl_block_sparsities(model, blocks, plan, batches, cfg.sparsity,
                                                                 cfg.owl_m, cfg.owl_lambda)
                inputs = capture_block_inputs(model, blocks, batches, device,
                                              resolve_storage(cfg.activation_storage, device), cfg.activation_dir)
                report.capture_seconds = time.perf_counter() - started
                report.num_samples, report.seqlen = ids.shape
            with torch.no_grad():
                # Blocks offloaded by accelerate hooks need a source that writes back into the offloaded storage.
                source = OffloadedBlocks(blocks, device) if is_offloaded(blocks) else InMemoryBlocks(blocks, device)
                engine.run(source, block_path, inputs, lambda i, _block: plan[i])
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

    def _prune_streaming(self, source: str, save_dir: str, tokenizer: Any, dataset: Any, max_shard_size: str | int,
                         overwrite: bool, revision: str | None, token: str | None) -> str:
        import shutil

        self.report, self._report_model = None, None
        check_runtime(self.config)
        if self.config.sparsity_profile == "owl":
            raise NotImplementedError("sparsity_profile='owl' is not available when streaming yet (its dense profiling "
                                      "pass would be a second read of the checkpoint); load the model in memory.")
        from transformers import AutoConfig

        from . import folders
        from . import streaming as st
        from .checkpoint import write_sidecars
        from .locking import output_lock

        folder = st.resolve_source(source, revision=revision, token=token)
        try:
            model_config = AutoConfig.from_pretrained(folder)
        except (OSError, ValueError, RecursionError) as err:
            raise ValueError(f"{source} has no usable config.json ({err}).") from err
        if config_experts(model_config) > 1:
            # transformers 5 fuses experts into 3-D parameters on load, converting from per-expert files; streaming
            # reads tensors by their file names, so it would not find the fused ones.
            raise NotImplementedError(
                f"{source} is a mixture-of-experts model ({model_config.model_type}); streaming does not convert its "
                "per-expert files to the fused experts yet. Load it in memory and prune that: "
                "SIPruner(...).prune(AutoModelForCausalLM.from_pretrained(...), ...), then save()."
            )
        index, skeleton = st.open_checkpoint(folder, model_config)
        cfg = self.config
        block_path, blocks = find_decoder_blocks(skeleton, cfg.block_name)
        if cfg.induction:
            cfg = self._check_induction_support(skeleton, blocks[0])
        plan = self._plan(blocks, block_path, cfg)
        target = folders.resolve(save_dir)
        folders.check_target(target, folder, cfg.activation_dir if cfg.activation_storage == "disk" else None)
        device = torch.device(cfg.device) if cfg.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        ids, calibration = None, None
        if cfg.needs_calibration:
            ids, calibration = build_calibration(dataset, tokenizer, cfg.num_samples, cfg.seqlen, cfg.seed,
                                                 vocab_size=getattr(model_config, "vocab_size", None),
                                                 max_context=getattr(model_config, "max_position_embeddings", None))
        fingerprint = st.run_fingerprint(cfg, ids, index)
        group = distributed.active()
        if group is not None and not group.is_main:  # rank 0 alone owns the output folder (optimum_si.distributed)
            return self._follow_streaming(group, cfg, skeleton, blocks, block_path, plan, index, device, ids,
                                          model_config, calibration, save_dir)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with output_lock(target):
            folders.recover(target)
            existing = folders.describe(target)
            if existing.own and not overwrite:
                if existing.complete and existing.fingerprint == fingerprint:
                    logger.info("%s is already complete for this run; nothing to do.", save_dir)
                    self.report = _saved_report(target)
                    return save_dir
                raise FileExistsError(
                    f"{save_dir} holds a pruned checkpoint (or an unfinished run) that differs from this run in "
                    f"{st.fingerprint_differences(existing.fingerprint, fingerprint)}; pass overwrite=True to replace "
                    "it, or choose another save_dir."
                )
            folders.check_clashes(target, existing, st.output_names(folder, existing.foreign))
            partial = folders.sibling(target, "partial")
            progress, discard = self._partial_run(partial, save_dir, fingerprint, len(blocks), overwrite)
            if progress is None and not discard and os.path.isdir(partial):  # finished, killed before the swap
                folders.publish(partial, target, existing)
                self.report = _saved_report(target)
                return save_dir
            free = shutil.disk_usage(os.path.dirname(target)).free + (_folder_bytes(partial) if discard else 0)
            if progress is None and free < index.total_bytes * 1.05:
                raise OSError(
                    f"Not enough disk space in {os.path.dirname(target)}: the pruned checkpoint needs about "
                    f"{index.total_bytes / 1e9:.2f} GB, {free / 1e9:.2f} GB are free."
                )
            # Every check passed: from here on, files are written (only in the partial folder until the swap).
            if discard:
                shutil.rmtree(partial)
            os.makedirs(partial, exist_ok=True)
            finished = progress["finished_blocks"] if progress else 0
            writer = st.ShardWriter(partial, max_shard_size, done=progress["shards"] if progress else None)
            report = PruneReport(method=cfg.method, mask_structure=cfg.mask_structure, target_sparsity=cfg.sparsity)
            report.calibration = calibration
            report.skipped = plan.skipped
            if progress:
                report.layers = {k: LayerRecord(**v) for k, v in progress["layers"].items()}
            planned = [[f"{block_path}.{i}.{name}" for name in linears] for i, linears in enumerate(plan)]

            def record(done: int) -> None:
                st.write_progress(partial, {"fingerprint": fingerprint, "finished_blocks": done,
                                            "shards": writer.shards,
                                            "layers": {k: v.__dict__ for k, v in report.layers.items()}})

            def on_block_written(i: int) -> None:
                _check_pruned(report, planned[i], f"Block {i}")
                record(i + 1)

            if group is not None:  # the other ranks run the same blocks on their share of the windows
                group.announce({"finished": finished, "partial": partial, "shards": writer.shards,
                                "layers": progress["layers"] if progress else {}})
            started = time.perf_counter()
            if finished < len(blocks):
                self._stream_blocks(cfg, skeleton, blocks, block_path, plan, index, device, ids, partial, writer,
                                    on_block_written, finished, model_config, report)
            report.total_seconds = time.perf_counter() - started
            if ids is not None:
                report.num_samples, report.seqlen = ids.shape
            # Non-block tensors (embeddings, final norm, LM head) go last, as stored in the source (dtype and bytes).
            written = {key for shard in writer.shards for key in shard["keys"]}
            rest = [name for name, _param in skeleton.named_parameters()
                    if not name.startswith(f"{block_path}.") and name in index.shapes and name not in written]
            for name in rest:
                writer.add({name: index.read(name)})
            if rest:
                writer.flush()
                record(len(blocks))
            # Finishing: every step can be repeated by a rerun, and the folder is swapped in only once complete.
            writer.finish()
            st.copy_side_files(folder, partial)
            _check_pruned(report, [name for names in planned for name in names], "The run")
            write_sidecars(partial, cfg, report, model_config, base_model=source if not os.path.isdir(source) else None)
            folders.write_manifest(partial, fingerprint)
            os.remove(os.path.join(partial, st.PROGRESS_NAME))
            folders.publish(partial, target, existing)
        self.report = report
        logger.info(report.summary())
        return save_dir

    @staticmethod
    def _partial_run(partial: str, save_dir: str, fingerprint: dict[str, Any], num_blocks: int,
                     overwrite: bool) -> tuple[dict[str, Any] | None, bool]:
        """What the partial folder of `save_dir` holds: (the progress to resume, whether to discard the folder).
        Only this very run (same fingerprint) is resumed or finished; `overwrite` always starts clean."""
        from . import folders
        from . import streaming as st

        if not os.path.isdir(partial) or overwrite:
            return None, os.path.isdir(partial)
        progress = st.read_progress(partial, num_blocks)
        manifest = folders.read_manifest(partial) if progress is None else None
        if progress is None and manifest is None:
            return None, True  # killed before its first block was recorded: nothing worth keeping
        stored = progress["fingerprint"] if progress else manifest.get("fingerprint")
        if stored == fingerprint:
            return progress, False
        raise FileExistsError(
            f"{partial} holds an unfinished run for {save_dir} that differs from this run in "
            f"{st.fingerprint_differences(stored, fingerprint)}; pass overwrite=True to start over, or choose another "
            "save_dir."
        )

    def _follow_streaming(self, group: distributed.DataParallel, cfg: SIConfig, skeleton: nn.Module,
                          blocks: nn.ModuleList, block_path: str, plan: PrunePlan, index, device: torch.device,
                          ids: torch.Tensor | None, model_config, calibration, save_dir: str) -> str:
        """A data-parallel rank other than 0 in a streaming run: it computes every block with its share of the
        windows (the statistics are reduced with rank 0's) and writes nothing; blocks finished by an interrupted run
        are read back from rank 0's partial folder (one host, or a shared file system)."""
        from types import SimpleNamespace

        from . import folders

        state = group.await_leader()  # None: rank 0 found nothing left to compute
        report = PruneReport(method=cfg.method, mask_structure=cfg.mask_structure, target_sparsity=cfg.sparsity)
        report.calibration, report.skipped = calibration, plan.skipped
        if state is not None:
            report.layers = {k: LayerRecord(**v) for k, v in state["layers"].items()}
            started = time.perf_counter()
            if state["finished"] < len(blocks):
                self._stream_blocks(cfg, skeleton, blocks, block_path, plan, index, device, ids, state["partial"],
                                    SimpleNamespace(shards=state["shards"]), None, state["finished"], model_config,
                                    report)
            report.total_seconds = time.perf_counter() - started
            if ids is not None:
                report.num_samples, report.seqlen = ids.shape
        group.await_release()  # rank 0 has written and swapped in save_dir
        self.report = report if state is not None else _saved_report(folders.resolve(save_dir))
        return save_dir

    def _stream_blocks(self, cfg: SIConfig, skeleton: nn.Module, blocks: nn.ModuleList, block_path: str,
                       plan: PrunePlan, index, device: torch.device, ids: torch.Tensor | None,
                       partial: str, writer, on_block_written, finished: int, model_config, report: PruneReport) -> None:
        """Capture the first block's inputs and run the engine over the blocks from `finished` on."""
        from accelerate.utils import set_module_tensor_to_device

        from . import streaming as st

        # During the run only what the capture pass runs (the base model outside the blocks: never the LM head) is
        # materialised, and only until the first block's inputs are captured.
        capture_root, capture_prefix = _capture_root(skeleton, blocks)
        capture_names = [name for name, _param in skeleton.named_parameters()
                         if not name.startswith(f"{block_path}.") and name in index.shapes
                         and name.startswith(capture_prefix)]
        finished_index = None
        if finished:
            try:
                finished_index = st.CheckpointIndex(partial, files=[s["file"] for s in writer.shards])
            except (OSError, ValueError) as err:
                raise ValueError(f"The unfinished run in {partial} is damaged ({err}); pass overwrite=True to start "
                                 "over.") from err
        # A data-parallel follower (no on_block_written) only reads the shard list: it writes nothing.
        source_blocks = st.StreamingSource(blocks, block_path, index, device,
                                           writer if on_block_written is not None else None, on_block_written,
                                           finished_index=finished_index, finished=finished)
        spec = spec_for(model_config.model_type)
        engine = BlockEngine(distributed.quiet(cfg), report, UndoLog(enabled=False),
                             sequential_groups=spec.sequential_groups if spec else None,
                             sparsity_for=plan.sparsity_for,
                             model_config=model_config)
        distributed.prepare_engine(engine)
        started = time.perf_counter()
        skeleton.eval()
        tied = capture_root is skeleton and getattr(model_config, "tie_word_embeddings", False)
        inputs = None
        with torch.no_grad():
            if ids is not None:
                for name in capture_names:
                    set_module_tensor_to_device(skeleton, name, device, value=index.read(name, device))
                if tied:
                    skeleton.tie_weights()
                inputs = capture_block_inputs(capture_root, blocks, distributed.calibration_batches(ids, cfg.batch_size), device,
                                              resolve_storage(cfg.activation_storage, device), cfg.activation_dir)
                for name in capture_names:
                    set_module_tensor_to_device(skeleton, name, "meta")
                if tied:
                    skeleton.tie_weights()  # drop the LM head's reference to the real embedding too
                report.capture_seconds = time.perf_counter() - started
            engine.run(source_blocks, block_path, inputs, lambda i, _block: plan[i], first=finished)

    def _check_induction_support(self, model: nn.Module, first_block: nn.Module) -> SIConfig:
        """The config to run with: SI needs a scaling-group mapping for the architecture (or the user's opt-out)."""
        from .transforms import resolve_scaling_groups

        try:
            resolve_scaling_groups(first_block, getattr(model, "config", None), self.config.induction_groups)
        except NotImplementedError:
            if self.config.induction_unsupported == "skip":
                logger.warning("No Sparsity Induction mapping for this architecture; pruning without induction.")
                return self.config.replace(induction=False)
            raise
        except AttributeError as err:
            raise ValueError(f"The model does not match its architecture's scaling-group table: {err}") from err
        return self.config

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

    def _plan(self, blocks: nn.ModuleList, block_path: str, cfg: SIConfig) -> PrunePlan:
        """The targets of every block, what is left dense on purpose and each target's sparsity; every check of the
        plan runs here."""
        plans = [plan_block(block, f"{block_path}.{i}", cfg.targets, cfg.ignore) for i, block in enumerate(blocks)]
        plan = PrunePlan(block_path, [p.targets for p in plans],
                         {name: why for p in plans for name, why in p.skipped.items()}, cfg.sparsity)
        self._check_plan(plan, block_path)
        return plan

    def _check_plan(self, plan: list[dict[str, WeightTarget]], block_path: str) -> None:
        if not any(plan):
            raise ValueError(
                f"No nn.Linear to prune was found in {block_path} with targets={self.config.targets} and "
                f"ignore={self.config.ignore}; widen `targets` or shorten `ignore`."
            )
        nm = self.config.n_m
        if nm is not None:
            bad = [f"{block_path}.{i}.{name}" for i, linears in enumerate(plan) for name, lin in linears.items()
                   if lin.in_features % nm[1]]  # lin: a WeightTarget
            if bad:
                raise ValueError(
                    f"mask_structure={self.config.mask_structure!r} needs input sizes divisible by {nm[1]}; these Linears are "
                    f"not: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}. Add them to SIConfig(ignore=[...])."
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


def _capture_root(model: nn.Module, blocks: nn.ModuleList) -> tuple[nn.Module, str]:
    """The module to run for capturing the first block's inputs, and its parameters' name prefix: the base model
    (no LM head: streaming never materialises it) when it holds the blocks, else the whole model."""
    base = getattr(model, "base_model", model)
    if base is not model and any(m is blocks for m in base.modules()):
        prefix = next(name for name, m in model.named_modules() if m is base)
        return base, f"{prefix}."
    return model, ""


def _check_pruned(report: PruneReport, names: list[str], what: str) -> None:
    """The final invariant of a streaming run: nothing is written as finished with a planned Linear left dense."""
    missing = [name for name in names if name not in report.layers]
    if missing:
        raise RuntimeError(
            f"{what} has {len(missing)} planned Linear(s) that were not pruned ({missing[0]}"
            f"{', ...' if len(missing) > 1 else ''}), so it was not recorded as finished; rerun with overwrite=True, "
            "and report a bug if it happens again."
        )


def _saved_report(folder: str) -> PruneReport | None:
    """The report of the finished checkpoint in `folder` (for a rerun that had nothing left to do), or None."""
    import dataclasses
    import json

    from .report import REPORT_NAME, BlockRecord

    def known(cls: type, entry: dict[str, Any]) -> dict[str, Any]:
        return {f.name: entry[f.name] for f in dataclasses.fields(cls) if f.name in entry}

    path = os.path.join(folder, REPORT_NAME)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        report = PruneReport(**{k: v for k, v in known(PruneReport, data).items() if k not in ("layers", "blocks")})
        report.layers = {name: LayerRecord(**known(LayerRecord, entry)) for name, entry in data["layers"].items()}
        report.blocks = [BlockRecord(**known(BlockRecord, entry)) for entry in data.get("blocks") or []]
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError) as err:
        logger.warning("Could not read %s (%s: %s); SIPruner.report is left empty.", path, type(err).__name__, err)
        return None
    return report


def _folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder)
               if os.path.isfile(os.path.join(folder, name)))


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
