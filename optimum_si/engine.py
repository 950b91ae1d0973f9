"""The block-by-block engine: capture the inputs of the first decoder block, then for each block
collect statistics -> prune -> re-run the pruned block so the next one sees pruned outputs.

The engine never asks where weights come from: a `BlockSource` hands it one block at a time on the execution
device and takes it back when done (in memory now; streaming from safetensors uses the same loop).

Lifecycle per block (one dense statistics pass, as the Wanda and SparseGPT reference code does; or one pass per
group with `true_sequential`):
    load -> [induce] -> statistics pass(es) -> prune -> propagate (skipped after the last block) -> release
"""

from __future__ import annotations

import fnmatch
import inspect
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from .activations import ActivationStore
from .architectures import BLOCK_PATTERNS, spec_for
from .block_error import OutputErrorProbe
from .config import SIConfig
from .masks import select_mask
from .methods import PruningMethod
from .report import BlockInduction, BlockRecord, LayerRecord, PruneReport
from .stats import InputStats, InputStatsCollector, StopForward
from .targets import WeightTarget
from .weights import UndoLog

__all__ = [
    "BlockInputs",
    "BlockSource",
    "InMemoryBlocks",
    "find_decoder_blocks",
    "select_linears",
    "capture_block_inputs",
    "run_block",
    "BlockEngine",
]

logger = logging.getLogger(__name__)


class _BlockInputsCaptured(Exception):
    def __init__(self, args: tuple, kwargs: dict) -> None:
        super().__init__("block inputs captured")
        self.args = args
        self.kwargs = kwargs


@dataclass
class BlockInputs:
    """Hidden states entering the current block, one tensor per calibration batch, and the keyword arguments
    (attention mask, rotary embeddings, ...) replayed for every block, keyed by batch size."""

    hidden: ActivationStore | list[torch.Tensor]
    kwargs: dict[int, dict[str, Any]] = field(default_factory=dict)
    # Induction with a global target: the same windows through the *dense* model (a teacher stream).
    teacher: ActivationStore | list[torch.Tensor] | None = None

    @property
    def tokens(self) -> int:
        shapes = self.hidden.shapes if isinstance(self.hidden, ActivationStore) else [h.shape for h in self.hidden]
        return sum(shape[0] * shape[1] for shape in shapes)


class BlockSource(Protocol):
    def __len__(self) -> int: ...

    def load(self, index: int) -> nn.Module:
        """Block `index`, with real weights on the execution device."""

    def release(self, index: int, block: nn.Module) -> None:
        """Called when the engine is done with block `index`, after a fault too: free it / move it home. A source
        that writes blocks out also has `commit(index, block)`, called only once the block is fully pruned."""

    def load_dense(self, index: int) -> nn.Module:
        """Block `index` with its original (unpruned) weights; only needed to resume an interrupted run."""


class InMemoryBlocks:
    """Blocks of a model already in memory; moved to the execution device one at a time when needed."""

    def __init__(self, blocks: Sequence[nn.Module], device: torch.device) -> None:
        self.blocks = blocks
        self.device = device
        self._home: dict[int, torch.device] = {}

    def __len__(self) -> int:
        return len(self.blocks)

    def load(self, index: int) -> nn.Module:
        block = self.blocks[index]
        home = _module_device(block)
        if home != self.device:
            self._home[index] = home
            block.to(self.device)
        return block

    def release(self, index: int, block: nn.Module) -> None:
        home = self._home.pop(index, None)
        if home is not None:
            block.to(home)


