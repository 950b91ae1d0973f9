"""Every weight of a block is pruned or skipped on purpose: fused MoE experts (per expert, routed-token statistics),
GPT-2's Conv1D (transposed layout), routers left dense, unknown layouts refused before any weight changes."""

from __future__ import annotations

import logging
import os

import pytest
import torch
from torch import nn

from optimum_si import InductionConfig, SIPruner
from optimum_si.methods.masks import follows_nm, select_mask
from optimum_si.methods.wanda.scores import wanda_scores
from optimum_si.modeling.targets import plan_block
from optimum_si.observers.stats import InputStatsCollector
from tests.conftest import assert_unchanged, snapshot, tiny_model, token_ids

METHODS = ["magnitude", "wanda", "sparsegpt"]
MOE = ["mixtral", "qwen3_moe"]


def _prune(arch, method, **options):
    model = tiny_model(arch)
    pruner = SIPruner(method=method, num_samples=8, seqlen=32, show_progress=False, **options)
    pruner.prune(model, dataset=token_ids())
    return model, pruner


def test_plan_covers_every_weight_of_a_moe_block():
    block = tiny_model("mixtral").model.layers[0]
    plan = plan_block(block, "model.layers.0", None, [])
    assert sorted(plan.targets)[:3] == ["mlp.experts.0.down_proj", "mlp.experts.0.gate_proj", "mlp.experts.0.up_proj"]
    assert len(plan.targets) == 4 + 4 * 3
    assert plan.skipped == {"model.layers.0.mlp.gate": "router (kept dense by default)"}
    gate, up = plan.targets["mlp.experts.2.gate_proj"], plan.targets["mlp.experts.2.up_proj"]
    fused = block.mlp.experts.gate_up_proj
    assert torch.equal(gate.weight(), fused[2, :128]) and torch.equal(up.weight(), fused[2, 128:])
    assert gate.stats_key == up.stats_key  # one input, shared statistics (stacked in SparseGPT)
    # Explicitly targeted, the router is pruned like any matrix.
    assert "mlp.gate" in plan_block(block, "model.layers.0", ["*"], []).targets


