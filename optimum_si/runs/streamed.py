"""A streamed run, `SIPruner(...).prune("<folder or repo>", save_dir=...)`: the output folder's life cycle around
the shared set-up (`runs.setup`) and the block walker over a `StreamingSource`.

The model is built on the meta device; only the non-block weights (embeddings, final norm) and one block are ever
materialised. Each finished block is appended to the output shards, so host memory stays bounded by one block, one
output shard and the calibration activations. The tensors, shards, progress file and fingerprint are
`optimum_si.checkpoint`'s; this module decides when each is read and written: refuse a clashing or foreign
`save_dir`, resume only the very same run, check the disk, prune the blocks not finished yet, append the non-block
tensors, finish and swap the folder in.

The run works in a sibling of `save_dir`, `.<name>.optimum-si-partial` (see `optimum_si.checkpoint.folders`),
swapped in as `save_dir` once complete. A block is written and recorded finished (`.optimum-si-progress.json`,
atomically, with the shards written so far) only after every planned Linear in it is pruned; a fault inside a block
leaves the progress at the last good block. A restarted run of the same run (same recipe, calibration tokens and
source checkpoint: the fingerprint; and the same source bytes under every finished block: their digests, recorded as
the bytes were read, are checked against the source before anything else) recomputes the activations through the
finished blocks, read back from its own output, and continues; with `sparsity_profile="owl"` the progress file also holds the outlier ratio of every block
profiled so far, so the dense profiling pass is not repeated either; every step of finishing (packing the parts into
shards of `max_shard_size`, index, side files, sidecars, manifest, swap) can be repeated, so a rerun after a kill or a full disk at any point completes the
folder.

Each tensor keeps its source dtype: blocks run in the checkpoint's main dtype, and a tensor stored in another dtype
is written back in its own (bit for bit when the run did not change it).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from .. import distributed
from ..checkpoint import folders
from ..checkpoint import progress as st
from ..checkpoint.files import PROGRESS_NAME
from ..checkpoint.index import CheckpointIndex, open_checkpoint, resolve_source
from ..checkpoint.links import resolved
from ..checkpoint.locking import output_lock
from ..checkpoint.shards import ShardWriter, parse_size
from ..export.save import write_sidecars
from ..modeling.capture import BlockInputs
from ..modeling.devices import check_runtime
from ..modeling.targets import check_floating
from ..modeling.weights import UndoLog
from ..pipeline.sources.streamed import StreamingSource
from ..recipe.config import SIConfig
from ..recipe.run_options import RunOptions
from ..reconstruction.stage import check_resumable
from ..reporting.report import LayerRecord, PruneReport
from .agreement import agree_on_run
from .setup import RunSetup, set_up_run

__all__ = ["prune_checkpoint"]

logger = logging.getLogger(__name__)


def prune_checkpoint(config: SIConfig, options: RunOptions, source: str, save_dir: str, tokenizer: Any, dataset: Any,
                     max_shard_size: str | int, overwrite: bool, revision: str | None,
                     token: str | None) -> PruneReport | None:
    """Stream `source` into `save_dir`; returns the run's report (the saved one, or None if unreadable, when the
    folder was already complete)."""
    from transformers import AutoConfig

    check_runtime(options)
    max_bytes = parse_size(max_shard_size)
    folder = resolve_source(source, revision=revision, token=token)
    config_path = os.path.join(folder, "config.json")
    if os.path.isfile(config_path):
        resolved(folder, "config.json", "config.json")  # read only where it really lives (links.py)
    try:
        model_config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError, RecursionError) as err:
        raise ValueError(f"{source} has no usable config.json ({err}).") from err
    index, skeleton = open_checkpoint(folder, model_config)
    target = folders.resolve(save_dir)

    def check_output(_cfg: SIConfig) -> None:
        folders.check_target(target, folder, options.activation_dir if options.activation_storage == "disk" else None)

    run = set_up_run(config, options, skeleton, model_config, tokenizer, dataset, source_checks=check_output)
    cfg, blocks, block_path, plan = run.config, run.blocks, run.block_path, run.plan
    _check_stored_dtypes(run, index)
    fingerprint = st.run_fingerprint(cfg.to_dict(), run.ids, index.identity())
    agree_on_run(run, fingerprint, "streamed", {"folder": target, "shard size": max_bytes, "overwrite": overwrite})
    group = distributed.active()
    if group is not None and not group.is_main:  # rank 0 alone owns the output folder (optimum_si.distributed)
        return _follow(group, run, skeleton, index, save_dir)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with output_lock(target):
        folders.recover(target)
        existing = folders.describe(target)
        if existing.own and not overwrite:
            if existing.complete and existing.fingerprint == fingerprint and existing.manifest == "ok":
                logger.info("%s is already complete for this run; nothing to do.", save_dir)
                return _saved_report(target)
            raise FileExistsError(
                f"{save_dir} holds a pruned checkpoint (or an unfinished run) that differs from this run in "
                f"{st.fingerprint_differences(existing.fingerprint, fingerprint, existing.manifest, existing.version)}"
                "; pass overwrite=True to replace it, or choose another save_dir."
            )
        folders.check_clashes(target, existing, st.output_names(folder, existing.foreign))
        partial = folders.work_folder(target, "partial")
        progress, discard = _partial_run(partial, save_dir, fingerprint, len(blocks), overwrite)
        if progress is None and not discard and os.path.isdir(partial):  # finished, killed before the swap
            folders.publish(partial, target, existing)
            return _saved_report(target)
        if progress:  # before any new block: the blocks it finished must come from the same source bytes
            _check_source_unchanged(run, skeleton, index, progress, partial)
            if progress["finished_blocks"]:  # before the capture, whose time a refused resume would waste
                check_resumable(cfg.reconstruction)
        where = os.path.dirname(partial)  # beside save_dir, or inside it for a mount point
        free = shutil.disk_usage(where).free + (_folder_bytes(partial) if discard else 0)
        # The output's size, and one shard more while the parts are packed into the final shards.
        needed = index.total_bytes * 1.05 + min(max_bytes, index.total_bytes)
        if progress is None and free < needed:
            raise OSError(
                f"Not enough disk space in {where}: the pruned checkpoint needs about "
                f"{needed / 1e9:.2f} GB while it is written, {free / 1e9:.2f} GB are free."
            )
        # Every check passed: from here on, files are written (only in the partial folder until the swap).
        if discard:
            shutil.rmtree(partial)
        os.makedirs(partial, exist_ok=True)
        finished = progress["finished_blocks"] if progress else 0
        writer = ShardWriter(partial, max_shard_size, done=progress["shards"] if progress else None,
                             packing=progress.get("packing") if progress else None)
        report = run.new_report()
        if progress:
            report.layers = {k: LayerRecord(**v) for k, v in progress["layers"].items()}
        planned = [plan.names(i) for i in range(len(plan))]
        # OWL's outlier ratio of each block profiled so far: recorded with the progress, so that a restarted run
        # does not profile those blocks again (all of them, once any block is pruned).
        owl_ratios: list[float | None] = list(progress.get("owl_ratios") or []) if progress else []
        # A digest of the source bytes each recorded block (and the capture's embeddings) was computed from, taken as
        # they were read: a resume checks them (`_check_source_unchanged`).
        digests: dict[str, str] = dict(progress.get("source_digests") or {}) if progress else {}

        def note_source(part: str, keys: list[str]) -> None:
            digest = index.digest_of(keys)
            if digests.get(part, digest) != digest:
                raise ValueError(f"The source checkpoint {folder} changed while this run read it ({_part_name(part)} "
                                 "was read twice with different bytes); keep the source unchanged while a run reads "
                                 "it, and start over with overwrite=True.")
            digests[part] = digest

        def record(done: int) -> None:
            if run.ids is not None and "capture" not in digests:
                note_source("capture", _capture_keys(run, skeleton, index))
            state = {"fingerprint": fingerprint, "finished_blocks": done, "shards": writer.shards,
                     "layers": {k: v.__dict__ for k, v in report.layers.items()}, "source_digests": digests}
            if cfg.profile_args is not None:
                state["owl_ratios"] = owl_ratios
            if writer.packing is not None:
                state["packing"] = writer.packing
            st.write_progress(partial, state)

        def on_block_profiled(ratios: list[float | None]) -> None:
            owl_ratios[:] = ratios
            for i, ratio in enumerate(ratios):
                if ratio is not None:
                    note_source(str(i), _block_keys(run, index, i))
            record(finished)

        def on_block_written(i: int) -> None:
            _check_pruned(report, planned[i], f"Block {i}")
            note_source(str(i), _block_keys(run, index, i))
            record(i + 1)

        if group is not None:  # the other ranks run the same blocks on their share of the windows
            group.announce({"finished": finished, "partial": partial, "shards": writer.shards,
                            "layers": progress["layers"] if progress else {}, "owl_ratios": list(owl_ratios)})
        started = time.perf_counter()
        if finished < len(blocks):
            _stream_blocks(run, skeleton, index, partial, writer, on_block_written, finished, report,
                           run.stages(owl_done=owl_ratios, owl_on_block=on_block_profiled))
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
        writer.finish(on_plan=lambda _packing: record(len(blocks)))
        st.copy_side_files(folder, partial)
        _check_pruned(report, [name for names in planned for name in names], "The run")
        write_sidecars(partial, cfg, report, model_config, base_model=source if not os.path.isdir(source) else None)
        folders.write_manifest(partial, fingerprint)
        os.remove(os.path.join(partial, PROGRESS_NAME))
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


def _check_stored_dtypes(run: RunSetup, index: CheckpointIndex) -> None:
    """The skeleton is built in the checkpoint's main floating dtype: refuse planned weights stored as integers,
    which the walk would otherwise prune as floats and round back."""
    integer = []
    for i, targets in enumerate(run.plan):
        names = {id(module): name for name, module in run.blocks[i].named_modules()}
        for target in targets.values():
            name = ".".join(part for part in (run.block_path, str(i), names[id(target.module)], target.param) if part)
            for key in _keys_of(index, name):
                dtype = index.torch_dtype(key)
                if dtype is None or not dtype.is_floating_point:
                    integer.append(f"{key} ({index.dtypes[key]})")
    check_floating(sorted(set(integer)))


def _part_name(part: str) -> str:
    return "the embeddings read for the capture" if part == "capture" else f"block {part}"


def _block_keys(run: RunSetup, index: CheckpointIndex, i: int) -> list[str]:
    """The checkpoint keys block `i` is read from."""
    prefix = f"{run.block_path}.{i}."
    return [key for name, _param in run.blocks[i].named_parameters() for key in _keys_of(index, prefix + name)]


def _capture_keys(run: RunSetup, skeleton: nn.Module, index: CheckpointIndex) -> list[str]:
    """The checkpoint keys the capture of the first block's inputs reads (see `capture_streamed`)."""
    _root, prefix = _capture_root(skeleton, run.blocks)
    return [key for name, _param in skeleton.named_parameters()
            if not name.startswith(f"{run.block_path}.") and name.startswith(prefix) for key in _keys_of(index, name)]


