"""Sparsity Induction on GPT-2: Conv1D layers stored [in, out], q/k/v fused in c_attn, LayerNorms with biases.

Groups: ln_1 -> c_attn columns, ln_2 -> c_fc columns (the LayerNorm's weight and bias / s, shifts into the Conv1D
bias), the v third of c_attn's outputs -> attn.c_proj columns, and q/k (q thirds x s, k thirds / s). GELU is not
positively homogeneous, so there is no c_fc -> mlp.c_proj group.
"""

import pytest
import torch

from optimum_si import InductionConfig, SIPruner
from optimum_si.induction.fold import fold_distribution_level
from optimum_si.induction.transforms import fold_scaling, resolve_scaling_groups
from optimum_si.modeling.targets import plan_block
from optimum_si.modeling.weights import UndoLog
from optimum_si.observers.stats import InputStatsCollector
from tests.conftest import fold_and_compare, snapshot, stream_and_prune_in_memory, tiny_model, token_ids

HIDDEN = 64


def _random_fold(model, groups=None, seed=0, with_shift=True):
    generator = torch.Generator().manual_seed(seed)
    names = set()
    for block in model.transformer.h:
        for group in resolve_scaling_groups(block, model.config, groups):
            scale = 0.3 + 2.7 * torch.rand(group.size, generator=generator, dtype=torch.float64)
            shift = torch.randn(group.size, generator=generator, dtype=torch.float64) if with_shift and \
                group.can_shift else None
            fold_scaling(group, scale, shift)
            names.add(group.name)
    return names


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_folding_random_scales_and_shifts_keeps_gpt2(dtype, tol):
    model = tiny_model("gpt2").to(dtype)
    with torch.no_grad():  # GPT-2 initialises its biases to 0: nonzero ones show the norm bias really is divided
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(len(name)))
    names, before, after, changed = fold_and_compare(model, _random_fold, token_ids(2, 24))
    assert names == {"attn_in", "attn_out", "mlp_in", "qk"}  # no mlp_out: GELU
    for name in ("ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias", "attn.c_attn.weight", "attn.c_attn.bias",
                 "attn.c_proj.weight", "attn.c_proj.bias", "mlp.c_fc.weight", "mlp.c_fc.bias"):
        assert f"transformer.h.0.{name}" in changed
    assert "transformer.h.0.mlp.c_proj.weight" not in changed
    torch.testing.assert_close(after, before, rtol=0, atol=tol * before.abs().max().item())


def test_fold_is_not_vacuous_on_gpt2():
    # The norm's scale alone, without its Conv1D consumer's columns, changes the function.
    model = tiny_model("gpt2")
    ids = token_ids(1, 16)
    group = resolve_scaling_groups(model.transformer.h[0], model.config, ["attn_in"])[0]
    with torch.no_grad():
        before = model(ids).logits
        attn = model.transformer.h[0].attn.c_attn
        original = attn.weight.detach().clone()
        fold_scaling(group, torch.linspace(0.5, 2.0, group.size))
        attn.weight.copy_(original)
        assert not torch.allclose(model(ids).logits, before, atol=1e-3)


def test_attn_out_divides_only_the_v_third_of_c_attn():
    model = tiny_model("gpt2").double()
    block = model.transformer.h[0]
    group = resolve_scaling_groups(block, model.config, ["attn_out"])[0]
    assert group.size == HIDDEN
    weight, bias = block.attn.c_attn.weight.detach().clone(), block.attn.c_attn.bias.detach().clone()
    c_proj = block.attn.c_proj.weight.detach().clone()
    scale = torch.linspace(0.5, 2.0, HIDDEN, dtype=torch.float64)
    fold_scaling(group, scale)
    # Conv1D stores [in, out]: the v outputs are columns 2H:3H, c_proj's inputs are its rows.
    assert torch.equal(block.attn.c_attn.weight[:, :2 * HIDDEN], weight[:, :2 * HIDDEN])
    assert torch.equal(block.attn.c_attn.bias[:2 * HIDDEN], bias[:2 * HIDDEN])
    torch.testing.assert_close(block.attn.c_attn.weight[:, 2 * HIDDEN:], weight[:, 2 * HIDDEN:] / scale)
    torch.testing.assert_close(block.attn.c_attn.bias[2 * HIDDEN:], bias[2 * HIDDEN:] / scale)
    torch.testing.assert_close(block.attn.c_proj.weight, c_proj * scale.unsqueeze(1))


def test_distribution_fold_row_scales_cover_c_attn_with_ones_on_q_and_k():
    model = tiny_model("gpt2")
    block = model.transformer.h[0]
    targets = plan_block(block, "transformer.h.0", None, []).targets
    with InputStatsCollector(targets, with_hessian=False, stop_when_done=False) as collector, torch.no_grad():
        model(token_ids(4, 32))
        collector.end_pass()
    config = InductionConfig()
    spreads, row_scales = fold_distribution_level(block, model.config, collector.stats, targets, config,
                                                  UndoLog(enabled=False))
    assert set(spreads) == {"attn_in", "attn_out", "mlp_in"}
    assert set(row_scales) == {"attn.c_attn"}
    scale = row_scales["attn.c_attn"]
    assert scale.shape == (3 * HIDDEN,) and bool((scale[:2 * HIDDEN] == 1).all())
    assert not bool((scale[2 * HIDDEN:] == 1).all())


def _si(method, **kwargs):
    return SIPruner(method=method, induction=InductionConfig(validation_fraction=0.0), num_samples=8, seqlen=32,
                    show_progress=False, **kwargs)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "magnitude"])
def test_si_prunes_gpt2_end_to_end(method):
    model = tiny_model("gpt2")
    pruner = _si(method)
    pruner.prune(model, dataset=token_ids())
    report = pruner.report
    assert report.sparsity == 0.5
    assert len(report.layers) == 8 and all(r.zeros == r.numel // 2 for r in report.layers.values())
    for block in report.blocks:
        info = block.induction
        assert info is not None and info["steps"] == 8
        # Kept means the learned scales, folded back into the [in, out] storage, lowered the block loss: a wrong
        # transposition would raise it and be reverted.
        assert info["kept"] and info["loss_after"] < info["loss_before"]
        if method == "magnitude":
            assert set(info["scale_spread"]) == {"attn_in", "attn_out", "mlp_in"}
    for block in model.transformer.h:
        for conv in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
            assert float((conv.weight == 0).float().mean()) == 0.5
    assert torch.isfinite(model(token_ids(1, 16)).logits).all()


def test_induce_on_gpt2_keeps_the_dense_function():
    model = tiny_model("gpt2")
    ids = token_ids(2, 24)
    with torch.no_grad():
        before = model(ids).logits
    weights = snapshot(model)
    pruner = _si("wanda")
    pruner.induce(model, dataset=token_ids())
    with torch.no_grad():
        after = model(ids).logits
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4 * before.abs().max().item())
    assert not torch.equal(model.transformer.h[0].ln_1.weight, weights["transformer.h.0.ln_1.weight"])


def test_streamed_si_on_gpt2_equals_in_memory(tmp_path):
    streamed, _ = stream_and_prune_in_memory(tiny_model("gpt2"), lambda: _si("magnitude"), tmp_path, token_ids())
    assert streamed.report.sparsity == pytest.approx(0.5)