@pytest.mark.parametrize("arch", MOE)
@pytest.mark.parametrize("method", METHODS)
def test_moe_experts_pruned_per_expert(arch, method):
    model, pruner = _prune(arch, method)
    experts = model.model.layers[0].mlp.experts
    half = experts.gate_up_proj.shape[1] // 2
    for e in range(experts.gate_up_proj.shape[0]):
        for matrix in (experts.gate_up_proj[e, :half], experts.gate_up_proj[e, half:], experts.down_proj[e]):
            if method == "wanda":  # per output row
                assert bool(((matrix == 0).sum(1) == matrix.shape[1] // 2).all())
            else:  # per matrix (SparseGPT: per lazy block of columns over the matrix)
                assert int((matrix == 0).sum()) == matrix.numel() // 2
    assert not bool((model.model.layers[0].mlp.gate.weight == 0).any())  # the router stays dense
    layers = pruner.report.layers
    assert "model.layers.1.mlp.experts.3.down_proj" in layers and len(layers) == 2 * (4 + 12)
    assert pruner.report.skipped and not pruner.report.fallbacks


def test_expert_statistics_come_from_the_routed_tokens():
    model = tiny_model("mixtral")
    block = model.model.layers[0]
    routed = {}

    def record(module, args):
        hidden, top_k_index, _weights = args
        for e in range(module.num_experts):
            routed[e] = hidden[(top_k_index == e).any(-1)]

    hidden = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(0))
    plan = plan_block(block, "model.layers.0", None, [])
    handle = block.mlp.experts.register_forward_pre_hook(record)
    try:
        with torch.no_grad(), InputStatsCollector(plan.targets, with_hessian=True, stop_when_done=True) as collector:
            position = torch.arange(16).unsqueeze(0)
            block(hidden, position_embeddings=model.model.rotary_emb(hidden, position), attention_mask=None)
    finally:
        handle.remove()
    for e, x in routed.items():
        stats = collector.stats[f"mlp.experts.{e}.gate_proj"]
        assert stats is collector.stats[f"mlp.experts.{e}.up_proj"] and stats.tokens == x.shape[0]
        torch.testing.assert_close(stats.sq_norms, x.square().sum(0))
        torch.testing.assert_close(stats.xtx, x.T @ x)
        assert collector.stats[f"mlp.experts.{e}.down_proj"].tokens == x.shape[0]
    assert sum(x.shape[0] for x in routed.values()) == 2 * 16 * 2  # top-2 routing


def test_wanda_expert_mask_is_the_metric_on_its_routed_inputs():
    dense = tiny_model("mixtral")
    routed = {}
    handle = dense.model.layers[0].mlp.experts.register_forward_pre_hook(
        lambda m, args: routed.update({e: args[0][(args[1] == e).any(-1)] for e in range(m.num_experts)}))
    ids = token_ids()
    with torch.no_grad():
        for batch in ids.split(1):
            _partial = dense(batch)  # block 0 sees the same inputs as in a pruning run (nothing pruned before it)
            for e, x in list(routed.items()):
                routed.setdefault(("all", e), []).append(x)
    handle.remove()
    model, _ = _prune("mixtral", "wanda")
    fused = dense.model.layers[0].mlp.experts.gate_up_proj
    for e in range(4):
        x = torch.cat(routed[("all", e)])
        keep = select_mask(wanda_scores(fused[e, :128], x.float().square().sum(0)), 0.5, None, per_row=True)
        assert torch.equal(model.model.layers[0].mlp.experts.gate_up_proj[e, :128] != 0, keep)


def test_an_expert_no_token_reaches_uses_identity_statistics(caplog):
    model = tiny_model("mixtral")
    for layer in model.model.layers:  # route every token to experts 0 and 1 only
        router = layer.mlp.gate

        def forward(hidden, _router=router):
            hidden = hidden.reshape(-1, _router.hidden_dim)
            index = torch.tensor([[0, 1]]).expand(hidden.shape[0], 2)
            return None, torch.full((hidden.shape[0], 2), 0.5), index

        router.forward = forward
    pruner = SIPruner(method="sparsegpt", num_samples=8, seqlen=32, show_progress=False)
    with caplog.at_level(logging.WARNING, logger="optimum_si"):
        pruner.prune(model, dataset=token_ids())
    fallbacks = pruner.report.fallbacks
    assert "model.layers.0.mlp.experts.2.gate_proj" in fallbacks and "model.layers.1.mlp.experts.3.down_proj" in fallbacks
    assert not any(".experts.0." in name or ".experts.1." in name for name in fallbacks)
    assert "no calibration token reached" in caplog.text
    assert int((model.model.layers[0].mlp.experts.down_proj[3] == 0).sum()) == 64 * 128 // 2


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("structure", ["unstructured", "2:4"])
def test_gpt2_conv1d_pruned_like_linear(method, structure):
    model, pruner = _prune("gpt2", method, mask_structure=structure)
    assert len(pruner.report.layers) == 8 and pruner.report.sparsity == 0.5
    for block in model.transformer.h:
        for conv in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
            as_linear = conv.weight.T  # [out, in]
            if structure == "2:4":
                assert follows_nm(as_linear, 2, 4)  # groups run along the inputs, as for a Linear
            elif method == "wanda":
                assert bool(((as_linear == 0).sum(1) == as_linear.shape[1] // 2).all())
            assert int((as_linear == 0).sum()) == as_linear.numel() // 2


def test_gpt2_conv1d_wanda_matches_the_linear_equivalent():
    """The same matrix as a Linear gets the same mask: Conv1D only stores it transposed."""
    model = tiny_model("gpt2")
    conv = model.transformer.h[0].mlp.c_fc
    x = torch.randn(40, 64, generator=torch.Generator().manual_seed(1))
    linear = nn.Linear(64, 256)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.T)
    expected = select_mask(wanda_scores(linear.weight, x.square().sum(0)), 0.5, None, per_row=True)
    from optimum_si.methods import Pattern, get_method
    from optimum_si.modeling.targets import WeightTarget
    from optimum_si.modeling.weights import UndoLog
    from optimum_si.pipeline.pruning import prune_group
    from optimum_si.reporting.report import PruneReport

    target = WeightTarget("mlp.c_fc", conv, transposed=True)
    with InputStatsCollector({"mlp.c_fc": target}, with_hessian=False, stop_when_done=False) as collector:
        conv(x)
    prune_group(get_method("wanda"), "h.0", {"mlp.c_fc": target}, collector.stats, lambda _name: Pattern(0.5),
                UndoLog(), PruneReport("wanda", "unstructured", 0.5))
    assert torch.equal(conv.weight.T != 0, expected)


@pytest.mark.parametrize("arch", ["mixtral", "gpt2"])
def test_pruned_moe_and_conv1d_save_and_reload_bit_identically(arch, tmp_path):
    from transformers import AutoModelForCausalLM

    model, pruner = _prune(arch, "wanda")
    out = pruner.save(model, str(tmp_path / "out"))
    again = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name


def test_unknown_weight_layout_is_refused_before_any_change():
    model = tiny_model("llama")
    model.model.layers[1].mlp.register_parameter("mystery", nn.Parameter(torch.randn(8, 64)))
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"cannot prune: model\.layers\.1\.mlp\.mystery \(8, 64\)"):
        SIPruner(method="magnitude", show_progress=False).prune(model)
    assert_unchanged(model, before)
    pruner = SIPruner(method="magnitude", ignore=["*.mlp.mystery"], show_progress=False)
    pruner.prune(model)
    assert pruner.report.skipped == {"model.layers.1.mlp.mystery": "ignore pattern"}


def test_induction_on_moe_without_a_table_is_refused_up_front_or_skipped():
    model = tiny_model("mixtral")
    model.config.model_type = "mystery_moe"  # Mixtral itself has an SI table (tests/test_induction_moe.py)
    before = snapshot(model)
    with pytest.raises(NotImplementedError):
        SIPruner(method="wanda", induction=True, num_samples=8, seqlen=32, show_progress=False).prune(
            model, dataset=token_ids())
    assert_unchanged(model, before)
    pruner = SIPruner(method="wanda", induction=InductionConfig(unsupported="skip"), num_samples=8, seqlen=32,
                      show_progress=False)
    pruner.prune(model, dataset=token_ids())
    assert pruner.report.sparsity == 0.5


@pytest.mark.parametrize("arch", ["mixtral", "gpt2"])
def test_sparsity_report_sees_experts_and_conv1d(arch):
    from optimum_si import sparsity_report

    model, _ = _prune(arch, "wanda", mask_structure="2:4")
    report = sparsity_report(model)
    assert report["sparsity"] == 0.5 and report["patterns"]["2:4"]
    assert report["pruned_modules"] == (2 * (4 + 2 * 4) if arch == "mixtral" else 8)


def test_expert_calibration_all_gives_every_expert_every_token():
    model = tiny_model("mixtral")
    block = model.model.layers[0]
    plan = plan_block(block, "model.layers.0", None, [])
    hidden = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(0))
    position = torch.arange(16).unsqueeze(0)
    with torch.no_grad(), InputStatsCollector(plan.targets, with_hessian=False, stop_when_done=False,
                                              all_tokens_to_experts=True) as collector:
        block(hidden, position_embeddings=model.model.rotary_emb(hidden, position), attention_mask=None)
    assert all(collector.stats[f"mlp.experts.{e}.{p}"].tokens == 32 for e in range(4) for p in ("up_proj", "down_proj"))
    assert collector.stats["mlp.experts.0.up_proj"].sq_norms.equal(collector.stats["mlp.experts.3.gate_proj"].sq_norms)
    routed, _ = _prune("mixtral", "wanda")
    everything, pruner = _prune("mixtral", "wanda", expert_calibration="all")
    assert pruner.report.sparsity == 0.5 and pruner.config.to_dict()["expert_calibration"] == "all"
    experts = (routed.model.layers[0].mlp.experts.down_proj, everything.model.layers[0].mlp.experts.down_proj)
    assert not torch.equal(experts[0] == 0, experts[1] == 0)  # other statistics, other masks


