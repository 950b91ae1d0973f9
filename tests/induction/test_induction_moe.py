"""Sparsity Induction on mixture-of-experts decoders (transformers 5 fused experts: Mixtral, Qwen2-MoE, Qwen3-MoE).

The attention groups are Llama's. mlp_in scales the post-attention norm output, which feeds the router and every
expert: the router's columns absorb the scale too, so routing is unchanged. mlp_out pairs each expert's up rows with
its own down_proj columns (and Qwen2-MoE's shared expert up -> down).
"""

import pytest
import torch

from optimum_si import InductionConfig, SIPruner
from optimum_si.induction.fold import fold_distribution_level
from optimum_si.induction.transforms import fold_scaling, resolve_scaling_groups
from optimum_si.modeling.blocks import find_decoder_blocks
from optimum_si.modeling.targets import plan_block
from optimum_si.modeling.weights import UndoLog
from optimum_si.observers.stats import InputStatsCollector
from tests.conftest import _COMMON, fold_and_compare, snapshot, stream_and_prune_in_memory, tiny_model, token_ids

MOE_ARCHS = ["mixtral", "qwen3_moe", "qwen2_moe"]


def _model(arch: str, dtype=torch.float32):
    if arch == "qwen2_moe":  # block 1 keeps a dense MLP (mlp_only_layers): both kinds of block in one model
        import transformers as tf

        torch.manual_seed(0)
        config = tf.Qwen2MoeConfig(**_COMMON, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64,
                                   shared_expert_intermediate_size=96, decoder_sparse_step=1, mlp_only_layers=[1])
        model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    else:
        model = tiny_model(arch)
    model = model.to(dtype)
    # The grouped-mm experts kernel has no float64; the eager loop computes the same function.
    model.config._experts_implementation_internal = "eager"
    return model


def _random_fold(model, groups=None, seed=0):
    generator = torch.Generator().manual_seed(seed)
    _, blocks = find_decoder_blocks(model)
    names = set()
    for block in blocks:
        for group in resolve_scaling_groups(block, model.config, groups):
            scale = 0.3 + 2.7 * torch.rand(group.size, generator=generator, dtype=torch.float64)
            fold_scaling(group, scale)
            names.add(group.name)
    return names


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_folding_random_scales_keeps_the_dense_moe_model(arch, dtype, tol):
    model = _model(arch, dtype)
    names, before, after, changed = fold_and_compare(model, _random_fold, token_ids(2, 24))
    assert names == {"attn_in", "attn_out", "mlp_in", "mlp_out", "qk"}
    assert {"model.layers.0.mlp.gate.weight", "model.layers.0.mlp.experts.gate_up_proj",
            "model.layers.0.mlp.experts.down_proj"} <= changed
    torch.testing.assert_close(after, before, rtol=0, atol=tol * before.abs().max().item())


@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe"])
def test_the_router_must_absorb_the_norm_scale(arch):
    # Without the router's columns the logits, hence the routing and the output, change: the router is a consumer.
    model = _model(arch, torch.float64)
    ids = token_ids(2, 24)
    router = model.model.layers[0].mlp.gate
    original = router.weight.detach().clone()
    with torch.no_grad():
        before = model(ids).logits
        group = resolve_scaling_groups(model.model.layers[0], model.config, ["mlp_in"])[0]
        assert any(module is router for module in group.consumers)
        fold_scaling(group, 0.3 + 2.7 * torch.rand(group.size, dtype=torch.float64))
        torch.testing.assert_close(model(ids).logits, before, rtol=0, atol=1e-10)
        router.weight.copy_(original)
        assert not torch.allclose(model(ids).logits, before, atol=1e-3)


