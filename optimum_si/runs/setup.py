"""The set-up of one pruning run, shared by every source (a model in memory, offloaded, or a streamed checkpoint).

`set_up_run` makes, in this order and before any weight changes, everything the walk needs: the decoder blocks, the
recipe to run with (Sparsity Induction checked against the architecture), the plan with all its checks, the
source's own checks, the execution device and the calibration token ids. `RunSetup` then builds the report, the
walker with its stages and the captured first-block inputs the same way for every source, so the in-memory and
streamed runs differ only in their block source and in what they do with the result.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import distributed
from ..data.calibration import build_calibration
from ..induction.stage import InductionStage
from ..induction.support import check_training_precision, induction_supported
from ..modeling.activations import resolve_storage
from ..modeling.architectures import spec_for
from ..modeling.blocks import find_decoder_blocks
from ..modeling.capture import BlockInputs, capture_block_inputs
from ..modeling.devices import check_bfloat16
from ..modeling.offload import offload_execution_device
from ..modeling.targets import plan_block
from ..modeling.weights import UndoLog
from ..pipeline.dense_stream import DenseStream
from ..pipeline.stage import BlockStage
from ..pipeline.walker import BlockWalker
from ..planning.owl import OWLProfile
from ..planning.plan import PrunePlan
from ..recipe.config import SIConfig
from ..recipe.run_options import RunOptions
from ..reconstruction.stage import ReconstructionStage
from ..reporting.report import PruneReport

__all__ = ["RunSetup", "set_up_run", "execution_device", "build_plan"]

logger = logging.getLogger(__name__)


@dataclass
class RunSetup:
    """What one run was checked and planned to do."""

    config: SIConfig  # the recipe to run with (induction may have been turned off by unsupported="skip")
    options: RunOptions
    model_config: Any
    block_path: str
    blocks: nn.ModuleList
    plan: PrunePlan
    device: torch.device
    ids: torch.Tensor | None  # calibration token ids [num_samples, seqlen]; None for a data-free run
    calibration: Any  # the report's description of the calibration data

    @functools.cached_property
    def batches(self) -> list[torch.Tensor]:
        """The calibration batches this process pushes through the blocks (its share, in a data-parallel run). Made
        once: in a data-parallel run making them is a collective (every rank checks it was given the same ids)."""
        assert self.ids is not None, "a data-free run has no calibration batches"
        return distributed.calibration_batches(self.ids, self.config.batch_size)

    def new_report(self) -> PruneReport:
        cfg = self.config
        report = PruneReport(method=cfg.method, mask_structure=cfg.mask_structure, target_sparsity=cfg.sparsity)
        report.calibration = self.calibration
        report.skipped = self.plan.skipped
        return report

    def stages(self, prune: bool = True, owl_done: Sequence[float | None] = (),
               owl_on_block: Callable[[list[float | None]], None] | None = None) -> list[BlockStage]:
        """The recipe's stages, in the order the walker runs them: OWL's profile (when pruning), Sparsity Induction,
        then the reconstruction of the kept weights (when pruning), then the dense model's stream that their global
        targets share (when one has a global target). `owl_done` / `owl_on_block`: a streamed run's recorded OWL
        ratios and how it records new ones."""
        cfg = self.config
        global_induction = cfg.induction is not None and prune and cfg.induction.target == "global"
        global_reconstruction = cfg.reconstruction is not None and prune and cfg.reconstruction.target == "global"
        dense_stream = DenseStream() if global_induction or global_reconstruction else None
        stages: list[BlockStage] = []
        if cfg.profile_args is not None and prune:
            stages.append(OWLProfile(self.plan, cfg.sparsity, cfg.profile_args, owl_done, owl_on_block))
        if cfg.induction is not None:
            stages.append(InductionStage(cfg.induction, cfg.pruning_method, cfg.seed, cfg.n_m, self.model_config,
                                         prune=prune, dense_stream=dense_stream))
        if cfg.reconstruction is not None and prune:
            stages.append(ReconstructionStage(cfg.reconstruction, cfg.seed, dense_stream=dense_stream))
        if dense_stream is not None:  # last: it computes a block's dense output after the others' folds
            stages.append(dense_stream)
        return stages

    def walker(self, report: PruneReport, undo: UndoLog, prune: bool = True,
               stages: Sequence[BlockStage] | None = None) -> BlockWalker:
        """The walker of this run, data-parallel when a process group is active (statistics reduced over ranks;
        Hessian methods solved on owner ranks)."""
        cfg = self.config
        method, reduce_stats = distributed.data_parallel(cfg.pruning_method)
        spec = spec_for(getattr(self.model_config, "model_type", None))
        return BlockWalker(
            method, report, undo, block_path=self.block_path, targets_of=lambda index: self.plan[index],
            sparsity_for=self.plan.sparsity_for, n_m=cfg.n_m,
            stages=self.stages(prune) if stages is None else stages,
            sequential_groups=spec.sequential_groups if spec else None, true_sequential=cfg.true_sequential,
            expert_calibration=cfg.expert_calibration, prune=prune, reduce_stats=reduce_stats,
            show_progress=distributed.quiet(self.options).show_progress)

    def capture(self, root: nn.Module) -> BlockInputs:
        """The first block's inputs for every calibration batch, run through `root` (whose modules outside the
        blocks must hold real weights), kept where the run options' activation storage says."""
        options = self.options
        return capture_block_inputs(root, self.blocks, self.batches, self.device,
                                    resolve_storage(options.activation_storage, self.device), options.activation_dir)


