"""The block walker with a user-written `BlockSource`: the call order every source can rely on (load, then commit
only for a fully pruned block, release always, also after a fault) and the plan it is driven by."""

from __future__ import annotations

import pytest
import torch

from optimum_si import InductionConfig, SIConfig
from optimum_si.methods import PruningMethod
from optimum_si.methods.registry import _REGISTRY, register_method
from optimum_si.modeling.blocks import find_decoder_blocks
from optimum_si.modeling.capture import capture_block_inputs
from optimum_si.modeling.targets import plan_block
from optimum_si.modeling.weights import UndoLog
from optimum_si.pipeline.sources.in_memory import InMemoryBlocks
from optimum_si.pipeline.stage import BlockStage
from optimum_si.pipeline.walker import BlockWalker
from optimum_si.reporting.report import PruneReport
from tests.conftest import assert_unchanged, snapshot, tiny_model, token_ids


class RecordingSource(InMemoryBlocks):
    """An in-memory source that logs what the walker asks of it and writes 'committed' blocks to a dict."""

    made: list[RecordingSource] = []

    def __init__(self, blocks, device):
        super().__init__(blocks, device)
        RecordingSource.made.append(self)
        self.calls: list[tuple[str, int]] = []
        self.committed: dict[int, dict[str, torch.Tensor]] = {}

    def load(self, index):
        self.calls.append(("load", index))
        return super().load(index)

    def commit(self, index, block):
        self.calls.append(("commit", index))
        self.committed[index] = {k: v.clone() for k, v in block.state_dict().items()}

    def release(self, index, block):
        self.calls.append(("release", index))
        super().release(index, block)


def _walk(model, config, undo=None, stages=()):
    path, blocks = find_decoder_blocks(model)
    plan = [plan_block(block, f"{path}.{i}", config.targets, config.ignore).targets for i, block in enumerate(blocks)]
    source = RecordingSource(blocks, torch.device("cpu"))
    report = PruneReport(config.method, config.mask_structure, config.sparsity)
    walker = BlockWalker(config.pruning_method, report, undo or UndoLog(), block_path=path,
                         targets_of=lambda i: plan[i], sparsity_for=lambda _name: config.sparsity, n_m=config.n_m,
                         stages=stages, show_progress=False)
    inputs = capture_block_inputs(model, blocks, list(token_ids(4, 16).split(1)), torch.device("cpu"))
    with torch.no_grad():
        walker.run(source, inputs)
    return source, report


def test_walker_call_order_and_commits():
    model = tiny_model("llama")
    source, report = _walk(model, SIConfig(method="wanda"))
    assert source.calls == [("load", 0), ("commit", 0), ("release", 0), ("load", 1), ("commit", 1), ("release", 1)]
    assert len(report.blocks) == 2 and len(report.layers) == 14
    q = source.committed[1]["self_attn.q_proj.weight"]
    assert float((q == 0).float().mean()) == 0.5  # only fully pruned blocks are committed


def test_walker_releases_after_a_fault_and_commits_nothing_unfinished():
    @register_method
    class FailsInBlockOne(PruningMethod):
        name = "fails-in-block-one"
        per_row = True
        calls = 0

        def score(self, weight, stats):
            type(self).calls += 1
            if type(self).calls > 7:  # the first block's 7 Linears succeed
                raise RuntimeError("boom")
            return weight.abs()

    try:
        model = tiny_model("llama")
        before = snapshot(model)
        undo = UndoLog()
        with pytest.raises(RuntimeError, match="boom"):
            try:
                _walk(model, SIConfig(method="fails-in-block-one"), undo)
            except RuntimeError:
                undo.restore()  # what SIPruner does on any failure
                raise
        assert_unchanged(model, before)
        calls = RecordingSource.made[-1].calls
        assert calls == [("load", 0), ("commit", 0), ("release", 0), ("load", 1), ("release", 1)]
    finally:
        _REGISTRY.pop("fails-in-block-one", None)


