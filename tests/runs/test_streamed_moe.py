"""Streaming mixture-of-experts checkpoints (optimum_si/checkpoint_layout.py): per-expert checkpoint tensors are
fused as `from_pretrained` fuses them, pruned like in memory, and written back in the checkpoint's own per-expert
layout, so the output loads with `AutoModelForCausalLM.from_pretrained` and equals the in-memory result."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from optimum_si import SIPruner
from optimum_si.checkpoint.files import INDEX_NAME
from tests.conftest import fail_pruning_in_block, saved_tensors, tiny_model, token_ids


def _pruner(method, **kwargs):
    return SIPruner(method=method, num_samples=8, seqlen=32, show_progress=False, **kwargs)


@pytest.fixture(params=["mixtral", "qwen3_moe"])
def moe_source(request, tmp_path):
    path = tmp_path / request.param
    tiny_model(request.param).save_pretrained(path, max_shard_size="100KB")
    return path


@pytest.mark.parametrize("method, extra", [("wanda", {}), ("sparsegpt", {}), ("magnitude", {}),
                                           ("wanda", {"mask_structure": "2:4"}),
                                           ("wanda", {"expert_calibration": "all"})])
def test_streamed_moe_equals_in_memory(moe_source, tmp_path, method, extra):
    from transformers import AutoModelForCausalLM

    calib = token_ids()
    out = tmp_path / "out"
    streamed = _pruner(method, **extra)
    streamed.prune(str(moe_source), save_dir=out, dataset=calib, max_shard_size="150KB")
    in_memory = AutoModelForCausalLM.from_pretrained(moe_source)
    pruner = _pruner(method, **extra)
    pruner.prune(in_memory, dataset=calib)

    # The output is in the source's own layout: the same keys, shapes and dtypes, per expert.
    source_tensors, written = saved_tensors(moe_source), saved_tensors(out)
    assert written.keys() == source_tensors.keys()
    assert any(".experts.0." in key for key in written)
    assert all(written[k].shape == t.shape and written[k].dtype == t.dtype for k, t in source_tensors.items())
    assert set(json.loads((out / INDEX_NAME).read_text())["weight_map"]) == set(written)
    # ... it loads as the source does, and equals the in-memory result bit for bit.
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    expected = in_memory.state_dict()
    assert reloaded.state_dict().keys() == expected.keys()
    assert all(torch.equal(t, expected[k]) for k, t in reloaded.state_dict().items())
    assert streamed.report.layers.keys() == pruner.report.layers.keys()
    assert any(".experts." in name for name in streamed.report.layers)
    assert streamed.report.sparsity == pytest.approx(0.5)
    assert streamed.report.skipped == pruner.report.skipped and streamed.report.skipped  # routers stay dense
    ids = token_ids(1, 16)
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, in_memory(ids).logits)


def test_a_killed_moe_run_resumes_from_its_per_expert_output(moe_source, tmp_path, monkeypatch):
    calib = token_ids()
    reference = tmp_path / "reference"
    _pruner("wanda").prune(str(moe_source), save_dir=reference, dataset=calib)
    out = tmp_path / "out"
    fail_pruning_in_block(monkeypatch, 1)
    with pytest.raises(RuntimeError, match="killed"):
        _pruner("wanda").prune(str(moe_source), save_dir=out, dataset=calib)
    monkeypatch.undo()
    _pruner("wanda").prune(str(moe_source), save_dir=out, dataset=calib)  # block 0 is read back from the output
    expected = saved_tensors(reference)
    assert all(torch.equal(t, expected[k]) for k, t in saved_tensors(out).items()) and saved_tensors(out).keys() == expected.keys()


def test_a_checkpoint_missing_an_expert_is_refused_before_writing(tmp_path):
    from safetensors.torch import save_file

    source = tmp_path / "mixtral"
    tiny_model("mixtral").save_pretrained(source)
    tensors = load_file(source / "model.safetensors")
    del tensors["model.layers.1.block_sparse_moe.experts.2.w3.weight"]
    save_file(tensors, source / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="model.layers.1.mlp.experts.gate_up_proj"):
        _pruner("wanda").prune(str(source), save_dir=out, dataset=token_ids())
    assert not out.exists()


def test_streamed_owl_on_experts_equals_in_memory(moe_source, tmp_path):
    """OWL's streamed profiling pass sees each expert's routed tokens, as the in-memory forward does."""
    from transformers import AutoModelForCausalLM

    calib = token_ids()
    recipe = {"sparsity": 0.7, "sparsity_profile": "owl", "owl_lambda": 0.2}
    _pruner("wanda", **recipe).prune(str(moe_source), save_dir=tmp_path / "out", dataset=calib)
    in_memory = AutoModelForCausalLM.from_pretrained(moe_source)
    _pruner("wanda", **recipe).prune(in_memory, dataset=calib)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").state_dict()
    assert all(torch.equal(t, reloaded[k]) for k, t in in_memory.state_dict().items())