def execution_device(options: RunOptions, blocks: nn.ModuleList) -> torch.device:
    """Where the blocks are computed: the run options' `device`; else where accelerate's hooks run offloaded blocks;
    else where the blocks already are; and blocks with no storage at all (a streamed checkpoint's skeleton) run on
    the fastest device there is."""
    if options.device:
        return torch.device(options.device)
    hooks = offload_execution_device(blocks[0])
    if hooks is not None:
        return hooks
    param = next(blocks[0].parameters(), None)
    if param is None or param.is_meta:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return param.device


def set_up_run(config: SIConfig, options: RunOptions, model: nn.Module, model_config: Any, tokenizer: Any,
               dataset: Any, source_checks: Callable[[SIConfig], None] | None = None) -> RunSetup:
    """Every check of a run, in one order for every source; `source_checks(config)` adds the source's own (finite
    weights in memory, the output folder when streaming) after the plan's and before the calibration data is
    tokenised. Raises before any weight or file is touched."""
    block_path, blocks = find_decoder_blocks(model, config.block_name)
    if config.induction is not None and not induction_supported(config.induction, model_config, blocks):
        config = config.replace(induction=False)
    plan = build_plan(config, blocks, block_path)
    if source_checks is not None:
        source_checks(config)
    device = execution_device(options, blocks)
    if config.induction is not None:
        check_training_precision(config.induction, device)
    if config.reconstruction is not None and config.reconstruction.precision == "bfloat16":
        check_bfloat16(device, "ReconstructionConfig.precision")
    ids, calibration = None, None
    if config.needs_calibration:
        ids, calibration = build_calibration(
            dataset, tokenizer, config.num_samples, config.seqlen, config.seed,
            vocab_size=getattr(model_config, "vocab_size", None),
            max_context=getattr(model_config, "max_position_embeddings", None),
        )
    elif dataset is not None:
        logger.warning("%s uses no calibration data: the dataset given is ignored (the card says so).", config.method)
    return RunSetup(config, options, model_config, block_path, blocks, plan, device, ids, calibration)


def build_plan(config: SIConfig, blocks: nn.ModuleList, block_path: str) -> PrunePlan:
    """The targets of every block, what is left dense on purpose and each target's sparsity; every check of the
    plan runs here."""
    plans = [plan_block(block, f"{block_path}.{i}", config.targets, config.ignore) for i, block in enumerate(blocks)]
    plan = PrunePlan(block_path, [p.targets for p in plans],
                     {name: why for p in plans for name, why in p.skipped.items()}, config.sparsity)
    if not any(plan):
        raise ValueError(
            f"No nn.Linear to prune was found in {block_path} with targets={config.targets} and "
            f"ignore={config.ignore}; widen `targets` or shorten `ignore`."
        )
    nm = config.n_m
    if nm is not None:
        bad = [f"{block_path}.{i}.{name}" for i, targets in enumerate(plan) for name, target in targets.items()
               if target.in_features % nm[1]]
        if bad:
            raise ValueError(
                f"mask_structure={config.mask_structure!r} needs input sizes divisible by {nm[1]}; these Linears are "
                f"not: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}. Add them to SIConfig(ignore=[...])."
            )
    return plan
