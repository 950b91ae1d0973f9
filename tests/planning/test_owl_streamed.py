"""OWL when streaming (optimum_si/planning/owl.py): one dense profiling pass over the checkpoint, recorded in the
partial folder's progress so that a restarted run does not repeat it; the result equals the in-memory OWL run."""

from __future__ import annotations

import json
import os

import pytest
import torch

from optimum_si import SIPruner
from optimum_si.checkpoint.files import PROGRESS_NAME
from tests.conftest import fail_pruning_in_block, saved_tensors, tiny_model, token_ids


def _outlier_model():
    """Block 1's attention input gets one loud channel: its outlier ratio differs from block 0's, so the blocks get
    different sparsities (0.78 and 0.62 at 0.7)."""
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[1].input_layernorm.weight[:4] *= 40
    return model


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "dense"
    _outlier_model().save_pretrained(path, max_shard_size="40KB")
    return path


def _pruner(method="wanda"):
    return SIPruner(method=method, sparsity=0.7, sparsity_profile="owl", num_samples=8, seqlen=32, show_progress=False)


def _spy(monkeypatch, module, name, calls):
    original = getattr(module, name)

    def spy(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append(result)
        return result

    monkeypatch.setattr(module, name, spy)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "magnitude"])
def test_streamed_owl_equals_in_memory(source, tmp_path, monkeypatch, method):
    from transformers import AutoModelForCausalLM

    import optimum_si.planning.owl

    calib = token_ids()
    in_memory_sparsities, streamed_sparsities = [], []
    _spy(monkeypatch, optimum_si.planning.owl, "sparsities_from_ratios", in_memory_sparsities)
    model = AutoModelForCausalLM.from_pretrained(source)
    _pruner(method).prune(model, dataset=calib)
    monkeypatch.undo()
    _spy(monkeypatch, optimum_si.planning.owl, "sparsities_from_ratios", streamed_sparsities)
    out = tmp_path / "out"
    streamed = _pruner(method)
    streamed.prune(str(source), save_dir=out, dataset=calib, max_shard_size="60KB")

    assert in_memory_sparsities == streamed_sparsities and len(streamed_sparsities) == 1
    assert streamed_sparsities[0] == pytest.approx([0.78, 0.62])  # non-uniform: the test tells the blocks apart
    written = saved_tensors(out)
    expected = model.state_dict()
    assert written and all(torch.equal(tensor, expected[key]) for key, tensor in written.items())
    assert streamed.report.layers["model.layers.0.mlp.down_proj"].sparsity == pytest.approx(0.78, abs=0.02)
    assert streamed.report.layers["model.layers.1.mlp.down_proj"].sparsity == pytest.approx(0.62, abs=0.02)
    assert not os.path.exists(out / PROGRESS_NAME)


def _fail_in_block(monkeypatch, block):
    fail_pruning_in_block(monkeypatch, block)


def _progress(out):
    return json.loads((out.parent / f".{out.name}.optimum-si-partial" / PROGRESS_NAME).read_text())


def test_a_killed_run_does_not_profile_again(source, tmp_path, monkeypatch):
    import optimum_si.planning.owl

    calib = token_ids()
    reference = tmp_path / "reference"
    _pruner().prune(str(source), save_dir=reference, dataset=calib)
    out = tmp_path / "out"
    _fail_in_block(monkeypatch, 1)
    with pytest.raises(RuntimeError, match="killed"):
        _pruner().prune(str(source), save_dir=out, dataset=calib)
    progress = _progress(out)
    assert progress["finished_blocks"] == 1 and len(progress["owl_ratios"]) == 2
    monkeypatch.undo()

    def no_profiling(*_args, **_kwargs):
        raise AssertionError("the profile was recorded: it must not be computed again")

    monkeypatch.setattr(optimum_si.planning.owl, "outlier_ratio", no_profiling)
    _pruner().prune(str(source), save_dir=out, dataset=calib)
    assert saved_tensors(out).keys() == saved_tensors(reference).keys()
    assert all(torch.equal(t, saved_tensors(reference)[k]) for k, t in saved_tensors(out).items())


def test_a_run_killed_while_profiling_resumes_after_the_profiled_blocks(source, tmp_path, monkeypatch):
    import optimum_si.planning.owl

    calib = token_ids()
    reference = tmp_path / "reference"
    _pruner().prune(str(source), save_dir=reference, dataset=calib)
    out = tmp_path / "out"
    original, calls = optimum_si.planning.owl.outlier_ratio, []

    def killed_on_the_second_block(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed while profiling")
        return original(*args, **kwargs)

    monkeypatch.setattr(optimum_si.planning.owl, "outlier_ratio", killed_on_the_second_block)
    with pytest.raises(RuntimeError, match="profiling"):
        _pruner().prune(str(source), save_dir=out, dataset=calib)
    progress = _progress(out)
    assert progress["finished_blocks"] == 0 and len(progress["owl_ratios"]) == 1 and not progress["shards"]
    calls.clear()
    _pruner().prune(str(source), save_dir=out, dataset=calib)
    assert len(calls) == 1  # block 1 only: block 0's ratio was recorded
    reference_tensors = saved_tensors(reference)
    assert all(torch.equal(t, reference_tensors[k]) for k, t in saved_tensors(out).items())


@pytest.mark.parametrize("ratios", [[1.0, 2.0, 3.0], ["1"], [float("nan")], {"0": 1.0}])
def test_a_tampered_profile_is_a_clear_error(source, tmp_path, monkeypatch, ratios):
    calib = token_ids()
    out = tmp_path / "out"
    _fail_in_block(monkeypatch, 1)
    with pytest.raises(RuntimeError, match="killed"):
        _pruner().prune(str(source), save_dir=out, dataset=calib)
    monkeypatch.undo()
    path = out.parent / f".{out.name}.optimum-si-partial" / PROGRESS_NAME
    progress = json.loads(path.read_text())
    progress["owl_ratios"] = ratios
    path.write_text(json.dumps(progress))
    with pytest.raises(ValueError, match="corrupted"):
        _pruner().prune(str(source), save_dir=out, dataset=calib)


def test_streamed_owl_with_sparsity_induction_equals_in_memory(source, tmp_path):
    """OWL + SI: the streamed profile sets the plan's block sparsities before SI's stage reads them."""
    from transformers import AutoModelForCausalLM

    calib = token_ids()
    recipe = dict(method="wanda", sparsity=0.7, sparsity_profile="owl", induction=True, num_samples=8, seqlen=32,
                  show_progress=False)
    model = AutoModelForCausalLM.from_pretrained(source)
    SIPruner(**recipe).prune(model, dataset=calib)
    out = tmp_path / "out"
    SIPruner(**recipe).prune(str(source), save_dir=out, dataset=calib)
    expected = model.state_dict()
    written = saved_tensors(out)
    assert written and all(torch.equal(tensor, expected[key]) for key, tensor in written.items())
    zeros = [float((written[f"model.layers.{i}.mlp.down_proj.weight"] == 0).float().mean()) for i in (0, 1)]
    assert zeros == pytest.approx([0.78, 0.62], abs=0.02)
