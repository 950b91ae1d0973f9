import pytest
import torch
from torch import nn

from optimum_si import SIConfig, SIPruner
from optimum_si.methods.masks import follows_nm
from tests.conftest import ARCHS, assert_unchanged, snapshot, tiny_model, token_ids

METHODS = ["magnitude", "wanda", "sparsegpt"]


def _prune(model, **kwargs):
    pruner = SIPruner(num_samples=8, seqlen=32, show_progress=False, **kwargs)
    pruner.prune(model, dataset=token_ids())
    return pruner


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", METHODS)
def test_every_architecture_and_method_reaches_exact_sparsity(arch, method):
    model = tiny_model(arch)
    embed_before = model.get_input_embeddings().weight.clone()
    pruner = _prune(model, method=method)
    linears = [m for n, m in model.named_modules() if isinstance(m, nn.Linear) and "layers." in n]
    assert len(pruner.report.layers) == len(linears) > 0
    for linear in linears:
        assert (linear.weight == 0).sum().item() == linear.weight.numel() // 2
    assert pruner.report.sparsity == 0.5
    assert torch.equal(model.get_input_embeddings().weight, embed_before)
    assert torch.isfinite(model(token_ids(1, 16)).logits).all()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("structure", ["2:4", "4:8"])
def test_nm_patterns(method, structure):
    model = tiny_model("llama")
    pruner = _prune(model, method=method, mask_structure=structure)
    n, m = SIConfig(mask_structure=structure).n_m
    for name in pruner.report.layers:
        assert follows_nm(model.get_submodule(name).weight, n, m), name


def test_lm_head_and_embeddings_stay_dense():
    model = tiny_model("opt")
    head = model.lm_head.weight.clone()
    _prune(model, method="wanda")
    assert torch.equal(model.lm_head.weight, head)


def test_targets_and_ignore():
    model = tiny_model("llama")
    pruner = _prune(model, method="wanda", targets=["*mlp*"], ignore=["*down_proj"])
    assert sorted({n.rsplit(".", 1)[1] for n in pruner.report.layers}) == ["gate_proj", "up_proj"]
    assert (model.model.layers[0].self_attn.q_proj.weight != 0).all()


def test_true_sequential_differs_from_one_pass_but_keeps_sparsity():
    one_pass = tiny_model("llama")
    sequential = tiny_model("llama")
    _prune(one_pass, method="wanda")
    report = _prune(sequential, method="wanda", true_sequential=True).report
    assert report.sparsity == 0.5
    q = "model.layers.1.mlp.down_proj"
    assert not torch.equal(one_pass.get_submodule(q).weight, sequential.get_submodule(q).weight)


def test_same_config_same_result_and_report_contents():
    a, b = tiny_model("llama"), tiny_model("llama")
    report = _prune(a, method="sparsegpt").report
    _prune(b, method="sparsegpt")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert len(report.blocks) == 2 and report.total_seconds > 0
    assert all(r.error is not None and r.error >= 0 for r in report.layers.values())