def test_expert_rows_group_pairs_each_expert_with_its_own_down_proj():
    model = _model("mixtral", torch.float64)
    experts = model.model.layers[0].mlp.experts
    group = resolve_scaling_groups(model.model.layers[0], model.config, ["mlp_out"])[0]
    num, inter = experts.down_proj.shape[0], experts.down_proj.shape[2]
    assert group.size == num * inter and len(group.segments) == num
    assert [s.rows[0].name for s in group.segments] == [f"mlp.experts.{e}.up_proj" for e in range(num)]
    gate_up, down = experts.gate_up_proj.detach().clone(), experts.down_proj.detach().clone()
    scale = torch.ones(group.size, dtype=torch.float64)
    scale[2 * inter:3 * inter] = torch.linspace(0.5, 2.0, inter, dtype=torch.float64)
    fold_scaling(group, scale)
    s = scale[2 * inter:3 * inter]
    for e in range(num):
        if e != 2:  # s = 1 elsewhere: those experts are untouched
            assert torch.equal(experts.gate_up_proj[e], gate_up[e]) and torch.equal(experts.down_proj[e], down[e])
    torch.testing.assert_close(experts.gate_up_proj[2, :inter], gate_up[2, :inter], rtol=0, atol=0)  # gate rows
    torch.testing.assert_close(experts.gate_up_proj[2, inter:], gate_up[2, inter:] / s.unsqueeze(1))
    torch.testing.assert_close(experts.down_proj[2], down[2] * s.unsqueeze(0))


def test_qwen2_moe_shared_expert_and_dense_blocks_are_covered():
    model = _model("qwen2_moe")
    moe_block, dense_block = model.model.layers
    mlp_in, mlp_out = resolve_scaling_groups(moe_block, model.config, ["mlp_in", "mlp_out"])
    shared = moe_block.mlp.shared_expert
    for module in (moe_block.mlp.gate, moe_block.mlp.experts, shared.gate_proj, shared.up_proj,
                   moe_block.mlp.shared_expert_gate):
        assert any(m is module for m in mlp_in.consumers)
    assert mlp_out.segments[-1].rows[0].module is shared.up_proj
    assert mlp_out.size == 4 * 64 + 96
    dense_in, dense_out = resolve_scaling_groups(dense_block, model.config, ["mlp_in", "mlp_out"])
    assert dense_in.consumers == [dense_block.mlp.gate_proj, dense_block.mlp.up_proj]
    assert dense_out.consumers == [dense_block.mlp.down_proj]


def test_distribution_fold_reads_expert_statistics_and_scores_up_rows_undivided():
    model = _model("mixtral")
    block = model.model.layers[0]
    targets = plan_block(block, "model.layers.0", None, []).targets
    captured = []
    handle = block.post_attention_layernorm.register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))
    with InputStatsCollector(targets, with_hessian=False, stop_when_done=False) as collector, torch.no_grad():
        model(token_ids(4, 32))
        collector.end_pass()
    handle.remove()
    stats = collector.stats
    # Every token reaches exactly top-k experts, so the summed expert statistics give the all-token RMS.
    x = captured[0].reshape(-1, captured[0].shape[-1]).double()
    experts = {id(stats[f"mlp.experts.{e}.gate_proj"]): stats[f"mlp.experts.{e}.gate_proj"] for e in range(4)}
    summed = sum(s.sq_norms.double() for s in experts.values()) / sum(s.tokens for s in experts.values())
    torch.testing.assert_close(summed, x.square().mean(0), rtol=1e-5, atol=0)
    down_before = stats["mlp.experts.1.down_proj"].sq_norms.clone()
    config = InductionConfig()
    spreads, row_scales = fold_distribution_level(block, model.config, stats, targets, config, UndoLog(enabled=False))
    assert {"attn_in", "attn_out", "mlp_in", "mlp_out"} <= set(spreads)
    inter = block.mlp.experts.down_proj.shape[2]
    assert {f"mlp.experts.{e}.up_proj" for e in range(4)} <= set(row_scales)
    scale = row_scales["mlp.experts.1.up_proj"].double()
    assert scale.shape == (inter,)
    # The down_proj of expert 1 now reads x / s: its cached statistics were rescaled to match.
    torch.testing.assert_close(stats["mlp.experts.1.down_proj"].sq_norms.double(), down_before.double() / scale.square(),
                               rtol=1e-5, atol=0)


def _si(method, **kwargs):
    return SIPruner(method=method, induction=InductionConfig(validation_fraction=0.0), num_samples=8, seqlen=32,
                    show_progress=False, **kwargs)


