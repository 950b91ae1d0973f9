"""A streamed run, `SIPruner(...).prune("<folder or repo>", save_dir=...)`: the output folder's life cycle around
the shared set-up (`optimum_si.run_setup`) and the block walker (`BlockEngine` over a `StreamingSource`).

The tensors, shards, progress file and fingerprint are `optimum_si.streaming`'s; this module decides when each is
read and written: refuse a clashing or foreign `save_dir`, resume only the very same run, check the disk, prune the
blocks not finished yet, append the non-block tensors, finish and swap the folder in.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from . import distributed, folders
from . import streaming as st
from .config import SIConfig
from .devices import check_runtime
from .engine import BlockInputs
from .report import LayerRecord, PruneReport
from .run_setup import RunSetup, set_up_run
from .weights import UndoLog

__all__ = ["prune_checkpoint"]

logger = logging.getLogger(__name__)


def prune_checkpoint(config: SIConfig, source: str, save_dir: str, tokenizer: Any, dataset: Any,
                     max_shard_size: str | int, overwrite: bool, revision: str | None,
                     token: str | None) -> PruneReport | None:
    """Stream `source` into `save_dir`; returns the run's report (the saved one, or None if unreadable, when the
    folder was already complete)."""
    from transformers import AutoConfig

    from .checkpoint import write_sidecars
    from .locking import output_lock

    check_runtime(config)
    folder = st.resolve_source(source, revision=revision, token=token)
    try:
        model_config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError, RecursionError) as err:
        raise ValueError(f"{source} has no usable config.json ({err}).") from err
    index, skeleton = st.open_checkpoint(folder, model_config)
    target = folders.resolve(save_dir)

    def check_output(cfg: SIConfig) -> None:
        folders.check_target(target, folder, cfg.activation_dir if cfg.activation_storage == "disk" else None)

    run = set_up_run(config, skeleton, model_config, tokenizer, dataset, source_checks=check_output)
    cfg, blocks, block_path, plan = run.config, run.blocks, run.block_path, run.plan
    fingerprint = st.run_fingerprint(cfg, run.ids, index)
    group = distributed.active()
    if group is not None and not group.is_main:  # rank 0 alone owns the output folder (optimum_si.distributed)
        return _follow(group, run, skeleton, index, save_dir)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with output_lock(target):
        folders.recover(target)
        existing = folders.describe(target)
        if existing.own and not overwrite:
            if existing.complete and existing.fingerprint == fingerprint:
                logger.info("%s is already complete for this run; nothing to do.", save_dir)
                return _saved_report(target)
            raise FileExistsError(
                f"{save_dir} holds a pruned checkpoint (or an unfinished run) that differs from this run in "
                f"{st.fingerprint_differences(existing.fingerprint, fingerprint)}; pass overwrite=True to replace "
                "it, or choose another save_dir."
            )
        folders.check_clashes(target, existing, st.output_names(folder, existing.foreign))
        partial = folders.sibling(target, "partial")
        progress, discard = _partial_run(partial, save_dir, fingerprint, len(blocks), overwrite)
        if progress is None and not discard and os.path.isdir(partial):  # finished, killed before the swap
            folders.publish(partial, target, existing)
            return _saved_report(target)
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
        report = run.new_report()
        if progress:
            report.layers = {k: LayerRecord(**v) for k, v in progress["layers"].items()}
        planned = [plan.names(i) for i in range(len(plan))]
        # OWL's outlier ratio of each block profiled so far: recorded with the progress, so that a restarted run
        # does not profile those blocks again (all of them, once any block is pruned).
        owl_ratios: list[float | None] = list(progress.get("owl_ratios") or []) if progress else []

        def record(done: int) -> None:
            state = {"fingerprint": fingerprint, "finished_blocks": done, "shards": writer.shards,
                     "layers": {k: v.__dict__ for k, v in report.layers.items()}}
            if cfg.sparsity_profile == "owl":
                state["owl_ratios"] = owl_ratios
            st.write_progress(partial, state)

        def on_block_profiled(ratios: list[float | None]) -> None:
            owl_ratios[:] = ratios
            record(finished)

        def on_block_written(i: int) -> None:
            _check_pruned(report, planned[i], f"Block {i}")
            record(i + 1)

        if group is not None:  # the other ranks run the same blocks on their share of the windows
            group.announce({"finished": finished, "partial": partial, "shards": writer.shards,
                            "layers": progress["layers"] if progress else {}, "owl_ratios": list(owl_ratios)})
        started = time.perf_counter()
        if finished < len(blocks):
            if cfg.sparsity_profile == "owl":
                _profile_owl(run, skeleton, index, owl_ratios, on_block_profiled)
            _stream_blocks(run, skeleton, index, partial, writer, on_block_written, finished, report)
        report.total_seconds = time.perf_counter() - started
        if run.ids is not None:
            report.num_samples, report.seqlen = run.ids.shape
        # Non-block tensors (embeddings, final norm, LM head) go last, as stored in the source (dtype and bytes).
        written = {key for shard in writer.shards for key in shard["keys"]}
        rest = [key for name, _param in skeleton.named_parameters() if not name.startswith(f"{block_path}.")
                for key in _keys_of(index, name) if key not in written]
        for key in rest:
            writer.add({key: index.read(key)})
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
    logger.info(report.summary())
    return report


def _partial_run(partial: str, save_dir: str, fingerprint: dict[str, Any], num_blocks: int,
                 overwrite: bool) -> tuple[dict[str, Any] | None, bool]:
    """What the partial folder of `save_dir` holds: (the progress to resume, whether to discard the folder).
    Only this very run (same fingerprint) is resumed or finished; `overwrite` always starts clean."""
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


def _follow(group: distributed.DataParallel, run: RunSetup, skeleton: nn.Module, index: st.CheckpointIndex,
            save_dir: str) -> PruneReport | None:
    """A data-parallel rank other than 0: it computes every block with its share of the windows (the statistics
    are reduced with rank 0's) and writes nothing; blocks finished by an interrupted run are read back from rank 0's
    partial folder (one host, or a shared file system)."""
    state = group.await_leader()  # None: rank 0 found nothing left to compute
    report = run.new_report()
    if state is not None:
        report.layers = {k: LayerRecord(**v) for k, v in state["layers"].items()}
        started = time.perf_counter()
        if state["finished"] < len(run.blocks):
            if run.config.sparsity_profile == "owl":  # the same profile as rank 0, statistics reduced with its
                _profile_owl(run, skeleton, index, state["owl_ratios"], None)
            _stream_blocks(run, skeleton, index, state["partial"], SimpleNamespace(shards=state["shards"]), None,
                           state["finished"], report)
        report.total_seconds = time.perf_counter() - started
        if run.ids is not None:
            report.num_samples, report.seqlen = run.ids.shape
    group.await_release()  # rank 0 has written and swapped in save_dir
    return report if state is not None else _saved_report(folders.resolve(save_dir))


def _profile_owl(run: RunSetup, skeleton: nn.Module, index: st.CheckpointIndex, done: list[float | None],
                 on_block: Callable[[list[float | None]], None] | None) -> None:
    """OWL's dense profiling pass over the source checkpoint (the blocks not profiled yet), and the plan's per-block
    sparsities from it."""
    from .owl_streaming import profile_blocks, sparsities_from_ratios

    cfg = run.config
    ratios = done
    if len(done) < len(run.blocks):
        started = time.perf_counter()
        source = st.StreamingSource(run.blocks, run.block_path, index, run.device, None)
        skeleton.eval()
        with torch.no_grad():
            inputs = capture_streamed(run, skeleton, index)
        ratios = profile_blocks(source, run.plan, inputs, cfg.owl_m, done, on_block)
        logger.info("OWL profiling pass over %d blocks: %.1f s", len(run.blocks) - len(done),
                    time.perf_counter() - started)
    run.plan.block_sparsities = sparsities_from_ratios(ratios, cfg.sparsity, cfg.owl_lambda)


def _stream_blocks(run: RunSetup, skeleton: nn.Module, index: st.CheckpointIndex, partial: str, writer: Any,
                   on_block_written: Callable[[int], None] | None, finished: int, report: PruneReport) -> None:
    """Capture the first block's inputs and run the engine over the blocks from `finished` on."""
    finished_index = None
    if finished:
        try:
            finished_index = st.CheckpointIndex(partial, files=[s["file"] for s in writer.shards], layout=index.layout)
        except (OSError, ValueError) as err:
            raise ValueError(f"The unfinished run in {partial} is damaged ({err}); pass overwrite=True to start "
                             "over.") from err
    # A data-parallel follower (no on_block_written) only reads the shard list: it writes nothing.
    source = st.StreamingSource(run.blocks, run.block_path, index, run.device,
                                writer if on_block_written is not None else None, on_block_written,
                                finished_index=finished_index, finished=finished)
    engine = run.engine(report, UndoLog(enabled=False))  # the source on disk is never modified: nothing to undo
    started = time.perf_counter()
    skeleton.eval()
    inputs = None
    with torch.no_grad():
        if run.ids is not None:
            inputs = capture_streamed(run, skeleton, index)
            report.capture_seconds = time.perf_counter() - started
        engine.run(source, run.block_path, inputs, lambda i, _block: run.plan[i], first=finished)


def capture_streamed(run: RunSetup, skeleton: nn.Module, index: st.CheckpointIndex) -> BlockInputs:
    """The first block's inputs, captured with only what the capture runs materialised (the base model outside the
    blocks: never the LM head), and only for the capture."""
    from accelerate.utils import set_module_tensor_to_device

    root, prefix = _capture_root(skeleton, run.blocks)
    names = [name for name, _param in skeleton.named_parameters()
             if not name.startswith(f"{run.block_path}.") and _keys_of(index, name) and name.startswith(prefix)]
    tied = root is skeleton and getattr(run.model_config, "tie_word_embeddings", False)
    for name, value in index.read_params(names, run.device).items():
        set_module_tensor_to_device(skeleton, name, run.device, value=value)
    if tied:
        skeleton.tie_weights()
    try:
        return run.capture(root)
    finally:
        for name in names:
            set_module_tensor_to_device(skeleton, name, "meta")
        if tied:
            skeleton.tie_weights()  # drop the LM head's reference to the real embedding too


def _keys_of(index: st.CheckpointIndex, name: str) -> list[str]:
    """The checkpoint keys model parameter `name` is stored under (none for an LM head tied to the embedding)."""
    if index.layout is None:
        return [name] if name in index.shapes else []
    return index.layout.keys_of(name)


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
