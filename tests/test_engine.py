"""The block walker with a user-written `BlockSource`: the call order every source can rely on (load, then commit
only for a fully pruned block, release always, also after a fault) and the plan it is driven by."""

from __future__ import annotations

import pytest
import torch

from optimum_si import SIConfig
from optimum_si.engine import BlockEngine, InMemoryBlocks, capture_block_inputs, find_decoder_blocks
from optimum_si.methods import PruningMethod
from optimum_si.methods.registry import _REGISTRY, register_method
from optimum_si.report import PruneReport
from optimum_si.targets import plan_block
from optimum_si.weights import UndoLog

from .conftest import assert_unchanged, snapshot, tiny_model, token_ids


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


def _walk(model, config, undo=None):
    path, blocks = find_decoder_blocks(model)
    plan = [plan_block(block, f"{path}.{i}", config.targets, config.ignore).targets for i, block in enumerate(blocks)]
    source = RecordingSource(blocks, torch.device("cpu"))
    report = PruneReport(config.method, config.mask_structure, config.sparsity)
    engine = BlockEngine(config, report, undo or UndoLog())
    inputs = capture_block_inputs(model, blocks, list(token_ids(4, 16).split(1)), torch.device("cpu"))
    with torch.no_grad():
        engine.run(source, path, inputs, lambda i, _block: plan[i])
    return source, report


def test_walker_call_order_and_commits():
    model = tiny_model("llama")
    source, report = _walk(model, SIConfig(method="wanda", show_progress=False))
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
                _walk(model, SIConfig(method="fails-in-block-one", show_progress=False), undo)
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
    from optimum_si.report import BlockInduction, BlockRecord

    model = tiny_model("llama")
    pruner = SIPruner(method="wanda", induction=True, induction_epochs=1, num_samples=8, seqlen=32,
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