def test_wanda_matches_a_direct_computation_on_block_zero():
    model = tiny_model("llama")
    ids = token_ids()
    reference = tiny_model("llama")
    captured = {}
    handle = reference.model.layers[0].self_attn.q_proj.register_forward_pre_hook(
        lambda m, a: captured.setdefault("x", []).append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        reference(ids)
    handle.remove()
    x = torch.cat(captured["x"])
    w = reference.model.layers[0].self_attn.q_proj.weight
    metric = w.abs() * x.norm(dim=0)
    expected = w * (metric >= metric.sort(dim=1).values[:, [w.shape[1] // 2]])
    SIPruner(method="wanda", num_samples=8, seqlen=32, show_progress=False).prune(model, dataset=ids)
    torch.testing.assert_close(model.model.layers[0].self_attn.q_proj.weight, expected)


def test_prune_twice_raises():
    model = tiny_model("llama")
    _prune(model, method="magnitude")
    with pytest.raises(RuntimeError, match="already pruned"):
        _prune(model, method="magnitude")


def test_magnitude_needs_no_data():
    model = tiny_model("llama")
    SIPruner(method="magnitude", show_progress=False).prune(model)
    assert (model.model.layers[0].mlp.up_proj.weight == 0).float().mean() == 0.5


# ---------------------------------------------------------------------------------------------- bad input
def test_unrecognised_blocks_name_the_override():
    class NoBlocks(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 4)

    with pytest.raises(ValueError, match="block_name"):
        SIPruner(method="magnitude").prune(NoBlocks())
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="block_name='model.nothing'"):
        SIPruner(method="magnitude", block_name="model.nothing").prune(model)


def test_meta_device_model():
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    from tests.conftest import tiny_config

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(tiny_config("llama"))
    with pytest.raises(ValueError, match="meta device"):
        SIPruner(method="magnitude").prune(model)


@pytest.mark.parametrize(
    "dataset, message",
    [
        (["short text"], "a tokenizer is needed"),
        (torch.rand(8, 32), "integer token ids"),
        (torch.zeros(8, dtype=torch.long), "shape"),
        (None, "needs calibration data"),
    ],
)
def test_bad_data_leaves_weights_unchanged(dataset, message):
    model = tiny_model("llama")
    before = snapshot(model)
    with pytest.raises(ValueError, match=message):
        SIPruner(method="wanda", num_samples=8, seqlen=32).prune(model, dataset=dataset)
    assert_unchanged(model, before)


def test_too_short_text_and_context_errors():
    class Chars:
        def __call__(self, text, verbose=True):
            return {"input_ids": [ord(c) % 100 for c in text]}

    model = tiny_model("llama")
    before = snapshot(model)
    with pytest.raises(ValueError, match="too little"):
        SIPruner(method="wanda", num_samples=8, seqlen=32).prune(model, tokenizer=Chars(), dataset=["tiny"])
    with pytest.raises(ValueError, match="context"):
        SIPruner(method="wanda", num_samples=8, seqlen=1024).prune(model, tokenizer=Chars(), dataset=["x" * 5000])
    assert_unchanged(model, before)


def test_nm_on_indivisible_inputs_is_rejected_up_front():
    from transformers import AutoModelForCausalLM, LlamaConfig

    model = AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=90, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2))
    before = snapshot(model)
    with pytest.raises(ValueError, match="down_proj"):
        SIPruner(method="magnitude", mask_structure="4:8").prune(model)
    assert_unchanged(model, before)


def test_nan_weights_are_rejected_before_pruning():
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    before = snapshot(model)
    with pytest.raises(ValueError, match="NaN or inf"):
        _prune(model, method="wanda")
    assert all(torch.equal(v, model.state_dict()[k]) or torch.isnan(v).any() for k, v in before.items())


def test_nan_activations_mid_run_restore_every_weight():
    model = tiny_model("llama")
    before = snapshot(model)
    # Block 1's attention output turns NaN: block 0 is already pruned when it is detected.
    model.model.layers[1].self_attn.register_forward_hook(lambda m, a, out: (out[0] * float("nan"),) + tuple(out[1:]))
    with pytest.raises(FloatingPointError, match="NaN"):
        _prune(model, method="sparsegpt")
    assert_unchanged(model, before)


def test_config_type_errors():
    with pytest.raises(TypeError, match="SIConfig"):
        SIPruner("wanda")
    with pytest.raises(ValueError, match="Unknown SIConfig field"):
        SIPruner(methd="wanda")
    with pytest.raises(TypeError, match="nn.Module"):
        SIPruner(method="magnitude").prune(object())




def test_a_failed_or_foreign_prune_is_never_saved_as_pruned(tmp_path):
    import os

    pruner = SIPruner(method="sparsegpt", num_samples=8, seqlen=32, show_progress=False)
    pruned = tiny_model("llama")
    pruner.prune(pruned, dataset=token_ids())
    dense = tiny_model("llama")
    with pytest.raises(ValueError, match="describes another model"):  # the report is pruned's, not dense's
        pruner.save(dense, tmp_path / "a")
    # A run that fails mid-way restores the weights and leaves no report behind (not the earlier run's).
    dense.model.layers[1].self_attn.register_forward_hook(lambda m, a, out: (out[0] * float("nan"),) + tuple(out[1:]))
    with pytest.raises(FloatingPointError):
        pruner.prune(dense, dataset=token_ids())
    assert pruner.report is None
    with pytest.raises(ValueError, match="has not been pruned"):
        pruner.save(dense, tmp_path / "b")
    assert not os.listdir(tmp_path)
    pruner.save(pruned, tmp_path / "c")  # a pruned model still saves (without the report it no longer has)
    assert (tmp_path / "c" / "si_config.json").is_file()


def test_si_checks_every_block_layout_before_any_weight_changes(llama, calib):
    """A late block that does not match the architecture's SI table stops the run up front (not at its fold)."""
    last = llama.model.layers[-1].mlp
    last.up_proj_renamed = last.up_proj
    del last.up_proj
    before = snapshot(llama)
    with pytest.raises(ValueError, match=rf"Block {len(llama.model.layers) - 1} does not match"):
        SIPruner(method="wanda", sparsity=0.5, induction=True, num_samples=4, seqlen=32).prune(llama, dataset=calib)
    assert_unchanged(llama, before)
    assert isinstance(last.up_proj_renamed, nn.Linear)
