"""A run on a model in memory (or offloaded to CPU by accelerate hooks): refuse what cannot be pruned in place,
set up, walk the blocks, and restore every weight if anything fails."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from torch import nn

from ..checkpoint.progress import run_fingerprint
from ..modeling.blocks import find_decoder_blocks
from ..modeling.devices import check_runtime
from ..modeling.offload import is_offloaded, offload_execution_device, offload_hooks_above, offloaded_tensors
from ..modeling.weights import UndoLog
from ..pipeline.sources.in_memory import InMemoryBlocks
from ..pipeline.sources.offloaded import OffloadedBlocks
from ..recipe.config import SIConfig
from ..recipe.run_options import RunOptions
from ..reporting.report import PruneReport
from .agreement import agree_on_run, model_identity
from .setup import RunSetup, set_up_run

__all__ = ["prune_in_memory", "PRUNED_FLAG"]

logger = logging.getLogger(__name__)

# Set on a model once pruned: pruning it twice would compound the sparsity.
PRUNED_FLAG = "_optimum_si_pruned"


def prune_in_memory(config: SIConfig, options: RunOptions, model: nn.Module, tokenizer: Any, dataset: Any,
                    prune: bool = True) -> tuple[PruneReport, RunSetup]:
    """Prune `model` in place (with `prune=False`: only the transforming stages, Sparsity Induction's equivalent
    scaling); returns the report and the run's set-up. Every check runs before a weight is touched; on any failure
    the weights changed so far are restored before the error propagates."""
    check_runtime(options)
    if not isinstance(model, nn.Module):
        raise TypeError(f"prune() expects a torch.nn.Module (e.g. a transformers causal LM), got {type(model).__name__}.")
    if getattr(model, PRUNED_FLAG, False):
        raise RuntimeError(
            "This model was already pruned by optimum-si; pruning it twice would compound the sparsity. Load a fresh "
            "copy of the dense model."
        )
    _check_placement(model, config, options)
    run = set_up_run(config, options, model, getattr(model, "config", None), tokenizer, dataset,
                     source_checks=lambda _cfg: _check_finite_parameters(model))
    agree_on_run(run, run_fingerprint(run.config.to_dict(), run.ids, model_identity(model)),
                 "in memory, pruned" if prune else "in memory, induction only")
    report = run.new_report()
    undo = UndoLog()
    walker = run.walker(report, undo, prune=prune)
    use_cache = getattr(getattr(model, "config", None), "use_cache", None)
    was_training = model.training
    started = time.perf_counter()
    try:
        model.eval()
        if use_cache is not None:
            model.config.use_cache = False
        inputs = None
        if run.ids is not None:
            inputs = run.capture(model)
            report.capture_seconds = time.perf_counter() - started
            report.num_samples, report.seqlen = run.ids.shape
        with torch.no_grad():
            # Blocks offloaded by accelerate hooks need a source that writes back into the offloaded storage.
            source = OffloadedBlocks(run.blocks, run.device) if is_offloaded(run.blocks) else \
                InMemoryBlocks(run.blocks, run.device)
            walker.run(source, inputs)
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
        setattr(model, PRUNED_FLAG, True)
    logger.info(report.summary())
    return report, run


def _check_placement(model: nn.Module, config: SIConfig, options: RunOptions) -> None:
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
    # Offloaded to CPU by accelerate hooks: pruned block by block through `OffloadedBlocks`.
    above = offload_hooks_above(model, find_decoder_blocks(model, config.block_name)[1])
    if above:
        raise ValueError(
            f"accelerate offloads {above[0] or 'the model'} as a whole, decoder blocks included "
            "(preload_module_classes); in-memory pruning needs the blocks offloaded one by one (cpu_offload "
            f"or a device_map without preload_module_classes), or {streaming}."
        )
    hooks_device = offload_execution_device(model)
    if options.device and hooks_device is not None and not _same_device(torch.device(options.device), hooks_device):
        raise ValueError(
            f"device={options.device!r} differs from {hooks_device}, where the model's accelerate hooks run its "
            "offloaded modules; leave `device` unset for an offloaded model."
        )


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