def _module_device(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def _get_submodule(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def find_decoder_blocks(model: nn.Module, block_name: str | None = None) -> tuple[str, nn.ModuleList]:
    """The dotted path and the ModuleList of decoder blocks; a clear error if none is found."""
    if block_name is not None:
        candidates = [block_name]
    else:
        spec = spec_for(getattr(getattr(model, "config", None), "model_type", None))
        candidates = ([spec.block_path] if spec else []) + list(BLOCK_PATTERNS)
    for path in candidates:
        blocks = _get_submodule(model, path)
        if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
            return path, blocks
    if block_name is not None:
        raise ValueError(f"block_name={block_name!r} does not name a non-empty nn.ModuleList in {type(model).__name__}.")
    raise ValueError(
        f"Could not find the decoder blocks of {type(model).__name__} (tried {', '.join(candidates)}). "
        "Pass the dotted path of its block list as SIConfig(block_name=...), e.g. block_name='model.layers'."
    )


def select_linears(block: nn.Module, prefix: str, targets: list[str] | None, ignore: list[str]) -> dict[str, nn.Linear]:
    """Linears of `block` to prune, keyed by their name inside the block. Patterns match the full module name."""
    selected = {}
    for name, module in block.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        full = f"{prefix}.{name}"
        if targets is not None and not any(fnmatch.fnmatchcase(full, p) for p in targets):
            continue
        if any(fnmatch.fnmatchcase(full, p) for p in ignore):
            continue
        selected[name] = module
    return selected


def _modules_outside(root: nn.Module, blocks: nn.Module) -> list[nn.Module]:
    """The largest submodules of `root` that do not contain `blocks` (embeddings, rotary embedding, final norm...)."""
    outside = []
    for child in root.children():
        if child is blocks:
            continue
        if any(m is blocks for m in child.modules()):
            outside.extend(_modules_outside(child, blocks))
        else:
            outside.append(child)
    return outside


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module, blocks: nn.ModuleList, batches: Sequence[torch.Tensor], device: torch.device,
    storage: str = "device", directory: str | None = None,
) -> BlockInputs:
    """Run the model on each batch of token ids up to the first block, recording its inputs and kwargs.

    The hidden states are kept in an `ActivationStore` with the given `storage` ("device", "cpu" or "disk")."""
    moved = []
    for module in _modules_outside(model, blocks):
        home = _module_device(module)
        if home != device and home.type != "meta":  # meta: offloaded by accelerate, its hooks onload it
            moved.append((module, home))
            module.to(device)

    def stop(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        raise _BlockInputsCaptured(args, kwargs)

    inputs = BlockInputs(hidden=ActivationStore(storage, device, directory))
    handle = blocks[0].register_forward_pre_hook(stop, with_kwargs=True)
    try:
        for batch in batches:
            try:
                model(input_ids=batch.to(device), use_cache=False)
            except _BlockInputsCaptured as captured:
                kwargs = dict(captured.kwargs)
                hidden = captured.args[0] if captured.args else kwargs.pop("hidden_states")
                if len(captured.args) > 1:  # GPT-2 passes cache and mask positionally: replay them by name
                    kwargs.update(_positional_as_keywords(blocks[0], captured.args, kwargs))
                inputs.hidden.append(hidden.detach())
                inputs.kwargs.setdefault(hidden.shape[0], kwargs)
            else:
                raise RuntimeError(
                    "The forward pass finished without reaching the first decoder block; check SIConfig(block_name=...)."
                )
    finally:
        handle.remove()
        for module, home in moved:
            module.to(home)
    return inputs


def _positional_as_keywords(block: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The block's positional arguments after the hidden states, named after its forward's parameters."""
    names = [name for name, p in inspect.signature(block.forward).parameters.items()
             if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    named = dict(zip(names[1:], args[1:]))
    if len(args) > len(names) or set(named) & set(kwargs):
        raise RuntimeError(
            f"{type(block).__name__} received {len(args)} positional arguments that cannot be named from its forward "
            "signature; only the hidden states are supported positionally."
        ) from None
    return named


def _block_output(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


@torch.no_grad()
def run_block(block: nn.Module, inputs: BlockInputs, collector: InputStatsCollector | None = None):
    """Forward every batch through `block`; the outputs are stored like the inputs. With a collector, passes may stop
    early (no outputs returned)."""
    outputs = inputs.hidden.new() if isinstance(inputs.hidden, ActivationStore) else []
    for hidden in inputs.hidden:
        kwargs = inputs.kwargs[hidden.shape[0]]
        try:
            outputs.append(_block_output(block(hidden, **kwargs)))
        except StopForward:
            pass
        finally:
            if collector is not None:
                collector.end_pass()
    return outputs


class BlockEngine:
    """Runs the per-block loop of one pruning run and fills a `PruneReport`.

    With `config.induction`, each block gets one full dense pass (statistics and dense outputs), the equivalent
    distribution-level fold, the base pruner, then the feature-level induction against the dense outputs.
    """

    def __init__(
        self,
        config: SIConfig,
        report: PruneReport,
        undo: UndoLog,
        sequential_groups: tuple[tuple[str, ...], ...] | None = None,
        model_config: Any = None,
        prune: bool = True,
        sparsity_for: Callable[[str], float] | None = None,
        reduce_stats: Callable[[torch.Tensor], None] | None = None,
    ) -> None:
        self.config = config
        # Sparsity of each target by full name (optimum_si.plan.PrunePlan.sparsity_for); the recipe's by default.
        self.sparsity_for = sparsity_for or (lambda _name: config.sparsity)
        # Seam for data-parallel calibration: an in-place reduction (all-reduce sum) applied to every statistic
        # after its collection pass, before any check or mask reads it. None: this process saw every token.
        self.reduce_stats = reduce_stats
        self.report = report
        self.undo = undo
        self.sequential_groups = sequential_groups
        self.model_config = model_config
        self.prune = prune  # False: induction only (distribution level, dense function unchanged)
        self.method: PruningMethod = config.pruning_method  # with the recipe's knobs (ria_a, alps_rho0, ...)
        self._si_probe: OutputErrorProbe | None = None  # the current block's probe fed by SI's dense pass

    def _groups(self, linears: dict[str, nn.Linear]) -> list[dict[str, nn.Linear]]:
        if not self.config.true_sequential or not self.sequential_groups:
            return [linears]
        groups, placed = [], set()
        for names in self.sequential_groups:
            group = {n: linears[n] for n in names if n in linears}
            if group:
                groups.append(group)
                placed.update(group)
        rest = {n: m for n, m in linears.items() if n not in placed}
        return groups + ([rest] if rest else [])

    def run(
        self,
        source: BlockSource,
        block_prefix: str,
        inputs: BlockInputs | None,
        linears_of: Callable[[int, nn.Module], dict[str, nn.Linear]],
        first: int = 0,
    ) -> None:
        """Prune every block of `source` from `first` on (earlier blocks, already pruned by an interrupted run, are
        only re-run to rebuild the activations). `inputs` is None for data-free runs (plain magnitude)."""
        if inputs is not None:
            teacher_needed = self.config.induction and self.config.induction_target == "global" and self.prune
            for index in tqdm(range(first), desc="Replaying finished blocks", disable=not self.config.show_progress or not first):
                if teacher_needed:  # the dense teacher stream goes through the *source* weights of the block
                    block = source.load_dense(index)
                    try:
                        teacher = inputs.teacher if inputs.teacher is not None else inputs.hidden
                        inputs.teacher = run_block(block, BlockInputs(teacher, inputs.kwargs))
                    finally:
                        source.release(index, block)
                block = source.load(index)
                try:
                    inputs.hidden = run_block(block, inputs)
                finally:
                    source.release(index, block)
        progress = tqdm(range(first, len(source)), desc="Pruning blocks", disable=not self.config.show_progress,
                        unit="block")
        for index in progress:
            started = time.perf_counter()
            record = BlockRecord(index=index, seconds=0.0)
            self._prefix = f"{block_prefix}.{index}"
            block = source.load(index)
            try:
                # The dense block's outputs on a few windows, taken before any weight changes (optimum_si.block_error):
                # from a pass over the same inputs that runs anyway when there is one (SI's dense pass, or the first
                # statistics pass run to the end on the probe windows), else from a forward of its own.
                self._si_probe = None
                probe_source = self._probe_source(inputs)
                error_probe = OutputErrorProbe(block, inputs) if probe_source == "own" else None
                linears = _as_targets(linears_of(index, block))
                inducer = None
                if self.config.induction and inputs is not None:
                    inducer = self._induce_and_prune(index, block, f"{block_prefix}.{index}", linears, inputs, record)
                    if error_probe is None:
                        error_probe = self._si_probe
                else:
                    for position, group in enumerate(self._groups(linears)):
                        t0 = time.perf_counter()
                        if probe_source == "statistics" and position == 0:  # the first group sees the dense block
                            windows = OutputErrorProbe.local_windows(len(inputs.hidden))
                            stats, dense = self._collect(index, block, group, inputs, probe_windows=windows)
                            error_probe = OutputErrorProbe(block, inputs, dense=dense)
                        else:
                            stats = self._collect(index, block, group, inputs) if self._needs_stats() else {}
                        t1 = time.perf_counter()
                        self._prune_group(f"{block_prefix}.{index}", group, stats)
                        record.stats_seconds += t1 - t0
                        record.prune_seconds += time.perf_counter() - t1
                outputs = None
                if inputs is not None and index + 1 < len(source):
                    t0 = time.perf_counter()
                    outputs = run_block(block, inputs)
                    record.propagate_seconds = time.perf_counter() - t0
                if inducer is not None:
                    self._conclude_induction(index, inducer, f"{block_prefix}.{index}", linears, record, outputs)
                    if outputs is not None and not inducer.record.kept:
                        outputs = run_block(block, inputs)  # reverted weights: the next block must see their outputs
                if error_probe is not None:
                    record.output_error = error_probe.measure(block, outputs)
                if outputs is not None:
                    _check_finite(outputs, f"the outputs of block {index}")
                    inputs.hidden = outputs
                if hasattr(source, "commit"):  # only a fully pruned block is written: `release` runs after faults too
                    source.commit(index, block)
            finally:
                source.release(index, block)
            record.seconds = time.perf_counter() - started
            self.report.blocks.append(record)
            logger.info(
                "block %d/%d pruned in %.2f s (stats %.2f, prune %.2f, propagate %.2f)",
                index + 1, len(source), record.seconds, record.stats_seconds, record.prune_seconds,
                record.propagate_seconds,
            )

    def _statistics_from_teacher(self) -> bool:
        """Whether SI takes the base pruner's statistics from the teacher pass (docs/si-design.md: measured equal
        for Wanda, whose metric only needs ||x_j||, at one partial pass less per block; SparseGPT's weight updates
        are meant for the inputs the pruned model really sees, and magnitude was not measured that way)."""
        choice = self.config.induction_statistics
        return choice == "dense" or (choice == "auto" and self.method.si_statistics == "dense")

    def _needs_stats(self) -> bool:
        return self.method.needs_data

    def _probe_source(self, inputs: BlockInputs | None) -> str | None:
        """Where the output-error probe takes the dense block's outputs from: None (no probe: nothing is pruned or
        there is no data), "si" (SI's dense pass), "statistics" (the first statistics pass, run to the end on the
        probe windows: about 0.03 of a block pass instead of 0.125) or "own" (a forward of its own)."""
        if inputs is None or not self.prune:
            return None
        if self.config.induction:
            return "si" if self._dense_pass_feeds_probe() else "own"
        # With expert_calibration="all" the statistics pass sends every token to every expert: not the block's outputs.
        if self._needs_stats() and self.config.expert_calibration != "all":
            return "statistics"
        return "own"

    def _dense_pass_feeds_probe(self) -> bool:
        """Whether SI's dense outputs are the unchanged block on the pruned stream's own inputs (the local target), as
        the output-error probe needs (with expert_calibration="all" they come from a routed pass of their own)."""
        return self.config.induction_target != "global"

    def _induce_and_prune(self, index: int, block: nn.Module, prefix: str, linears: dict[str, nn.Linear],
                          inputs: BlockInputs, record: BlockRecord):
        """Returns the block's `BlockInducer` (its verdict is taken after propagation), or None for induce-only runs."""
        from .induction import BlockInducer, fold_distribution_level

        targets, linears = linears, _plain_linears(linears)

        t0 = time.perf_counter()
        # Global target: the dense model's own block outputs (a teacher stream), so each block also learns to undo
        # upstream error. Local target: the dense block on the pruned stream's inputs.
        global_target = self.prune and self.config.induction_target == "global"
        teacher = BlockInputs(inputs.teacher if inputs.teacher is not None else inputs.hidden, inputs.kwargs) \
            if global_target else inputs
        separate = global_target and not self._statistics_from_teacher()
        # With expert_calibration="all" the statistics pass sends every token to every expert, so its outputs are not
        # the block's: the targets then need a pass of their own, with the model's routing.
        all_tokens = self.config.expert_calibration == "all" and any(t.expert is not None for t in targets.values())
        if separate or all_tokens:
            stats = self._collect(index, block, targets, inputs if separate else teacher)
            dense_outputs = run_block(block, teacher)
            _check_finite(dense_outputs, f"the dense outputs of block {index}")
        else:  # one pass gives the statistics and the targets
            stats, dense_outputs = self._collect(index, block, targets, teacher, keep_outputs=True)
        if self.prune and self._dense_pass_feeds_probe():
            self._si_probe = OutputErrorProbe(block, inputs, dense=dense_outputs)
        if global_target:
            inputs.teacher = dense_outputs
        t1 = time.perf_counter()
        spreads, row_scales = {}, {}
        # Wanda and SparseGPT masks are invariant to the equivalent scales (docs/si-design.md §1), except that
        # SparseGPT's per-block mask sees row scales and its damping is not scale-covariant: only magnitude, and
        # induce() (which hands the model to any later pruner), fold them.
        if self.config.induction_init == "data" and (self.method.fold_changes_mask or not self.prune):
            spreads, row_scales = fold_distribution_level(block, self.model_config, stats, targets, self.config,
                                                          self.undo)
        record.stats_seconds += t1 - t0
        if not self.prune:
            record.induction = BlockInduction(scale_spread=spreads, seconds=time.perf_counter() - t1)
            return
        dense_weights = {name: targets[name].weight().detach().float().clone() for name in linears}
        keeps = self._prune_group(prefix, targets, stats, row_scales)
        t2 = time.perf_counter()
        record.prune_seconds += t2 - t1
        inducer = BlockInducer(self.config, self.undo, {n: self.sparsity_for(f"{prefix}.{n}") for n in linears})
        inducer.run(block, linears, dense_weights, keeps, stats, inputs.hidden, inputs.kwargs, dense_outputs, row_scales)
        record.induction = BlockInduction(scale_spread=spreads)
        return inducer

    def _conclude_induction(self, index: int, inducer, prefix: str, linears: dict[str, nn.Linear],
                            record: BlockRecord, outputs: list[torch.Tensor] | None) -> None:
        """Keep or revert the block's induction from its probe loss (read off `outputs` when the block was propagated)."""
        inducer.verify(outputs)
        result = inducer.record
        for name, target in linears.items():
            self.report.layers[f"{prefix}.{name}"].zeros = target.zeros()
        result.scale_spread = record.induction.scale_spread if record.induction is not None else None
        record.induction = result
        logger.info(
            "block %d: induction loss %.4g -> %.4g (%s), %d steps, %d mask changes, %.1f s", index,
            result.loss_before, result.loss_after, "kept" if result.kept else "reverted", result.steps,
            result.mask_changes, result.seconds,
        )

    def _collect(
        self, index: int, block: nn.Module, group: dict[str, WeightTarget], inputs: BlockInputs | None,
        keep_outputs: bool = False, probe_windows: Sequence[int] | None = None,
    ):
        """The statistics of `group` from one pass over `inputs`; with `keep_outputs` also the block's outputs on
        every window, with `probe_windows` (sorted) its outputs on those windows as {index: output}."""
        assert inputs is not None, "calibration inputs are required for data-driven methods"
        with InputStatsCollector(group, with_hessian=self.method.needs_hessian,
                                 all_tokens_to_experts=self.config.expert_calibration == "all",
                                 stop_when_done=not keep_outputs, run_to_end=probe_windows or ()) as collector:
            outputs = run_block(block, inputs, collector)
            stopped_early = collector.stop_when_done
        if self.reduce_stats is not None:
            for owner in {id(s): s for s in collector.stats.values()}.values():
                owner.reduce_(self.reduce_stats)
        unrouted: dict[tuple, InputStats] = {}
        for name, target in group.items():
            stats = collector.stats.get(name)
            if (stats is None or stats.tokens == 0) and target.expert is not None:
                stats = collector.stats[name] = self._unrouted_expert(index, name, target, unrouted)
            if stats is None or stats.tokens == 0:
                raise RuntimeError(
                    f"Block {index}: {name} received no input during calibration, so it cannot be pruned with "
                    f"{self.config.method}; add it to SIConfig(ignore=[...])."
                )
            if not stats.is_finite():
                raise FloatingPointError(
                    f"Block {index}: the calibration inputs of {name} contain NaN or inf. The model produces non-finite "
                    "activations on this calibration data (check the weights, or use float32/bfloat16 instead of float16)."
                )
            if not bool(stats.sq_norms.any()):  # all-zero inputs: every score ties and the mask would be arbitrary
                raise ValueError(
                    f"Block {index}: every calibration input of {name} is zero, so {self.config.method} has nothing to "
                    "rank its weights by; add it to SIConfig(ignore=[...]) or calibrate on other data."
                )
        if keep_outputs:
            _check_finite(outputs, f"the dense outputs of block {index}")
            return collector.stats, outputs
        if probe_windows is not None:
            # A stopping collector let only the probe windows finish; one that cannot stop (experts) let all finish.
            # Any other count (a hooked Linear some window never reached) cannot be matched to windows: None, and
            # the probe runs its own forward.
            if not stopped_early and len(outputs) == len(inputs.hidden):
                return collector.stats, {i: outputs[i] for i in probe_windows}
            if stopped_early and len(outputs) == len(probe_windows):
                return collector.stats, dict(zip(probe_windows, outputs))
            return collector.stats, None
        return collector.stats

    def _unrouted_expert(self, index: int, name: str, target: WeightTarget,
                         cache: dict[tuple, InputStats]) -> InputStats:
        """The rule for an expert no calibration token was routed to: identity statistics (every input channel
        equally important, H = I), so Wanda keeps the largest weights of each row and SparseGPT makes no cross-column
        update; named in the report (`fallbacks`) and the log, since its mask rests on no data."""
        stats = cache.get(target.stats_key)
        if stats is None:  # gate and up rows of one expert share it, as they share real statistics
            weight = target.weight()
            size = weight.shape[1]
            stats = InputStats.of_sq_norms(torch.ones(size, dtype=torch.float32, device=weight.device), tokens=1)
            if self.method.needs_hessian:
                stats.xtx = torch.eye(size, dtype=torch.float32, device=weight.device) / 2  # H = 2/n X X^T = I
            cache[target.stats_key] = stats
        self.report.fallbacks[f"{self._prefix}.{name}"] = "no calibration token routed to it: identity statistics"
        logger.warning("Block %d: no calibration token reached %s; pruned with identity statistics (more "
                       "num_samples route tokens to more experts).", index, name)
        return stats

    @torch.no_grad()
    def _prune_group(self, prefix: str, group: dict[str, WeightTarget], stats: dict[str, InputStats],
                     row_scales: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Prune every Linear of `group` with the base method; returns their keep masks when induction needs them.
        `row_scales` undoes, in the magnitude score, the row division of Linears that produce a scaled channel (see
        induction.py)."""
        cfg = self.config
        keeps = {}
        weights = {name: target.weight() for name, target in group.items()}
        if self.method.updates_weights:
            results = self._solve(prefix, weights, stats)
        else:
            results = self._mask_prune(prefix, weights, stats, row_scales)
        for name, new_weight, keep, error in results:  # lazily: one layer's temporaries at a time
            target = group[name]
            target.record(self.undo)
            target.write(new_weight)
            del new_weight  # a Linear's temporaries must not live on while the next (maybe larger) one is pruned
            self.report.layers[f"{prefix}.{name}"] = LayerRecord(
                name=f"{prefix}.{name}", numel=target.numel, zeros=target.zeros(), error=error
            )
            if cfg.induction:
                keeps[name] = keep
            del keep
        return keeps

    def _solve(self, prefix: str, weights: dict[str, torch.Tensor], stats: dict[str, InputStats]):
        """A weight-updating method's results; layers planned at another sparsity than the recipe's are solved in
        separate calls, each with a config at their sparsity (so `solve` only ever reads `config.sparsity`)."""
        by_sparsity: dict[float, dict[str, torch.Tensor]] = {}
        for name, weight in weights.items():
            by_sparsity.setdefault(self.sparsity_for(f"{prefix}.{name}"), {})[name] = weight
        for sparsity, part in by_sparsity.items():
            config = self.config if sparsity == self.config.sparsity or self.config.n_m else \
                self.config.replace(sparsity=sparsity)
            yield from self.method.solve(part, stats, config)

    def _mask_prune(self, prefix: str, weights: dict[str, torch.Tensor], stats: dict[str, InputStats],
                    row_scales: dict[str, torch.Tensor] | None):
        """(name, pruned weight, keep mask, output error) of a mask-only method, one layer at a time."""
        cfg = self.config
        for name, weight in weights.items():
            scores = self.method.score(weight, stats.get(name))
            if row_scales and name in row_scales:
                scores = scores * row_scales[name].to(scores.device).unsqueeze(1)
            keep = select_mask(scores, self.sparsity_for(f"{prefix}.{name}"), cfg.n_m, per_row=self.method.per_row)
            del scores
            new_weight = torch.where(keep, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))
            error = None
            if name in stats:  # sum over rows of ||x||^2-weighted squared removed weights (Wanda's output-error proxy)
                removed = weight.float().square().masked_fill_(keep, 0.0)
                error = float((removed @ stats[name].sq_norms.to(removed.device)).sum())
            yield name, new_weight, keep, error


def _as_targets(layers: dict[str, Any]) -> dict[str, WeightTarget]:
    """The block's plan as targets (a plan of bare Linears, as older callers give, is wrapped)."""
    return {name: item if isinstance(item, WeightTarget) else WeightTarget(name, item) for name, item in layers.items()}


def _plain_linears(targets: dict[str, WeightTarget]) -> dict[str, nn.Module]:
    """The targets whose learned scales SI trains (Linear, Conv1D: one module each). Fused experts and opted-in
    routers have no module of their own to wrap: they keep their base-pruned weights while the block trains."""
    return {name: target.module for name, target in targets.items()
            if target.expert is None and (target.is_linear or target.transposed)}


def _check_finite(tensors: list[torch.Tensor], what: str) -> None:
    for tensor in tensors:
        if not bool(torch.isfinite(tensor).all()):
            raise FloatingPointError(
                f"Non-finite values (NaN/inf) in {what}. The model produces non-finite activations on this calibration "
                "data (check the weights, or use float32/bfloat16 instead of float16)."
            )
