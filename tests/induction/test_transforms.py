import pytest
import torch

from optimum_si.induction.transforms import fold_scaling, resolve_scaling_groups
from tests.conftest import ARCHS, tiny_config, tiny_model, token_ids


def _random_fold(model, seed=0, with_shift=True):
    generator = torch.Generator().manual_seed(seed)
    blocks = model.get_submodule("model.decoder.layers" if model.config.model_type == "opt" else "model.layers")
    names = []
    for block in blocks:
        for group in resolve_scaling_groups(block, model.config):
            # Scales far from 1 (0.3 .. 3) so that a wrong fold cannot hide.
            scale = 0.3 + 2.7 * torch.rand(group.size, generator=generator)
            shift = torch.randn(group.size, generator=generator) if with_shift and group.can_shift else None
            fold_scaling(group, scale, shift)
            names.append(group.name)
    return names


@pytest.mark.parametrize("arch", ARCHS)
def test_folding_random_scales_and_shifts_keeps_logits(arch):
    model = tiny_model(arch)
    ids = token_ids(2, 24)
    with torch.no_grad():
        before = model(ids).logits
        names_before = {k: v.shape for k, v in model.state_dict().items()}
        groups = _random_fold(model)
        after = model(ids).logits
    assert set(groups) == {"attn_in", "attn_out", "mlp_in", "mlp_out", "qk"}
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4 * before.abs().max().item())
    assert {k: v.shape for k, v in model.state_dict().items()} == names_before


@pytest.mark.parametrize("arch", ["llama", "opt", "gemma3"])
def test_folded_model_saves_and_reloads(arch, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model(arch)
    _random_fold(model, seed=1)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = token_ids(1, 16)
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model(ids).logits)


def test_fold_is_not_vacuous():
    # The same scales applied to the consumers only must change the function.
    model = tiny_model("llama")
    ids = token_ids(1, 16)
    group = resolve_scaling_groups(model.model.layers[0], model.config, groups=["attn_in"])[0]
    with torch.no_grad():
        before = model(ids).logits
        for linear in group.consumers:
            linear.weight.mul_(2.0)
        assert not torch.allclose(model(ids).logits, before, atol=1e-3)


def test_post_ln_opt_drops_norm_groups():
    from transformers import AutoModelForCausalLM

    config = tiny_config("opt")
    config.do_layer_norm_before = False
    model = AutoModelForCausalLM.from_config(config)
    names = [g.name for g in resolve_scaling_groups(model.model.decoder.layers[0], model.config)]
    assert names == ["attn_out", "mlp_out", "qk"]


def test_unknown_architecture_is_a_clear_error():
    model = tiny_model("llama")
    model.config.model_type = "mystery"
    with pytest.raises(NotImplementedError, match="no scaling-group mapping"):
        resolve_scaling_groups(model.model.layers[0], model.config)


def test_invalid_scales_and_shifts_are_refused():
    model = tiny_model("llama")
    group = resolve_scaling_groups(model.model.layers[0], model.config, groups=["attn_in"])[0]
    with pytest.raises(ValueError, match="positive"):
        fold_scaling(group, -torch.ones(group.size))
    with pytest.raises(ValueError, match="cannot absorb a shift"):
        fold_scaling(group, torch.ones(group.size), torch.ones(group.size))