def test_qwen2_moe_prunes_shared_and_routed_experts_keeps_both_gates_dense():
    import transformers as tf
    from transformers import AutoModelForCausalLM

    from tests.conftest import _COMMON

    torch.manual_seed(0)
    config = tf.Qwen2MoeConfig(**_COMMON, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64,
                               shared_expert_intermediate_size=64, decoder_sparse_step=1, mlp_only_layers=[])
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    pruner = SIPruner(method="sparsegpt", num_samples=8, seqlen=32, show_progress=False)
    pruner.prune(model, dataset=token_ids())
    assert pruner.report.sparsity == 0.5 and "model.layers.1.mlp.shared_expert.up_proj" in pruner.report.layers
    assert pruner.report.skipped["model.layers.0.mlp.shared_expert_gate"] == "router (kept dense by default)"


def test_offloaded_moe_gives_the_in_memory_result():
    from accelerate import cpu_offload

    from optimum_si.modeling.offload import offloaded_state_dict

    reference, _ = _prune("mixtral", "wanda")
    model = tiny_model("mixtral")
    for layer in model.model.layers:
        cpu_offload(layer, execution_device=torch.device("cpu"))
    SIPruner(method="wanda", num_samples=8, seqlen=32, show_progress=False).prune(model, dataset=token_ids())
    stored = offloaded_state_dict(model)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(stored[name], tensor), name