def _check_source_unchanged(run: RunSetup, skeleton: nn.Module, index: CheckpointIndex, progress: dict[str, Any],
                            partial: str) -> None:
    """Refuse to resume when the source bytes a recorded block (or the capture) was computed from have changed.

    The whole run is refused rather than the changed block redone: every later block was computed from that block's
    outputs, and OWL's allocation from all of them, so nothing after it could be kept; and a source that changes under
    a run is more often a mistake (another revision downloaded into the same folder) than an intent."""
    recorded = progress.get("source_digests") or {}
    finished = progress["finished_blocks"]
    if finished and not recorded:
        raise ValueError(f"The unfinished run in {partial} does not record the source bytes its blocks were computed "
                         "from (an earlier optimum-si wrote it), so it cannot be resumed safely; pass overwrite=True "
                         "to start over.")
    for part in sorted(recorded, key=lambda p: (p != "capture", int(p) if p.isdigit() else -1)):
        keys = _capture_keys(run, skeleton, index) if part == "capture" else \
            _block_keys(run, index, int(part)) if part.isdigit() and int(part) < len(run.blocks) else None
        if keys is None:
            raise ValueError(f"The progress file in {partial} records an unknown part {part!r} of the source; pass "
                             "overwrite=True to start over.")
        if index.fresh_digest_of(keys) != recorded[part]:
            raise ValueError(
                f"The source checkpoint {index.folder} changed since the unfinished run in {partial} read "
                f"{_part_name(part)} (its bytes differ), so the blocks finished from it cannot be kept; pass "
                "overwrite=True to start over from the source as it is now, or restore the source.")


