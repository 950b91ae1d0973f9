import copy
import math

import pytest
import torch

from optimum_si import InductionConfig, SIPruner
from optimum_si.observers.output_error import MAX_PROBE_WINDOWS, probe_windows, relative_error
from tests.conftest import tiny_model, token_ids


def test_probe_windows_are_few_and_spread():
    assert probe_windows(0) == []
    assert probe_windows(1) == [0]
    assert probe_windows(7) == [0]
    assert probe_windows(32) == [0, 8, 16, 24]
    wide = probe_windows(1000)
    assert len(wide) == MAX_PROBE_WINDOWS and wide[0] == 0 and wide[-1] >= 800


def test_relative_error():
    ref = [torch.tensor([3.0, 4.0]), torch.tensor([0.0, 0.0])]
    assert relative_error(ref, ref) == 0.0
    assert relative_error([torch.tensor([3.0, 4.0]), torch.tensor([0.0, 5.0])], ref) == pytest.approx(1.0)
    assert relative_error([torch.zeros(2)], [torch.zeros(2)]) == 0.0
    assert math.isinf(relative_error([torch.ones(2)], [torch.zeros(2)]))


def _block_outputs(model, ids, index):
    """Outputs of decoder block `index` for each window (batch size 1), from a full forward pass."""
    captured = []
    handle = model.model.layers[index].register_forward_hook(
        lambda _m, _args, out: captured.append((out[0] if isinstance(out, tuple) else out).detach()))
    try:
        with torch.no_grad():
            for row in ids:
                model(input_ids=row.unsqueeze(0), use_cache=False)
    finally:
        handle.remove()
    return captured


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_first_block_error_matches_an_independent_measurement(method):
    """Block 0 sees the same inputs (the embeddings) in the dense and the pruned model, so its recorded error can be
    measured again from two full forward passes."""
    dense = tiny_model("llama")
    model = copy.deepcopy(dense)
    ids = token_ids(16, 32)
    pruner = SIPruner(method=method, sparsity=0.5, num_samples=16, seqlen=32, show_progress=False)
    pruner.prune(model, dataset=ids)
    errors = [b.output_error for b in pruner.report.blocks]
    assert all(e is not None and 0.0 < e < 1.0 for e in errors)
    windows = probe_windows(16)
    assert windows == [0, 8]
    want = relative_error([_block_outputs(model, ids, 0)[i] for i in windows],
                          [_block_outputs(dense, ids, 0)[i] for i in windows])
    assert errors[0] == pytest.approx(want, rel=1e-5)
    summary = pruner.report.output_error_summary()
    assert summary["blocks"] == 2 and summary["mean"] == pytest.approx(sum(errors) / 2)
    assert summary["max"] == max(errors) and summary["max_block"] == errors.index(max(errors))
    assert "base_mean" not in summary
    saved = pruner.report.to_dict()
    assert saved["blocks"][1]["output_error"] == errors[1] and saved["output_error_summary"] == summary


def test_more_sparsity_more_error():
    errors = {}
    for sparsity in (0.3, 0.7):
        model = tiny_model("llama")
        pruner = SIPruner(method="wanda", sparsity=sparsity, num_samples=8, seqlen=32, show_progress=False)
        pruner.prune(model, dataset=token_ids(8, 32))
        errors[sparsity] = pruner.report.output_error_summary()["mean"]
    assert errors[0.3] < errors[0.7]


def test_sparsity_induction_records_base_and_induced_errors():
    """SI's base error of block 0 is plain Wanda's block 0 (same mask, same inputs), measured on the induction's
    judged windows; the induced error is below it wherever a block kept its scales."""
    ids = token_ids(8, 32)
    dense = tiny_model("llama")
    plain = copy.deepcopy(dense)
    SIPruner(method="wanda", num_samples=8, seqlen=32, show_progress=False).prune(plain, dataset=ids)
    model = copy.deepcopy(dense)
    # Judged on training windows, as this test computes.
    pruner = SIPruner(method="wanda", num_samples=8, seqlen=32, show_progress=False,
                      induction=InductionConfig(validation_fraction=0.0))
    pruner.prune(model, dataset=ids)
    first = pruner.report.blocks[0].induction
    judged = list(range(8))  # without held-out windows the verdict is judged on up to 8 training windows: all here
    want = relative_error([_block_outputs(plain, ids, 0)[i] for i in judged],
                          [_block_outputs(dense, ids, 0)[i] for i in judged])
    assert first["relative_error_base"] == pytest.approx(want, rel=1e-4)
    for block in pruner.report.blocks:
        info = block.induction
        if info["kept"]:
            assert info["relative_error_induced"] < info["relative_error_base"]
    summary = pruner.report.output_error_summary()
    assert summary["induced_mean"] <= summary["base_mean"]


def test_data_free_magnitude_records_no_error():
    """Plain magnitude pruning runs no calibration pass (even when given data), so there is nothing to measure on."""
    model = tiny_model("llama")
    pruner = SIPruner(method="magnitude", num_samples=4, seqlen=16, show_progress=False)
    pruner.prune(model, dataset=token_ids(4, 16))
    assert all(b.output_error is None for b in pruner.report.blocks)
    assert pruner.report.output_error_summary() is None


@pytest.mark.parametrize("target", ["local", "global"])
def test_si_probe_reads_the_dense_pass_instead_of_running_the_block(target, monkeypatch):
    from optimum_si.pipeline.walker import BlockWalker

    def prune(feeds_probe):
        model = tiny_model("llama")
        if not feeds_probe:  # the probe runs its own dense forward
            monkeypatch.setattr(BlockWalker, "_probe_source", lambda self, ctx: "own")
        calls = [0]
        for block in model.model.layers:
            block.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        pruner = SIPruner(method="wanda", induction={"target": target}, num_samples=16, seqlen=32,
                          show_progress=False)
        pruner.prune(model, dataset=token_ids(16))
        monkeypatch.undo()
        return [b.output_error for b in pruner.report.blocks], model.state_dict(), calls[0]

    errors, weights, calls = prune(True)
    old_errors, old_weights, old_calls = prune(False)
    assert errors == old_errors and all(torch.equal(weights[k], old_weights[k]) for k in weights)
    saved = len(probe_windows(16)) * 2 if target == "local" else 0  # two blocks
    assert old_calls - calls == saved


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("true_sequential", [False, True])
def test_plain_probe_reads_the_statistics_pass_instead_of_running_the_block(method, true_sequential, monkeypatch):
    """The first statistics pass runs to the end on the probe windows and hands their outputs to the probe: the same
    errors and weights bit for bit as the probe's own dense forward, two block starts fewer per block."""
    from optimum_si.pipeline.walker import BlockWalker

    def prune(own_forward):
        model = tiny_model("llama")
        if own_forward:  # the probe runs its own dense forward
            monkeypatch.setattr(BlockWalker, "_probe_source", lambda self, ctx: "own")
        calls = [0]
        for block in model.model.layers:
            block.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        pruner = SIPruner(method=method, num_samples=16, seqlen=32, true_sequential=true_sequential,
                          show_progress=False)
        pruner.prune(model, dataset=token_ids(16))
        monkeypatch.undo()
        return [b.output_error for b in pruner.report.blocks], model.state_dict(), calls[0]

    errors, weights, calls = prune(own_forward=False)
    old_errors, old_weights, old_calls = prune(own_forward=True)
    assert all(e is not None and e > 0 for e in errors)
    assert errors == old_errors and all(torch.equal(weights[k], old_weights[k]) for k in weights)
    assert old_calls - calls == len(probe_windows(16)) * 2  # two blocks
