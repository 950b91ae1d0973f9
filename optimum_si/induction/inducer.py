"""Sparsity Induction (SI) for one decoder block: learned per-channel scales trained against the dense block.

Reading of arXiv 2602.21652 implemented here (the evidence is in docs/si-design.md):

- Distribution level (eq. 3, 5): an *equivalent* per-channel scale of every scaling group, initialised from the
  calibration data and folded into producer and consumers (`transforms.fold_scaling`); the dense function is
  unchanged. It is folded before pruning only for methods whose mask it improves (magnitude: `fold_changes_mask`;
  pruning-reference.md §2, docs/si-design.md §1 and §7).
- Feature level (eq. 4, 6-8, 10-11): after the base pruner, each pruned Linear gets learnable input-column scales
  s and output-row scales r, y = r * ((W * M) (s * x)) + b, trained to reconstruct the dense block output (MSE)
  with the spectral term R_p. Scaling the input of a layer by D = diag(s) turns its Wanda metric into
  |W| * sqrt(diag H) * s (eq. 10-11), so the mask of mask-only methods is refreshed from cached statistics as the
  scales move (the fast Hessian-diagonal refresh); the classical refresh re-collects the statistics with forward
  passes instead. The scales fold into the weights afterwards: zero extra parameters at inference.
"""

from __future__ import annotations

import logging
import math
import time

import torch
from torch import nn

from .. import distributed
from ..methods.base import Pattern, PruningMethod
from ..modeling.targets import is_conv1d
from ..modeling.weights import UndoLog, write_parameter
from ..observers.stats import InputStats, InputStatsCollector
from ..observers.windows import training_steps, validation_windows
from ..optim import training_optimizer
from ..reporting.report import BlockInduction
from .config import InductionConfig
from .losses import SpectralNorm, block_mse
from .scaled_linear import HISTOGRAM_EDGES, ScaledLinear, importance_histogram

__all__ = ["BlockInducer", "validation_windows"]

logger = logging.getLogger(__name__)

_LOSS_PROBE_WINDOWS = 8  # calibration windows on which the before/after block loss is measured and compared


def _matrix(module: nn.Module) -> torch.Tensor:
    """The weight as [out, in] (a Conv1D stores it [in, out])."""
    return module.weight.T if is_conv1d(module) else module.weight


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


