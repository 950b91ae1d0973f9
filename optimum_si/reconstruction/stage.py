"""Block reconstruction as a stage of the walk (`optimum_si.pipeline.stage`).

Per block: it asks the walker for the dense block's outputs (the local target, as Sparsity Induction's: the dense
block on the pruned model's own inputs), or, with the global target, reads the dense model's own block outputs off
the run's `DenseStream` (shared with Sparsity Induction's global target); once every earlier stage has concluded (SI
has kept or reverted its scales), it refits the kept weights of the block's pruned Linears, by gradient
(`gradient.py`) or in closed form (`closed_form.py`), with the mask held fixed, and keeps the refit only if it lowers
the block loss on held-out calibration windows that the refit never saw. A reverted block is left exactly as the
earlier stages left it.

With `mask_stream="unrefit"` the walk's own stream stays the one the blocks had before their refit (so every later
mask and SI scale is the one a run without reconstruction chooses) and this stage carries the refit model's stream
beside it: each block is refit, judged and propagated on the refit stream, and its local target is the dense block on
that stream. The report's per-block output error is measured on the refit stream too (the walker's probe, pointed
there by `probe_inputs`), so that it reads each block as written, on the stream the written model runs; so are the
held-out losses of the reconstruction record.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any

import torch
from torch import nn

from .. import distributed
from ..modeling.capture import BlockInputs, StopForward, block_output, run_block
from ..modeling.targets import WeightTarget
from ..modeling.weights import write_parameter
from ..observers.stats import InputStats, InputStatsCollector
from ..observers.windows import validation_windows
from ..pipeline.dense_stream import DenseStream
from ..pipeline.stage import BlockContext, BlockStage
from ..reporting.report import BlockReconstruction
from .closed_form import least_squares_on_support
from .config import ReconstructionConfig
from .gradient import block_loss, train_kept_weights

__all__ = ["ReconstructionStage", "check_resumable", "refit_modules"]

logger = logging.getLogger(__name__)

_JUDGED_WINDOWS = 8  # without held-out windows, the verdict is judged on this many training windows at most


def refit_modules(targets: dict[str, WeightTarget]) -> dict[str, WeightTarget]:
    """The targets whose kept weights are refit (Linear, Conv1D: one module each). Fused experts and opted-in routers
    keep the weights the base method gave them."""
    return {name: target for name, target in targets.items()
            if target.expert is None and (target.is_linear or target.transposed)}


def _mean_over_ranks(total: float, count: int) -> float:
    group = distributed.active()
    if group is not None:
        total, count = group.sum_values([total, count])
    return total / count if count else float("nan")


def check_resumable(config: ReconstructionConfig | None) -> None:
    """Raise ValueError if an interrupted run with this reconstruction recipe cannot be resumed from its written
    blocks (with mask_stream='unrefit', the stream its later masks are chosen on is not among them)."""
    if config is not None and config.mask_stream == "unrefit":
        raise ValueError("A run with ReconstructionConfig(mask_stream='unrefit') cannot be resumed: the stream its "
                         "later masks are chosen on (the blocks before their refit) is not in the written blocks. "
                         "Pass overwrite=True to start over, or use mask_stream='refit'.")


class ReconstructionStage(BlockStage):
    """Refits every block's kept weights after the earlier stages (see the module docstring). `seed` is the recipe's
    (the order of the training windows). `dense_stream`: the run's dense stream, which the global target needs (a
    stage of the same walk, run after this one)."""

    def __init__(self, config: ReconstructionConfig, seed: int, dense_stream: DenseStream | None = None) -> None:
        if config.target == "global" and dense_stream is None:
            raise ValueError("The reconstruction's global target needs the run's DenseStream (dense_stream=...).")
        self.config = config
        self.seed = seed
        self.dense_stream = dense_stream if config.target == "global" else None
        self._block: dict[str, Any] = {}
        self._separate = config.mask_stream == "unrefit"
        self._refit_hidden: Any = None  # mask_stream="unrefit": the refit model's stream entering the current block

    def replay(self, index: int, source: Any, inputs: BlockInputs) -> None:
        check_resumable(self.config)

    def begin_block(self, ctx: BlockContext) -> None:
        self._block = {}
        if ctx.inputs is None or not ctx.prune:
            return
        # The stream the block is refit, judged and (with mask_stream="unrefit") propagated on.
        self._block["hidden"] = self._refit_hidden if self._separate and self._refit_hidden is not None else \
            ctx.inputs.hidden
        if self._separate:  # the walk's outputs will be the unrefit block's: the probe must run the block as written
            ctx.probe_inputs = BlockInputs(self._block["hidden"], ctx.inputs.kwargs)
        if not self._separate and self.dense_stream is None:  # the local target: the dense block on these inputs
            ctx.keep_dense_outputs = True
        group = distributed.active()
        total = group.batch_total if group is not None else len(ctx.inputs.hidden)
        held_out = validation_windows(total, self.config.validation_fraction)
        judged = held_out or list(range(0, total, max(1, total // _JUDGED_WINDOWS)))[:_JUDGED_WINDOWS]
        if group is not None:
            held_out, judged = group.local_indices(held_out), group.local_indices(judged)
        self._block.update(held_out=held_out, judged=judged, validated=bool(held_out),
                           training=[i for i in range(len(ctx.inputs.hidden)) if i not in set(held_out)])

    def before_prune(self, ctx: BlockContext) -> None:
        """The closed form needs the dense weights and the Hessians of the dense block's Linear inputs on the training
        windows (the held-out ones must not shape the refit). The block is dense here, in the basis it is pruned in
        (an earlier stage's folded scales change no output)."""
        if self._block and self._separate and self.dense_stream is None:  # the local target on the refit stream
            self._block["dense_outputs"] = run_block(ctx.block, BlockInputs(self._block["hidden"], ctx.inputs.kwargs))
        if not self._block or self.config.mode != "closed-form":
            return
        targets = refit_modules(ctx.targets)
        self._block["dense"] = {name: t.weight().detach().float().clone() for name, t in targets.items()}
        training = BlockInputs([ctx.inputs.hidden[i] for i in self._block["training"]], ctx.inputs.kwargs)
        with InputStatsCollector(targets, with_hessian=True, stop_when_done=True) as collector:
            for hidden in training.hidden:
                try:
                    ctx.block(hidden, **training.kwargs[hidden.shape[0]])
                except StopForward:  # every hooked Linear saw its input: the rest of the block is not needed
                    pass
                finally:
                    collector.end_pass()
        group = distributed.active()
        if group is not None:
            for stats in {id(s): s for s in collector.stats.values()}.values():
                stats.reduce_(group.all_reduce_sum_)
        self._block["stats"] = collector.stats

    def conclude(self, ctx: BlockContext, outputs: Any) -> bool:
        dense = self.dense_stream.outputs if self.dense_stream is not None else \
            self._block.get("dense_outputs", ctx.dense_outputs)
        if not self._block:
            return False
        if self._separate:  # the walk's `outputs` are on its own stream: this stage's are computed on the refit one
            if dense is not None:
                self._refit_block(ctx, dense, None)
            self._refit_hidden = None if outputs is None else \
                run_block(ctx.block, BlockInputs(self._block["hidden"], ctx.inputs.kwargs))
            return False  # the walk's stream stays the unrefit blocks' outputs
        return dense is not None and self._refit_block(ctx, dense, outputs)

    def _refit_block(self, ctx: BlockContext, dense: Any, outputs: Any) -> bool:
        """Refit the block's kept weights to `dense` (the target outputs on every window) and keep the refit only if
        the held-out verdict says so; `outputs`: the block's outputs on its inputs, when the walker has them."""
        started = time.perf_counter()
        targets = refit_modules(ctx.targets)
        judged = self._block["judged"]
        hidden, kwargs = self._block["hidden"], ctx.inputs.kwargs
        current = [outputs[i] for i in judged] if outputs is not None else self._outputs(ctx.block, hidden, kwargs,
                                                                                           judged)
        before = self._mean_block_loss(current, [dense[i] for i in judged])
        record = BlockReconstruction(mode=str(self.config.mode), loss_before=before, kept=False,
                                     validated=self._block["validated"])
        dense_params = self._dense_params(ctx.block, targets) if self.config.train_norms and \
            self.config.mode == "gradient" else []
        fallback = {name: t.weight().detach().clone() for name, t in targets.items()}
        fallback_biases = {name: t.module.bias.detach().clone() for name, t in targets.items()
                           if getattr(t.module, "bias", None) is not None}
        fallback_dense = [(module, name, getattr(module, name).detach().clone()) for module, name in dense_params]
        if self.config.mode == "gradient" and self.config.proximal:
            training = self._block["training"]
            start = [outputs[i] for i in training] if outputs is not None else self._outputs(ctx.block, hidden,
                                                                                             kwargs, training)
            self._block["start_loss"] = self._mean_block_loss(start, [dense[i] for i in training])
        for attempt, lr in enumerate(self._learning_rates()):
            try:
                new_weights, new_biases, steps = self._refit(ctx, targets, dense_params, dense, lr)
                record.steps = (record.steps or 0) + steps
            except FloatingPointError:
                logger.warning("Block %d: the reconstruction loss is not finite at lr %g; keeping the block as it "
                               "was.", ctx.index, lr)
                self._restore_dense(fallback_dense)
                continue
            for name, target in targets.items():
                target.record(ctx.undo)
                target.write(new_weights[name])
            for name, bias in new_biases.items():
                ctx.undo.record(targets[name].module, "bias")
                write_parameter(targets[name].module, "bias", bias)
            after = self._mean_block_loss(self._outputs(ctx.block, hidden, kwargs, judged), [dense[i] for i in judged])
            record.loss_after = after
            record.kept = math.isfinite(after) and after < before * (1.0 - self.config.min_gain)
            if record.kept:
                record.lr = lr if self.config.mode == "gradient" else None
                record.retried = attempt > 0
                break
            for name, target in targets.items():
                target.write(fallback[name])
            for name, bias in fallback_biases.items():
                write_parameter(targets[name].module, "bias", bias)
            self._restore_dense(fallback_dense)
        for name, target in ctx.targets.items():
            ctx.report.layers[f"{ctx.name}.{name}"].zeros = target.zeros()
        record.seconds = time.perf_counter() - started
        ctx.record.reconstruction = record
        logger.info("block %d: reconstruction (%s) held-out loss %.4g -> %s (%s), %d steps, %.1f s", ctx.index,
                    record.mode, before, f"{record.loss_after:.4g}" if record.loss_after is not None else "-",
                    f"kept at lr {record.lr:g}" if record.kept and record.lr is not None else
                    "kept" if record.kept else "reverted", record.steps or 0, record.seconds)
        return record.kept

    # ------------------------------------------------------------------ the refit
    def _learning_rates(self) -> list[float]:
        """The refits tried in turn until the verdict keeps one: the configured one, then (gradient) the gentler
        `retry_lr` for a block whose refit at `lr` was reverted."""
        if self.config.mode == "gradient" and self.config.retry_lr is not None:
            return [self.config.lr, self.config.retry_lr]
        return [self.config.lr]

    def _refit(self, ctx: BlockContext, targets: dict[str, WeightTarget], dense_params: list[tuple[nn.Module, str]],
               dense_outputs: Any, lr: float) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], int]:
        """New weights [out, in] (and biases) of `targets` fit to `dense_outputs` (gradient: at learning rate `lr`),
        and the training steps taken."""
        if self.config.mode == "closed-form":
            stats: dict[str, InputStats] = self._block.pop("stats")
            dense = self._block.pop("dense")
            weights = {}
            for name, target in targets.items():
                keep = target.weight() != 0
                weights[name] = least_squares_on_support(dense[name], keep, stats[name].hessian, self.config.damping)
                weights[name] = torch.where(keep, weights[name], torch.zeros((), dtype=weights[name].dtype,
                                                                                device=keep.device))
                if not bool(torch.isfinite(weights[name]).all()):
                    raise FloatingPointError("non-finite closed-form refit")
            return weights, {}, 0
        for module, name in dense_params:
            ctx.undo.record(module, name)
        modules = {name: target.module for name, target in targets.items()}
        config = self.config if lr == self.config.lr else dataclasses.replace(self.config, lr=lr)
        wrappers, steps, _seconds = train_kept_weights(
            ctx.block, modules, [getattr(m, n) for m, n in dense_params], config, self._block["hidden"],
            ctx.inputs.kwargs, dense_outputs, self._block["training"], self.seed + ctx.index,
            start_loss=self._block.get("start_loss", 0.0))
        weights = {name: wrapper.masked_weight().detach() for name, wrapper in wrappers.items()}
        biases = {name: wrapper.bias.detach() for name, wrapper in wrappers.items()
                  if isinstance(wrapper.bias, nn.Parameter)}
        if not all(bool(torch.isfinite(w).all()) for w in weights.values()):
            raise FloatingPointError("non-finite refit weights")
        return weights, biases, steps

    @staticmethod
    def _dense_params(block: nn.Module, targets: dict[str, WeightTarget]) -> list[tuple[nn.Module, str]]:
        """(module, name) of the block's dense floating-point parameters that are not pruning targets (norms, and
        biases of modules that are not refit): trained with `train_norms`."""
        refit = {id(t.module) for t in targets.values()}
        found = []
        for module in block.modules():
            for name, param in module.named_parameters(recurse=False):
                if id(module) in refit or not param.is_floating_point() or param.dim() > 1:
                    continue
                found.append((module, name))
        return found

    @staticmethod
    @torch.no_grad()
    def _restore_dense(saved: list[tuple[nn.Module, str, torch.Tensor]]) -> None:
        for module, name, value in saved:
            getattr(module, name).copy_(value)

    @staticmethod
    @torch.no_grad()
    def _outputs(block: nn.Module, hidden: Any, kwargs: dict[int, dict], windows: list[int]) -> list[torch.Tensor]:
        return [block_output(block(hidden[i], **kwargs[hidden[i].shape[0]])) for i in windows]

    @staticmethod
    def _mean_block_loss(outputs: list[torch.Tensor], targets: list[torch.Tensor]) -> float:
        """Mean block loss over the given windows of every rank (the judged ones: so that all ranks take the same
        verdict)."""
        total = sum(float(block_loss(out, y)) for out, y in zip(outputs, targets))
        return _mean_over_ranks(total, len(outputs))
