"""RIA and Z-Pruner through the public API on a tiny random Llama: the engine prunes with the method's own mask,
N:M holds, Sparsity Induction runs on top, and the saved card names the method."""

from __future__ import annotations

import os

import pytest
import torch

from optimum_si import InductionConfig, SIPruner
from optimum_si.methods.masks import follows_nm, select_mask
from optimum_si.methods.ria.scores import ria_scores
from optimum_si.methods.zpruner.scores import zpruner_scores
from tests.conftest import tiny_model, token_ids

SCORES = {"ria": ria_scores, "zpruner": zpruner_scores}
BLOCK0 = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
          "mlp.up_proj", "mlp.down_proj"]


def _block0_sq_norms(model, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sum of x_j^2 at the input of every Linear of block 0 of the dense model, window by window as the engine does."""
    block = model.model.layers[0]
    sums: dict[str, torch.Tensor] = {}
    handles = []
    for name in BLOCK0:
        def hook(_module, args, name=name):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            sums[name] = sums.get(name, torch.zeros(x.shape[-1])) + x.square().sum(0)
        handles.append(block.get_submodule(name).register_forward_pre_hook(hook))
    with torch.no_grad():
        for window in ids:
            model(window.unsqueeze(0))
    for handle in handles:
        handle.remove()
    return sums


@pytest.mark.parametrize("method", ["ria", "zpruner"])
def test_prunes_block0_with_the_methods_own_mask(method):
    model, ids = tiny_model("llama"), token_ids()
    dense = {name: model.model.layers[0].get_submodule(name).weight.detach().clone() for name in BLOCK0}
    sq_norms = _block0_sq_norms(model, ids)
    pruner = SIPruner(method=method, sparsity=0.5, num_samples=8, seqlen=32, show_progress=False)
    pruner.prune(model, dataset=ids)
    assert len(pruner.report.layers) == 14 and all(r.sparsity == 0.5 for r in pruner.report.layers.values())
    for name in BLOCK0:
        expected = select_mask(SCORES[method](dense[name], sq_norms[name]), 0.5, None, per_row=False)
        pruned = model.model.layers[0].get_submodule(name).weight
        assert torch.equal(pruned != 0, expected), name
    # Per matrix, as the authors' code: rows end up unevenly pruned.
    zeros_per_row = (model.model.layers[0].self_attn.q_proj.weight == 0).sum(1)
    assert int(zeros_per_row.min()) < int(zeros_per_row.max())


@pytest.mark.parametrize("method", ["ria", "zpruner"])
def test_two_four(method):
    model = tiny_model("llama")
    pruner = SIPruner(method=method, mask_structure="2:4", num_samples=8, seqlen=32, show_progress=False)
    pruner.prune(model, dataset=token_ids())
    for layer in model.model.layers:
        for name in BLOCK0:
            assert follows_nm(layer.get_submodule(name).weight, 2, 4), name
    assert all(r.sparsity == 0.5 for r in pruner.report.layers.values())


@pytest.mark.parametrize("method", ["ria", "zpruner"])
def test_with_sparsity_induction(method):
    model = tiny_model("llama")
    pruner = SIPruner(method=method, sparsity=0.5, induction=InductionConfig(epochs=1, refresh_interval=2),
                      num_samples=8, seqlen=32, show_progress=False)
    pruner.prune(model, dataset=token_ids())
    report = pruner.report
    # The refreshed masks keep the exact per-matrix count; every block has its keep/revert verdict.
    assert all(r.sparsity == 0.5 for r in report.layers.values())
    assert len(report.blocks) == 2
    for block in report.blocks:
        induction = block.induction
        assert induction is not None and "kept" in induction and induction["steps"] > 0
        # No distribution-level fold for these methods (docs/methods.md): the scales start at 1.
        assert not induction.get("scale_spread")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_saved_card_names_the_method(tmp_path):
    model = tiny_model("llama")
    pruner = SIPruner(method="ria", sparsity=0.5, num_samples=8, seqlen=32, show_progress=False)
    pruner.prune(model, dataset=token_ids())
    out = pruner.save(model, str(tmp_path / "out"))
    card = open(os.path.join(out, "README.md"), encoding="utf-8").read()
    assert "Plug-and-Play" in card and "activation exponent a = 0.5, per matrix" in card
    assert SIPruner.from_pretrained(out).config.method == "ria"


@pytest.mark.parametrize("method, knobs, exponent, per_row", [
    ("ria", {"a": 1.0, "per_row": True}, 1.0, True), ("zpruner", {"exponent": 0.5}, 0.5, False)])
def test_the_recipes_knobs_reach_the_engine(method, knobs, exponent, per_row):
    model, ids = tiny_model("llama"), token_ids()
    dense = {name: model.model.layers[0].get_submodule(name).weight.detach().clone() for name in BLOCK0}
    sq_norms = _block0_sq_norms(model, ids)
    SIPruner(method=method, method_args=knobs, sparsity=0.5, num_samples=8, seqlen=32, show_progress=False).prune(
        model, dataset=ids)
    moved = False
    for name in BLOCK0:
        expected = select_mask(SCORES[method](dense[name], sq_norms[name], exponent), 0.5, None, per_row=per_row)
        pruned = model.model.layers[0].get_submodule(name).weight
        assert torch.equal(pruned != 0, expected), name
        moved |= not torch.equal(expected, select_mask(SCORES[method](dense[name], sq_norms[name]), 0.5, None,
                                                       per_row=False))
    assert moved  # the knobs made another mask than the defaults


@pytest.mark.parametrize("method, knobs", [("ria", {"a": 1.0, "per_row": True}),
                                           ("zpruner", {"exponent": 1.0, "per_row": True})])
def test_sparsity_induction_with_knobs_keeps_the_configured_grouping(method, knobs):
    model = tiny_model("llama")
    pruner = SIPruner(method=method, method_args=knobs, sparsity=0.5, induction=InductionConfig(refresh_interval=1),
                      num_samples=8, seqlen=32, show_progress=False)
    pruner.prune(model, dataset=token_ids())
    for layer in model.model.layers:  # per row, also after every refresh: exactly half of each row
        for name in BLOCK0:
            weight = layer.get_submodule(name).weight
            assert bool(((weight == 0).sum(1) == weight.shape[1] // 2).all()), name
    assert sum(block.induction.mask_changes for block in pruner.report.blocks) > 0


def test_card_rows_show_the_knobs():
    from optimum_si import SIConfig
    from optimum_si.export.card import build_model_card
    from optimum_si.methods.alps import ALPSConfig

    model_config = tiny_model("llama").config
    card = str(build_model_card(model_config, SIConfig(method="ria", method_args={"a": 1.0, "per_row": True}), None))
    assert "| RIA | activation exponent a = 1, per output row |" in card
    card = str(build_model_card(model_config, SIConfig(method="zpruner", method_args={"exponent": 2.0}), None))
    assert "| Z-Pruner | activation exponent 2, per matrix |" in card
    card = str(build_model_card(model_config, SIConfig(method="alps", method_args=ALPSConfig(
        max_iter=50, pcg_iters=0, dampening=0.05)), None))
    assert ("| ALPS | ρ0 = 0.1, at most 50 ADMM iterations (ρ updated every 3, support-settled stop from iteration "
            "30), 0 PCG iterations (rtol 0.0001), dampening 0.05 |") in card


@pytest.mark.parametrize("method", ["ria", "zpruner", "alps"])
@pytest.mark.parametrize("pattern", [{"mask_structure": "2:4"}, {"sparsity": 0.9}])
def test_sparsity_induction_at_two_four_and_high_sparsity(method, pattern):
    model = tiny_model("llama")
    pruner = SIPruner(method=method, induction=InductionConfig(refresh_interval=1), num_samples=8, seqlen=32,
                      show_progress=False, **pattern)
    pruner.prune(model, dataset=token_ids())
    for layer in model.model.layers:
        for name in BLOCK0:
            weight = layer.get_submodule(name).weight
            if "mask_structure" in pattern:
                assert follows_nm(weight, 2, 4), name
            else:
                assert int((weight == 0).sum()) == int(weight.numel() * 0.9), name
    assert all(block.induction is not None and block.induction["steps"] > 0 for block in pruner.report.blocks)
    assert all(torch.isfinite(p).all() for p in model.parameters())
