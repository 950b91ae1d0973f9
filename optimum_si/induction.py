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
from collections.abc import Mapping

import torch
from torch import nn

from . import distributed
from .config import SIConfig
from .losses import SpectralNorm, block_mse
from .masks import select_mask
from .methods import PruningMethod
from .metrics import wanda_scores
from .optim import DampedAdam
from .report import BlockInduction
from .stats import InputStats, InputStatsCollector
from .targets import _is_conv1d
from .weights import UndoLog, write_parameter

__all__ = ["ScaledLinear", "BlockInducer", "data_driven_scale", "importance_histogram", "validation_windows",
           "HISTOGRAM_EDGES"]

logger = logging.getLogger(__name__)

_LOSS_PROBE_WINDOWS = 8  # calibration windows on which the before/after block loss is measured and compared
# log10 importance-score bins of the report's before/after histograms (the paper's Fig. 1), fixed so that blocks and
# models can be summed and compared.
HISTOGRAM_EDGES = [round(-8.0 + 0.1 * i, 1) for i in range(121)]


@torch.no_grad()
def importance_histogram(wrappers, scaled: bool = False) -> list[int]:
    """Counts of log10(|W| * ||x||) over every weight of `wrappers` (dense weights, scaled by the learned row and
    column scales when `scaled`); scores outside the edges land in the end bins."""
    low, high, bins = HISTOGRAM_EDGES[0], HISTOGRAM_EDGES[-1], len(HISTOGRAM_EDGES) - 1
    counts = torch.zeros(bins, dtype=torch.float64)
    for wrapper in wrappers:
        weight = wrapper.dense_weight
        if scaled:  # |r * W * s| = r * |W| * s exactly (positive scales): the same bits as scaling the scores
            weight = wrapper.log_row.detach().exp().unsqueeze(1) * weight * wrapper.log_col.detach().exp().unsqueeze(0)
        if wrapper.sq_norms is not None:
            scores = wanda_scores(weight, wrapper.sq_norms.to(weight.device))
        else:
            scores = weight.abs()
        logs = scores.clamp_min(1e-30).log10().clamp(low, high - 1e-6)
        counts += torch.histc(logs.float(), bins=bins, min=low, max=high).double().cpu()
    return [int(c) for c in counts.tolist()]


def data_driven_scale(sq_norms: torch.Tensor, tokens: int, exponent: float) -> torch.Tensor:
    """Equivalent-transform init: s_j = rms(x_j)^exponent, normalised to geometric mean 1.

    A scaled channel x_j / s_j with consumer column W[:, j] * s_j moves weight importance towards channels that carry
    large activations, which is what a per-matrix magnitude mask cannot see on its own (eq. 5 reads the statistics of
    the channel being scaled; see docs/si-design.md for why its literal (median - mean)^2 form is not used).
    """
    rms = (sq_norms.double() / max(tokens, 1)).sqrt().clamp_min(1e-8)
    scale = rms.pow(exponent)
    return (scale / scale.log().mean().exp()).clamp(1e-3, 1e3)


