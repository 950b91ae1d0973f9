"""The set-up of one pruning run, shared by every source (a model in memory, offloaded, or a streamed checkpoint).

`set_up_run` makes, in this order and before any weight changes, everything the block walker needs: the decoder
blocks, the recipe to run with (Sparsity Induction checked against the architecture), the plan with all its
checks, the source's own checks, the execution device and the calibration token ids. `RunSetup` then builds the
report, the engine and the captured first-block inputs the same way for every source, so the in-memory and
streaming runs differ only in their `BlockSource` and in what they do with the result.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import distributed
from .activations import resolve_storage
from .architectures import spec_for
from .calibration import build_calibration
from .config import SIConfig
from .devices import check_training_precision
from .engine import BlockEngine, BlockInputs, capture_block_inputs, find_decoder_blocks
from .offload import offload_execution_device
from .plan import PrunePlan
from .report import PruneReport
from .targets import plan_block
from .weights import UndoLog

__all__ = ["RunSetup", "set_up_run", "execution_device"]

logger = logging.getLogger(__name__)


@dataclass
class RunSetup:
    """What one run was checked and planned to do."""

    config: SIConfig  # the recipe to run with (induction may have been turned off by induction_unsupported="skip")
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

    def engine(self, report: PruneReport, undo: UndoLog, prune: bool = True) -> BlockEngine:
        spec = spec_for(getattr(self.model_config, "model_type", None))
        engine = BlockEngine(distributed.quiet(self.config), report, undo,
                             sequential_groups=spec.sequential_groups if spec else None,
                             sparsity_for=self.plan.sparsity_for, model_config=self.model_config, prune=prune)
        distributed.prepare_engine(engine)  # data-parallel: reduced statistics, Hessians solved on owner ranks
        return engine

    def capture(self, root: nn.Module) -> BlockInputs:
        """The first block's inputs for every calibration batch, run through `root` (whose modules outside the
        blocks must hold real weights), kept where the recipe's activation storage says."""
        cfg = self.config
        return capture_block_inputs(root, self.blocks, self.batches, self.device,
                                    resolve_storage(cfg.activation_storage, self.device), cfg.activation_dir)


def execution_device(config: SIConfig, blocks: nn.ModuleList) -> torch.device:
    """Where the blocks are computed: the recipe's `device`; else where accelerate's hooks run offloaded blocks; else
    where the blocks already are; and blocks with no storage at all (a streamed checkpoint's skeleton) run on the
    fastest device there is."""
    if config.device:
        return torch.device(config.device)
    hooks = offload_execution_device(blocks[0])
    if hooks is not None:
        return hooks
    param = next(blocks[0].parameters(), None)
    if param is None or param.is_meta:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return param.device


def set_up_run(config: SIConfig, model: nn.Module, model_config: Any, tokenizer: Any, dataset: Any,
               source_checks: Callable[[SIConfig], None] | None = None) -> RunSetup:
    """Every check of a run, in one order for every source; `source_checks(config)` adds the source's own (finite
    weights in memory, the output folder when streaming) after the plan's and before the calibration data is
    tokenised. Raises before any weight or file is touched."""
    block_path, blocks = find_decoder_blocks(model, config.block_name)
    if config.induction:
        config = check_induction_support(config, model_config, blocks)
    plan = build_plan(config, blocks, block_path)
    if source_checks is not None:
        source_checks(config)
    device = execution_device(config, blocks)
    check_training_precision(config, device)
    ids, calibration = None, None
    if config.needs_calibration:
        ids, calibration = build_calibration(
            dataset, tokenizer, config.num_samples, config.seqlen, config.seed,
            vocab_size=getattr(model_config, "vocab_size", None),
            max_context=getattr(model_config, "max_position_embeddings", None),
        )
    return RunSetup(config, model_config, block_path, blocks, plan, device, ids, calibration)


def check_induction_support(config: SIConfig, model_config: Any, blocks: Sequence[nn.Module]) -> SIConfig:
    """The config to run with: SI needs a scaling-group mapping for the architecture (or the user's opt-out), and
    every block must match it. Each distinct block layout is checked (a Qwen-MoE model mixes dense-MLP and expert
    blocks), so a mismatch in a late block stops the run before any weight changes."""
    from .transforms import resolve_scaling_groups

    checked: set[tuple[tuple[str, str], ...]] = set()
    for index, block in enumerate(blocks):
        layout = tuple((name, type(module).__name__) for name, module in block.named_modules())
        if layout in checked:
            continue
        checked.add(layout)
        try:
            resolve_scaling_groups(block, model_config, config.induction_groups)
        except NotImplementedError:
            if config.induction_unsupported == "skip":
                logger.warning("No Sparsity Induction mapping for this architecture; pruning without induction.")
                return config.replace(induction=False)
            raise
        except AttributeError as err:
            raise ValueError(f"Block {index} does not match its architecture's scaling-group table: {err}") from err
    return config


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