def test_si_records_are_typed_and_read_like_dicts(tmp_path):
    import json

    from optimum_si import SIPruner
    from optimum_si.reporting.report import BlockInduction, BlockRecord

    model = tiny_model("llama")
    pruner = SIPruner(method="wanda", induction=InductionConfig(epochs=1), num_samples=8, seqlen=32,
                      show_progress=False)
    pruner.prune(model, dataset=token_ids())
    record = pruner.report.blocks[0].induction
    assert isinstance(record, BlockInduction) and isinstance(record.kept, bool) and record.steps
    assert record["kept"] is record.kept and "kept" in record and record.get("missing") is None
    assert "validation_loss_base" in record or record.validation_loss_base is None
    saved = json.loads(json.dumps(pruner.report.to_dict()))["blocks"][0]["induction"]
    assert None not in saved.values() and saved["scale_spread"] == record.scale_spread
    assert BlockRecord(**{**json.loads(json.dumps(pruner.report.to_dict()))["blocks"][0]}).induction == record
    induced = SIPruner(method="wanda", num_samples=8, seqlen=32, show_progress=False)
    induced.induce(tiny_model("llama"), dataset=token_ids())
    only = induced.report.blocks[0].induction
    assert set(only) == {"seconds", "scale_spread"} and "kept" not in only


class RecordingStage(BlockStage):
    """Logs every hook the walker calls, with what the block holds at that moment."""

    def __init__(self, wants_dense: bool = False, revert: bool = False):
        self.calls: list[tuple] = []
        self.wants_dense, self.revert = wants_dense, revert

    def before_walk(self, source, inputs):
        self.calls.append(("before_walk",))

    def begin_block(self, ctx):
        ctx.keep_dense_outputs = ctx.keep_masks = self.wants_dense
        self.calls.append(("begin", ctx.index))

    def before_prune(self, ctx):
        q = ctx.targets["self_attn.q_proj"].weight()
        self.calls.append(("before_prune", ctx.index, bool((q == 0).any()), ctx.dense_outputs is not None,
                           sorted(ctx.stats) == sorted(ctx.targets)))
        self._dense = q.detach().clone()

    def after_prune(self, ctx):
        q = ctx.targets["self_attn.q_proj"].weight()
        self.calls.append(("after_prune", ctx.index, float((q == 0).float().mean()), len(ctx.keeps)))

    def conclude(self, ctx, outputs):
        self.calls.append(("conclude", ctx.index, outputs is None))
        if self.revert:  # put the dense q_proj back: the walker must propagate the block as it is now
            ctx.targets["self_attn.q_proj"].write(self._dense)
        return self.revert


@pytest.mark.parametrize("wants_dense", [False, True])
def test_stages_are_called_at_their_points_of_the_block(wants_dense):
    stage = RecordingStage(wants_dense)
    _walk(tiny_model("llama"), SIConfig(method="wanda"), stages=[stage])
    assert stage.calls == [("before_walk",)] + [call for index in (0, 1) for call in (
        ("begin", index), ("before_prune", index, False, wants_dense, True),
        ("after_prune", index, 0.5, 7 if wants_dense else 0), ("conclude", index, index == 1))]


def test_a_stage_that_changes_the_weights_after_propagation_is_propagated_again():
    """conclude() returning True makes the walker recompute the block's outputs: the next block sees the block's
    final weights (here, a dense q_proj in block 0 makes block 1's statistics those of a dense-q block 0)."""
    reverted, reference = tiny_model("llama"), tiny_model("llama")
    _walk(reverted, SIConfig(method="wanda"), stages=[RecordingStage(revert=True)])
    # The reference: the same walk where block 0's q_proj is never pruned.
    _walk(reference, SIConfig(method="wanda", ignore=["*.0.self_attn.q_proj", "*.1.self_attn.q_proj"]))
    for name in ("mlp.down_proj", "self_attn.o_proj"):
        assert torch.equal(reverted.model.layers[1].get_submodule(name).weight,
                           reference.model.layers[1].get_submodule(name).weight), name