# Magnitude is the method whose mask the distribution-level fold moves, so it exercises the MoE groups in a prune.
@pytest.mark.parametrize("arch, method", [("mixtral", "wanda"), ("mixtral", "sparsegpt"), ("mixtral", "magnitude"),
                                          ("qwen3_moe", "wanda"), ("qwen3_moe", "sparsegpt"),
                                          ("qwen2_moe", "magnitude")])
def test_si_prunes_moe_models_end_to_end(arch, method):
    model = _model(arch) if arch == "qwen2_moe" else tiny_model(arch)
    pruner = _si(method)
    pruner.prune(model, dataset=token_ids())
    report = pruner.report
    assert report.sparsity == 0.5
    experts = [name for name in report.layers if ".mlp.experts." in name]
    moe_blocks = 1 if arch == "qwen2_moe" else 2
    assert len(experts) == moe_blocks * 4 * 3  # 4 experts x gate/up/down per MoE block
    assert all(record.zeros == record.numel // 2 for record in report.layers.values())
    routers = {"model.layers.0.mlp.gate", "model.layers.0.mlp.shared_expert_gate"} if arch == "qwen2_moe" else \
        {"model.layers.0.mlp.gate", "model.layers.1.mlp.gate"}
    assert set(report.skipped) == routers  # routers stay dense
    for block in report.blocks:
        info = block.induction
        assert info is not None and info["steps"] == 8
        assert info["kept"] and info["loss_after"] < info["loss_before"]
        if method == "magnitude":  # only magnitude folds the equivalent scales before its mask
            assert {"mlp_in", "mlp_out"} <= set(info["scale_spread"])
    assert torch.isfinite(model(token_ids(1, 16)).logits).all()


def test_induce_on_moe_keeps_the_dense_function():
    model = tiny_model("mixtral")
    ids = token_ids(2, 24)
    before_weights = snapshot(model)
    with torch.no_grad():
        before = model(ids).logits
    pruner = _si("wanda")
    pruner.induce(model, dataset=token_ids())
    with torch.no_grad():
        after = model(ids).logits
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4 * before.abs().max().item())
    assert not torch.equal(model.model.layers[0].mlp.experts.down_proj,
                           before_weights["model.layers.0.mlp.experts.down_proj"])
    assert all({"mlp_in", "mlp_out"} <= set(b.induction["scale_spread"]) for b in pruner.report.blocks)


@pytest.mark.parametrize("arch", ["mixtral", "qwen3_moe"])
def test_streamed_si_on_moe_equals_in_memory(arch, tmp_path):
    # Magnitude folds the expert groups into the fused parameters; the streamed run writes them back per expert.
    streamed, pruner = stream_and_prune_in_memory(tiny_model(arch), lambda: _si("magnitude"), tmp_path, token_ids(),
                                                  max_shard_size="100KB")
    assert [b.induction["kept"] for b in streamed.report.blocks] == [b.induction["kept"] for b in pruner.report.blocks]
    assert streamed.report.sparsity == pytest.approx(0.5)


def test_si_targets_are_the_routed_dense_outputs_when_experts_calibrate_on_every_token(monkeypatch):
    """expert_calibration="all" sends every token to every expert in the statistics pass; SI must still train
    against what the dense block really outputs (the model's own routing), so the targets come from their own pass."""
    import copy

    from optimum_si.induction.inducer import BlockInducer
    from optimum_si.modeling.capture import block_output as _block_output

    model = tiny_model("mixtral")
    dense_block = copy.deepcopy(model.model.layers[0])
    seen = []
    original = BlockInducer.run

    def spy(self, block, linears, dense_weights, keeps, stats, hidden, kwargs, dense_outputs, *rest):
        if not seen:
            seen.append(([h.clone() for h in hidden], kwargs, [o.clone() for o in dense_outputs]))
        return original(self, block, linears, dense_weights, keeps, stats, hidden, kwargs, dense_outputs, *rest)

    monkeypatch.setattr(BlockInducer, "run", spy)
    _si("wanda", expert_calibration="all").prune(model, dataset=token_ids())
    hidden, kwargs, targets = seen[0]
    with torch.no_grad():
        routed = [_block_output(dense_block(h, **kwargs[h.shape[0]])) for h in hidden]
    assert all(torch.equal(t, r) for t, r in zip(targets, routed, strict=True))