class ScaledLinear(nn.Module):
    """A pruned Linear (or GPT-2 Conv1D, which computes the same x W^T + b) with learnable log input-column and
    output-row scales, used only while inducing."""

    def __init__(self, linear: nn.Module, dense_weight: torch.Tensor, keep: torch.Tensor, pruned_weight: torch.Tensor,
                 sq_norms: torch.Tensor | None, config: SIConfig, score_row_scale: torch.Tensor | None = None, *,
                 sparsity: float | None = None, method: PruningMethod | None = None) -> None:
        """`sparsity`: this layer's planned sparsity (a non-uniform plan such as OWL gives each block its own;
        default the recipe's). `method`: the configured base method (default `config.pruning_method`)."""
        super().__init__()
        self.sparsity = config.sparsity if sparsity is None else sparsity
        self.score_row_scale = score_row_scale
        self.out_features, self.in_features = dense_weight.shape  # [out, in], also for a Conv1D stored [in, out]
        self.register_buffer("dense_weight", dense_weight.float(), persistent=False)
        self.register_buffer("pruned_weight", pruned_weight.float(), persistent=False)
        self.register_buffer("keep", keep, persistent=False)
        self.bias = None if linear.bias is None else linear.bias.detach().float()
        self.sq_norms = sq_norms
        self.config = config
        device = linear.weight.device
        self.log_col = nn.Parameter(torch.zeros(self.in_features, device=device), requires_grad=config.induction_col_scales)
        self.log_row = nn.Parameter(torch.zeros(self.out_features, device=device), requires_grad=config.induction_row_scales)
        # The configured method (the recipe's knobs, e.g. ria_a), so a refresh re-selects the mask the base pruner
        # would select, not the registered defaults'.
        self.method = method if method is not None else config.pruning_method
        # Mask-only methods may re-select the mask as the column scales move; a method that updated the kept weights
        # (SparseGPT) did so for its own mask, so it keeps that mask.
        self.refreshable = not self.method.updates_weights and config.induction_refresh != "none"
        self._masked = self._compute_masked()

    def _compute_masked(self) -> torch.Tensor:
        return self.pruned_weight if not self.refreshable else self.dense_weight * self.keep

    def masked_weight(self) -> torch.Tensor:
        return self._masked

    def refresh_mask(self, sq_norms: torch.Tensor | None = None) -> None:
        """Re-select the mask of the base metric for the layer with scaled inputs (eq. 11): the method's score of
        W * s (for Wanda |W| * s * ||x||); `sq_norms` replaces the cached input statistics (classical refresh)."""
        if not self.refreshable:
            return
        col = self.log_col.detach().exp()
        norms = sq_norms if sq_norms is not None else self.sq_norms
        stats = InputStats.of_sq_norms(norms) if norms is not None else None
        # |W * s| = |W| * s exactly (s > 0), so every metric sees the scaled layer without a second formula here.
        scores = self.method.score(self.dense_weight * col.unsqueeze(0), stats)
        if self.score_row_scale is not None:
            scores = scores * self.score_row_scale.to(scores.device).unsqueeze(1)
        self.keep = select_mask(scores, self.sparsity, self.config.n_m, per_row=self.method.per_row)
        self._masked = self._compute_masked()  # once per refresh, not once per forward

    def effective_weight(self) -> torch.Tensor:
        return self.log_row.exp().unsqueeze(1) * self.masked_weight() * self.log_col.exp().unsqueeze(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Scaling activations and outputs avoids a weight-sized gradient per step.
        # Under autocast (induction_precision="bfloat16") the product comes out in bf16: keep it so (y.dtype), or
        # the fp32 row scale would promote every later operation of the block back to fp32.
        y = nn.functional.linear(x * self.log_col.exp().to(x.dtype), self.masked_weight().to(x.dtype))
        y = y * self.log_row.exp().to(y.dtype)
        return y if self.bias is None else y + self.bias.to(y.dtype)


# The record BlockInducer fills is the report's typed per-block SI record.
InductionRecord = BlockInduction


def validation_windows(count: int, fraction: float) -> list[int]:
    """Indices of the `fraction` of `count` calibration windows held out from training, evenly spread so that no
    stretch of the calibration text is over-represented (at least one window is left for training)."""
    held = min(int(round(count * fraction)), count - 1)
    if held <= 0:
        return []
    return sorted({int(i * count / held) for i in range(held)})


def _matrix(module: nn.Module) -> torch.Tensor:
    """The weight as [out, in] (a Conv1D stores it [in, out])."""
    return module.weight.T if _is_conv1d(module) else module.weight


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


class BlockInducer:
    """Feature-level induction of one pruned block (see the module docstring).

    `run` trains the scales and folds them into the block's Linears; `verify` then compares the block loss on a
    fixed subset of windows before and after, and reverts to the base-pruned weights if induction did not help.
    The two are split so that the "after" loss can come from the outputs the engine computes anyway to feed the
    next block, instead of an extra forward pass.
    """

    def __init__(self, config: SIConfig, undo: UndoLog, sparsities: dict[str, float] | None = None) -> None:
        """`sparsities`: the planned sparsity of each Linear of the block by name (`PrunePlan.sparsity_for`), which
        every mask refresh keeps; missing names get the recipe's sparsity."""
        self.config = config
        self.undo = undo
        self.sparsities = sparsities or {}
        self.method = config.pruning_method
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
    ) -> InductionRecord:
        cfg = self.config
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(cfg.seed)
        wrappers = {
            name: ScaledLinear(linear, dense_weights[name], keep_masks[name], _matrix(linear).detach(),
                               stats[name].sq_norms if name in stats else None, cfg, (row_scales or {}).get(name),
                               sparsity=self.sparsities.get(name), method=self.method)
            for name, linear in linears.items()
        }
        self._linears, self._block, self._kwargs = linears, block, kwargs_by_batch
        # Data-parallel: `hidden` is this rank's share; windows are chosen over the whole set, as in one process.
        group = distributed.active()
        total = group.batch_total if group is not None else len(hidden)
        held_out = validation_windows(total, cfg.induction_validation_fraction)
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
        record = InductionRecord(float("nan"), float("nan"), False, 0.0, 0.0, 0, 0)
        try:
            record.loss_before = self._probe_loss([self._forward(hidden[i]) for i in self._probe])
            record.relative_error_base = self._relative(record.loss_before)
            if params:
                if cfg.induction_optimizer == "damped-adam":
                    optimiser = DampedAdam(params, lr=cfg.induction_lr)
                else:
                    optimiser = torch.optim.Adam(params, lr=cfg.induction_lr)
                spectral_scale = None
                bound = math.log(cfg.induction_max_scale) if cfg.induction_max_scale else None
                for _epoch in range(cfg.induction_epochs):
                    order = [training[i] for i in torch.randperm(len(training), generator=generator).tolist()]
                    # Data-parallel: one window per rank and step, gradients averaged over the ranks that had one
                    # (a rank whose share is used up sits the step out), so every rank takes the same steps.
                    for step in range(group.max_int(len(order)) if group is not None else len(order)):
                        index = order[step] if step < len(order) else None
                        finite = True
                        optimiser.zero_grad(set_to_none=True)
                        with torch.enable_grad():
                            if index is not None:
                                loss = block_mse(self._forward(hidden[index], grad=True), targets[index])
                                if cfg.induction_spectral_weight > 0:
                                    sigma = spectral({n: w.effective_weight() for n, w in wrappers.items()})
                                    if spectral_scale is None:
                                        spectral_scale = float(loss.detach())  # lambda is relative to the initial MSE
                                    # R_p = exp(-alpha * sum ||W||_2), alpha = 1 / sum of the dense norms (eq. 8).
                                    loss = loss + cfg.induction_spectral_weight * spectral_scale * torch.exp(
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
                        if steps % cfg.induction_refresh_interval == 0:
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
                write_parameter(linear, "weight", folded[name].T if _is_conv1d(linear) else folded[name])
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
        required = record.loss_before * (1.0 - self.config.induction_min_gain)
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
        """The block on one window; `grad`: a training step, run in `induction_precision` (the verdict's and the
        probe's forwards stay in the block's own dtype)."""
        low = grad and self.config.induction_precision == "bfloat16"
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
        if self.config.induction_refresh == "classical" and self.method.needs_data:
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


@torch.no_grad()
def fold_distribution_level(
    block: nn.Module,
    model_config,
    stats: dict[str, InputStats],
    linears: Mapping[str, object],
    config: SIConfig,
    undo: UndoLog,
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Fold the data-driven equivalent scales of every scaling group into `block` (dense function unchanged) and
    rescale the cached statistics of the affected consumers to match their new inputs x / s.

    `linears`: the block's pruning targets by name. Also returns, for every target whose *rows* were divided (the
    producer of a rows group: v_proj, up_proj, an expert's up rows, GPT-2's c_attn with its v third), that row scale
    (1 on rows no group divided): a per-matrix magnitude mask must score such a target with its rows undivided,
    otherwise the channels that carry the largest activations would be the first ones pruned.

    The q/k group keeps s = 1 here: no calibration statistic of its channels is collected, and the attention logits
    are invariant to it anyway. Returns the spread (max / min) of each folded scale.
    """
    from .transforms import fold_scaling, resolve_scaling_groups

    spreads = {}
    row_scales: dict[str, torch.Tensor] = {}
    adjusted: set[int] = set()
    for group in resolve_scaling_groups(block, model_config, config.induction_groups):
        if group.spec.kind == "qk":
            continue
        sources = [_segment_statistics(segment.columns, stats) for segment in group.segments]
        if all(source is None for source in sources):
            continue
        device = next(source[0].device for source in sources if source is not None)
        parts = []
        for segment, source in zip(group.segments, sources):
            if source is None:  # e.g. experts kept dense by `ignore`: s = 1 is still an equivalent transform
                parts.append(torch.ones(segment.rows[0].out_features, dtype=torch.float64, device=device))
                continue
            sq_norms, tokens = source
            if group.spec.kv_heads:  # o_proj inputs per query head -> one value per KV channel
                rep = group.heads // group.kv_heads
                sq_norms = sq_norms.view(group.kv_heads, rep, group.head_dim).mean(1).reshape(-1)
            parts.append(data_driven_scale(sq_norms, tokens, config.induction_init_exponent))
        scale = parts[0] if len(parts) == 1 else torch.cat(parts)
        fold_scaling(group, scale, undo=undo)
        for segment in group.segments:
            for matrix in segment.columns:
                entry = stats.get(matrix.name)
                if entry is None or id(entry) in adjusted:
                    continue
                adjusted.add(id(entry))
                column = group.consumer_scale(scale[segment.part]).to(entry.sq_norms)
                entry.sq_norms /= column.square()
                if entry.xtx is not None:
                    entry.xtx /= column.unsqueeze(0) * column.unsqueeze(1)
                entry._hessian_factor = None
            if group.spec.kind == "rows":
                for matrix in segment.rows:
                    if matrix.name not in linears:
                        continue
                    part = scale[segment.part].float()
                    if matrix.target_rows is None:
                        row_scales[matrix.name] = part
                    else:  # a block of rows inside a fused target (GPT-2's v in c_attn)
                        full = row_scales.setdefault(matrix.name, torch.ones(matrix.target_out, device=part.device))
                        full[matrix.target_rows[0]:matrix.target_rows[1]] = part
        spreads[group.name] = float(scale.max() / scale.min())
    return spreads, row_scales


def _segment_statistics(columns, stats: dict[str, InputStats]) -> tuple[torch.Tensor, int] | None:
    """(sum of x^2 per channel, tokens) of the channels a segment scales, from its consumers' statistics.

    A plain consumer sees every token. Experts see only the tokens routed to them, but every token reaches exactly
    top-k experts (or all of them with expert_calibration='all'), so the sum over the experts' statistics counts
    each token equally often in both sums: its RMS is the all-token RMS. (An expert no token reached carries
    placeholder statistics of one token, which barely weigh against real calibration data.)
    """
    plain = [stats[m.name] for m in columns if m.expert is None and m.name in stats]
    if plain:
        return plain[0].sq_norms.double(), plain[0].tokens
    experts = list({id(s): s for s in (stats.get(m.name) for m in columns if m.expert is not None) if s}.values())
    if not experts:
        return None
    return torch.stack([s.sq_norms.double() for s in experts]).sum(0), sum(s.tokens for s in experts)