class BlockInducer:
    """Feature-level induction of one pruned block (see the module docstring).

    `run` trains the scales and folds them into the block's Linears; `verify` then compares the block loss on a
    fixed subset of windows before and after, and reverts to the base-pruned weights if induction did not help.
    The two are split so that the "after" loss can come from the outputs the walker computes anyway to feed the
    next block, instead of an extra forward pass.
    """

    def __init__(self, config: InductionConfig, method: PruningMethod, seed: int, undo: UndoLog,
                 patterns: dict[str, Pattern]) -> None:
        """`method`: the configured base method; `seed`: the recipe's (window order, spectral vectors);
        `patterns`: the planned sparsity and N:M structure of each Linear of the block by name, which every mask
        refresh keeps."""
        self.config = config
        self.method = method
        self.seed = seed
        self.undo = undo
        self.patterns = patterns
        self._fallback: dict[str, torch.Tensor] = {}

    def run(
        self,
        block: nn.Module,
        linears: dict[str, nn.Module],
        dense_weights: dict[str, torch.Tensor],
        keep_masks: dict[str, torch.Tensor],
        stats: dict[str, InputStats],
        hidden: list[torch.Tensor],
        kwargs_by_batch: dict[int, dict],
        targets: list[torch.Tensor],
        row_scales: dict[str, torch.Tensor] | None = None,
    ) -> BlockInduction:
        cfg = self.config
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(self.seed)
        wrappers = {
            name: ScaledLinear(linear, dense_weights[name], keep_masks[name], _matrix(linear).detach(),
                               stats[name].sq_norms if name in stats else None, cfg, self.method, self.patterns[name],
                               (row_scales or {}).get(name))
            for name, linear in linears.items()
        }
        self._linears, self._block, self._kwargs = linears, block, kwargs_by_batch
        # Data-parallel: `hidden` is this rank's share; windows are chosen over the whole set, as in one process.
        group = distributed.active()
        total = group.batch_total if group is not None else len(hidden)
        held_out = validation_windows(total, cfg.validation_fraction)
        # The verdict is judged on held-out windows when there are any, else on a fixed subset of the training ones.
        self._probe = held_out or list(range(0, total, max(1, total // _LOSS_PROBE_WINDOWS)))[:_LOSS_PROBE_WINDOWS]
        self._validated = bool(held_out)
        if group is not None:
            held_out, self._probe = group.local_indices(held_out), group.local_indices(self._probe)
        training = [i for i in range(len(hidden)) if i not in set(held_out)]
        self._probe_targets = [targets[i] for i in self._probe]
        self._target_square = _mean_over_ranks(sum(float(y.float().square().mean()) for y in self._probe_targets),
                                               len(self._probe))
        self._hidden = hidden
        histogram_before = importance_histogram(wrappers.values())
        for name, wrapper in wrappers.items():
            _set_submodule(block, name, wrapper)
        spectral = SpectralNorm({n: w.dense_weight for n, w in wrappers.items()}, generator)
        params = [p for w in wrappers.values() for p in w.parameters() if p.requires_grad]
        # The block's own parameters (norms) are not trained: no gradient buffers for them.
        frozen = [p for p in block.parameters() if p.requires_grad and all(p is not q for q in params)]
        for p in frozen:
            p.requires_grad_(False)
        refresh_seconds, mask_changes, steps = 0.0, 0, 0
        record = BlockInduction(float("nan"), float("nan"), False, 0.0, 0.0, 0, 0)
        try:
            record.loss_before = self._probe_loss([self._forward(hidden[i]) for i in self._probe])
            record.relative_error_base = self._relative(record.loss_before)
            if params:
                optimiser = training_optimizer(cfg.optimizer, params, cfg.lr)
                spectral_scale = None
                bound = math.log(cfg.max_scale) if cfg.max_scale else None
                # Data-parallel: one window per rank and step, gradients averaged over the ranks that had one
                # (a rank whose share is used up sits the step out), so every rank takes the same steps.
                for index in training_steps(training, cfg.epochs, generator, group):
                    finite = True
                    optimiser.zero_grad(set_to_none=True)
                    with torch.enable_grad():
                        if index is not None:
                            loss = block_mse(self._forward(hidden[index], grad=True), targets[index])
                            if cfg.spectral_weight > 0:
                                sigma = spectral({n: w.effective_weight() for n, w in wrappers.items()})
                                if spectral_scale is None:
                                    spectral_scale = float(loss.detach())  # lambda is relative to the initial MSE
                                # R_p = exp(-alpha * sum ||W||_2), alpha = 1 / sum of the dense norms (eq. 8).
                                loss = loss + cfg.spectral_weight * spectral_scale * torch.exp(
                                    -sigma / spectral.initial)
                            finite = bool(torch.isfinite(loss))
                            if not finite and group is None:
                                raise FloatingPointError("non-finite induction loss")
                            if finite:
                                loss.backward()
                    if group is not None:  # raises FloatingPointError on every rank if one rank's loss was not
                        group.average_gradients(params, index is not None, finite)
                    optimiser.step()
                    if bound is not None:
                        with torch.no_grad():
                            for p in params:
                                p.clamp_(-bound, bound)
                    steps += 1
                    if steps % cfg.refresh_interval == 0:
                        t0 = time.perf_counter()
                        mask_changes += self._refresh(block, wrappers, hidden, kwargs_by_batch)
                        refresh_seconds += time.perf_counter() - t0
            folded = {name: wrapper.effective_weight().detach() for name, wrapper in wrappers.items()}
            if not all(bool(torch.isfinite(w).all()) for w in folded.values()):
                raise FloatingPointError("non-finite induced weights")
            record.kept = True
        except FloatingPointError:
            logger.warning("Induction produced a non-finite loss; keeping this block's base-pruned weights.")
        finally:
            for name, linear in linears.items():
                _set_submodule(block, name, linear)
            for p in frozen:
                p.requires_grad_(True)
        if record.kept:
            histograms = {"before": histogram_before, "after": importance_histogram(wrappers.values(), scaled=True)}
            record.importance_histogram = {"edges": HISTOGRAM_EDGES, **histograms}
            for name, linear in linears.items():
                self._fallback[name] = linear.weight.detach().clone()
                self.undo.record(linear, "weight")
                write_parameter(linear, "weight", folded[name].T if is_conv1d(linear) else folded[name])
        record.seconds, record.refresh_seconds = time.perf_counter() - started, refresh_seconds
        record.steps, record.mask_changes = steps, mask_changes
        self.record = record
        return record

    @torch.no_grad()
    def verify(self, outputs: list[torch.Tensor] | None = None) -> bool:
        """Keep the folded weights only if they lower the probe loss; returns False if the block was reverted.

        `outputs`: the induced block's outputs on every calibration window, when the caller computed them anyway.
        """
        record = self.record
        if not record.kept:
            return True
        started = time.perf_counter()
        if outputs is None:
            outputs = {i: self._forward(self._hidden[i]) for i in self._probe}
        record.loss_after = self._probe_loss([outputs[i] for i in self._probe])
        record.relative_error_induced = self._relative(record.loss_after)
        required = record.loss_before * (1.0 - self.config.min_gain)
        record.kept = math.isfinite(record.loss_after) and record.loss_after < required
        if self._validated:
            record.validation_loss_base, record.validation_loss_induced = record.loss_before, record.loss_after
        if not record.kept:
            logger.info("Induction did not lower the block loss (%.4g -> %.4g); reverting to the base-pruned weights.",
                        record.loss_before, record.loss_after)
            for name, linear in self._linears.items():
                write_parameter(linear, "weight", self._fallback[name])
        self._fallback.clear()
        record.seconds += time.perf_counter() - started
        return record.kept

    def _forward(self, x: torch.Tensor, grad: bool = False) -> torch.Tensor:
        """The block on one window; `grad`: a training step, run in `InductionConfig.precision` (the verdict's and the
        probe's forwards stay in the block's own dtype)."""
        low = grad and self.config.precision == "bfloat16"
        with torch.set_grad_enabled(grad), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=low):
            out = self._block(x, **self._kwargs[x.shape[0]])
        out = out[0] if isinstance(out, (tuple, list)) else out
        return out.float() if low else out

    def _probe_loss(self, outputs: list[torch.Tensor]) -> float:
        """Mean block loss over the probe windows (of every rank, so that all ranks take the same verdict)."""
        return _mean_over_ranks(sum(float(block_mse(out, y)) for out, y in zip(outputs, self._probe_targets)),
                                len(outputs))

    def _relative(self, loss: float) -> float | None:
        """A probe loss (mean squared error) as a relative error against the probe targets' mean square."""
        if not math.isfinite(loss) or self._target_square <= 0.0:
            return None
        return math.sqrt(loss / self._target_square)

    @torch.no_grad()
    def _refresh(self, block, wrappers: dict[str, ScaledLinear], hidden, kwargs_by_batch) -> int:
        """Refresh the masks of mask-only methods after a step; returns how many mask entries changed."""
        refreshable = {n: w for n, w in wrappers.items() if w.refreshable}
        if not refreshable:
            return 0
        before = {n: w.keep.clone() for n, w in refreshable.items()}
        if self.config.refresh == "classical" and self.method.needs_data:
            # Re-collect ||x_j||^2 of every layer with forward passes (what eq. 11 avoids).
            with InputStatsCollector(refreshable, with_hessian=False, stop_when_done=False) as collector:
                for x in hidden:
                    block(x, **kwargs_by_batch[x.shape[0]])
                    collector.end_pass()
            group = distributed.active()
            if group is not None:  # every rank refreshes from the statistics of all windows
                for owner in {id(s): s for s in collector.stats.values()}.values():
                    owner.reduce_(group.all_reduce_sum_)
            for name, wrapper in refreshable.items():
                # The collector saw the scaled inputs s * x; the metric multiplies by s itself.
                col = wrapper.log_col.exp()
                wrapper.refresh_mask(collector.stats[name].sq_norms / col.square())
        else:
            for wrapper in refreshable.values():
                wrapper.refresh_mask()
        return sum(int((before[n] != w.keep).sum()) for n, w in refreshable.items())


def _mean_over_ranks(total: float, count: int) -> float:
    """total / count, both summed over the data-parallel ranks first (a rank may hold none of the windows)."""
    group = distributed.active()
    if group is not None:
        total, count = group.sum_values([total, count])
    return total / count if count else float("nan")
