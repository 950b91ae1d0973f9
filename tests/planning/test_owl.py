"""OWL wired in (optimum_si/owl.py, SIConfig(sparsity_profile="owl")): the recipe fields, the dense profiling pass
checked against an independent computation, and per-block sparsities applied by the engine."""

from __future__ import annotations

import pytest
import torch

from optimum_si import InductionConfig, SIConfig, SIPruner
from optimum_si.planning.allocation import owl_sparsities
from tests.conftest import tiny_model, token_ids

LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj"]


def test_recipe_fields():
    config = SIConfig(method="magnitude", sparsity=0.7, sparsity_profile="owl")
    assert (config.profile_args.m, config.profile_args.lam) == (5.0, 0.08)  # the OWL README's unstructured settings
    assert config.needs_calibration  # the profile is data-driven even for magnitude
    assert not SIConfig(method="magnitude").needs_calibration
    assert SIConfig.from_dict(config.to_dict()).sparsity_profile == "owl"
    for bad in ({"sparsity_profile": "layer"}, {"profile_args": {"m": 0}}, {"profile_args": {"lam": -0.1}},
                {"profile_args": {"m": float("nan")}}, {"profile_args": {"lam": True}}):
        with pytest.raises(ValueError):
            SIConfig(**{"sparsity_profile": "owl", **bad})
    # N:M kernels need the same N:M in every block; OWL's per-block sparsities cannot be one (docs/methods.md).
    with pytest.raises(ValueError, match=r"cannot express; use sparsity_profile='uniform' with N:M, or OWL with "
                                         r"mask_structure='unstructured'"):
        SIConfig(sparsity_profile="owl", mask_structure="2:4")
    assert SIConfig(sparsity_profile="owl", induction=True).induction  # OWL + SI is supported


def test_cli_flags():
    from optimum_si.cli import build_parser

    prune_help = build_parser()._subparsers._group_actions[0].choices["prune"].format_help()
    assert "--sparsity-profile {uniform,owl}" in prune_help and "--owl-m" in prune_help and "--owl-lambda" in prune_help


def _outlier_model():
    """Block 1's attention input gets one loud channel, so its Wanda metrics have more outliers than block 0's."""
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[1].input_layernorm.weight[:4] *= 40
    return model


def _expected_block_sparsities(model, ids, target, m=5.0, lam=0.08):
    """OWL by its definition, computed apart from the library: dense forward, pooled |W| * ||x|| per block."""
    sums = {}
    handles = []
    for i, layer in enumerate(model.model.layers):
        for name in LINEARS:
            def hook(_module, args, key=(i, name)):
                x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
                sums[key] = sums.get(key, 0) + x.square().sum(0)
            handles.append(layer.get_submodule(name).register_forward_pre_hook(hook))
    with torch.no_grad():
        for window in ids:
            model(window.unsqueeze(0))
    for handle in handles:
        handle.remove()
    ratios = []
    for i, layer in enumerate(model.model.layers):
        pooled = torch.cat([(layer.get_submodule(n).weight.abs() * sums[(i, n)].sqrt()).flatten() for n in LINEARS])
        ratios.append(100 * float((pooled > m * pooled.mean()).float().mean()))
    return ratios, owl_sparsities(ratios, target, lam)


@pytest.mark.parametrize("method", ["wanda", "magnitude", "sparsegpt", "ria", "zpruner"])
def test_owl_prunes_each_block_at_its_own_sparsity(method):
    model, ids = _outlier_model(), token_ids()
    ratios, expected = _expected_block_sparsities(model, ids, 0.7)
    assert ratios[1] > ratios[0] and expected == pytest.approx([0.78, 0.62])  # two blocks: s +- lambda
    pruner = SIPruner(method=method, sparsity=0.7, sparsity_profile="owl", num_samples=8, seqlen=32,
                      show_progress=False)
    pruner.prune(model, dataset=ids)
    for i, layer in enumerate(model.model.layers):
        for name in LINEARS:
            weight = layer.get_submodule(name).weight
            record = pruner.report.layers[f"model.layers.{i}.{name}"]
            if method == "wanda":  # per row, exactly int(d_in * s_block) zeros in every row
                assert bool(((weight == 0).sum(1) == int(weight.shape[1] * expected[i])).all()), (i, name)
            else:
                assert record.sparsity == pytest.approx(expected[i], abs=0.02), (i, name)
    # The mean over blocks is the target; each matrix rounds its count down (int(64 * 0.62) = 39 of 64 per row).
    assert pruner.report.sparsity == pytest.approx(0.7, abs=0.015)


def test_card_names_owl(tmp_path):
    import os

    model = _outlier_model()
    pruner = SIPruner(method="wanda", sparsity=0.7, sparsity_profile="owl", num_samples=8, seqlen=32,
                      show_progress=False)
    pruner.prune(model, dataset=token_ids())
    out = pruner.save(model, str(tmp_path / "out"))
    card = open(os.path.join(out, "README.md"), encoding="utf-8").read()
    assert "| Sparsity profile | OWL: per-block sparsities with mean 0.7 (M = 5, lambda = 0.08) |" in card
    assert "arXiv 2310.05175" in card
    assert SIPruner.from_pretrained(out).config.sparsity_profile == "owl"


@pytest.mark.parametrize("method", ["wanda", "magnitude", "ria", "zpruner", "alps"])
def test_owl_with_sparsity_induction(method):
    """OWL + SI in memory: the profile comes from the dense model as without SI, and SI's mask refreshes keep each
    block at its own OWL sparsity (plan.sparsity_for), not at the recipe's mean."""
    model, ids = _outlier_model(), token_ids()
    _ratios, expected = _expected_block_sparsities(model, ids, 0.7)
    pruner = SIPruner(method=method, sparsity=0.7, sparsity_profile="owl",
                      induction=InductionConfig(refresh_interval=1, validation_fraction=0), num_samples=8, seqlen=32,
                      show_progress=False)
    pruner.prune(model, dataset=ids)
    for i, layer in enumerate(model.model.layers):
        for name in LINEARS:
            weight = layer.get_submodule(name).weight
            if method == "wanda":
                assert bool(((weight == 0).sum(1) == int(weight.shape[1] * expected[i])).all()), (i, name)
            else:  # per matrix, the exact count of the block's sparsity
                assert int((weight == 0).sum()) == int(weight.numel() * expected[i]), (i, name)
    assert len(pruner.report.blocks) == 2
    for block in pruner.report.blocks:
        assert block.induction is not None and block.induction["steps"] > 0
        if method != "alps":  # mask-only methods refresh; ALPS keeps its own mask, as SparseGPT does
            assert block.induction["mask_changes"] > 0
        else:
            assert not block.induction["mask_changes"]
    assert pruner.report.sparsity == pytest.approx(0.7, abs=0.015)
    assert all(torch.isfinite(p).all() for p in model.parameters())