@pytest.mark.parametrize("method", METHODS)
def test_gpt2_streaming_matches_in_memory(method, tmp_path):
    from safetensors.torch import load_file

    source = tmp_path / "dense"
    tiny_model("gpt2").save_pretrained(source)
    model, _ = _prune("gpt2", method)
    pruner = SIPruner(method=method, num_samples=8, seqlen=32, show_progress=False)
    out = pruner.prune(str(source), save_dir=str(tmp_path / "out"), dataset=token_ids(), device="cpu")
    streamed = {k: v for path in sorted(os.listdir(out)) if path.endswith(".safetensors")
                for k, v in load_file(os.path.join(out, path)).items()}
    state = model.state_dict()
    assert "transformer.h.1.mlp.c_fc.weight" in streamed
    for name, tensor in streamed.items():
        assert torch.equal(tensor, state[name]), name


def test_card_names_the_weights_left_dense(tmp_path):
    model, pruner = _prune("mixtral", "wanda")
    out = pruner.save(model, str(tmp_path / "out"))
    card = open(os.path.join(out, "README.md"), encoding="utf-8").read()
    assert "So are 2 weight(s) inside" in card and "routers" in card


def test_transposed_experts_are_refused_unless_ignored():
    block = tiny_model("mixtral").model.layers[0]
    block.mlp.experts.is_transposed = True
    with pytest.raises(ValueError, match=r"experts\.gate_up_proj \(experts stored transposed"):
        plan_block(block, "model.layers.0", None, [])
    plan = plan_block(block, "model.layers.0", None, ["*.mlp.experts"])
    assert plan.skipped["model.layers.0.mlp.experts.down_proj"] == "ignore pattern" and len(plan.targets) == 4


def test_integer_weights_are_refused_naming_them():
    model = tiny_model("llama")
    linear = model.model.layers[1].self_attn.o_proj
    linear.weight = torch.nn.Parameter(linear.weight.data.mul(100).to(torch.int32), requires_grad=False)
    before = linear.weight.clone()
    for method in ("magnitude", "wanda"):
        with pytest.raises(ValueError, match=r"model\.layers\.1\.self_attn\.o_proj\.weight \(int32\) is an integer "
                                             r"weight; optimum-si prunes \(and runs\) floating-point weights"):
            SIPruner(method=method, num_samples=4, seqlen=16, show_progress=False).prune(model, dataset=token_ids(4, 16))
    assert torch.equal(linear.weight, before)