def _follow(group: distributed.DataParallel, run: RunSetup, skeleton: nn.Module, index: CheckpointIndex,
            save_dir: str) -> PruneReport | None:
    """A data-parallel rank other than 0: it computes every block with its share of the windows (the statistics
    are reduced with rank 0's) and writes nothing; blocks finished by an interrupted run are read back from rank 0's
    partial folder (one host, or a shared file system)."""
    state = group.await_leader()  # None: rank 0 found nothing left to compute
    report = run.new_report()
    if state is not None:
        report.layers = {k: LayerRecord(**v) for k, v in state["layers"].items()}
        started = time.perf_counter()
        if state["finished"] < len(run.blocks):  # OWL: the same profile as rank 0, statistics reduced with its
            _stream_blocks(run, skeleton, index, state["partial"], SimpleNamespace(shards=state["shards"]), None,
                           state["finished"], report, run.stages(owl_done=state["owl_ratios"]))
        report.total_seconds = time.perf_counter() - started
        if run.ids is not None:
            report.num_samples, report.seqlen = run.ids.shape
    group.await_release()  # rank 0 has written and swapped in save_dir
    return report if state is not None else _saved_report(folders.resolve(save_dir))


def _stream_blocks(run: RunSetup, skeleton: nn.Module, index: CheckpointIndex, partial: str, writer: Any,
                   on_block_written: Callable[[int], None] | None, finished: int, report: PruneReport,
                   stages: list) -> None:
    """Capture the first block's inputs and walk the blocks from `finished` on."""
    finished_index = None
    if finished:
        try:
            finished_index = CheckpointIndex(partial, files=[s["file"] for s in writer.shards], layout=index.layout)
        except (OSError, ValueError) as err:
            raise ValueError(f"The unfinished run in {partial} is damaged ({err}); pass overwrite=True to start "
                             "over.") from err
    # A data-parallel follower (no on_block_written) only reads the shard list: it writes nothing.
    source = StreamingSource(run.blocks, run.block_path, index, run.device,
                             writer if on_block_written is not None else None, on_block_written,
                             finished_index=finished_index, finished=finished)
    walker = run.walker(report, UndoLog(enabled=False), stages=stages)  # the source on disk is never modified
    started = time.perf_counter()
    skeleton.eval()
    inputs = None
    with torch.no_grad():
        if run.ids is not None:
            inputs = capture_streamed(run, skeleton, index)
            report.capture_seconds = time.perf_counter() - started
        walker.run(source, inputs, first=finished)


def capture_streamed(run: RunSetup, skeleton: nn.Module, index: CheckpointIndex) -> BlockInputs:
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


def _keys_of(index: CheckpointIndex, name: str) -> list[str]:
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
    try:
        return PruneReport.load(folder)
    except (OSError, ValueError) as err:
        logger.warning("Could not read the report in %s (%s: %s); SIPruner.report is left empty.", folder,
                       type(err).__name__, err)
        return None


def _folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder)
               if os.path.isfile(os.path.join(folder, name)))
