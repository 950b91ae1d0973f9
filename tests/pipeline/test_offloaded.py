"""In-memory pruning of models offloaded to CPU by accelerate hooks (optimum_si.modeling.offload)."""

import os

import pytest
import torch
from accelerate import cpu_offload, disk_offload, init_empty_weights
from accelerate.hooks import AlignDevicesHook, attach_align_device_hook_on_blocks
from accelerate.utils import OffloadedWeightsLoader
from accelerate.utils.offload import extract_submodules_state_dict

from optimum_si import SIPruner
from optimum_si.modeling.offload import offloaded_state_dict, offloaded_tensors
from optimum_si.modeling.weights import STORAGE_ATTR
from optimum_si.pipeline.sources.offloaded import OffloadedBlocks
from tests.conftest import snapshot, tiny_model, token_ids

RECIPES = {
    "wanda": dict(method="wanda"),
    "sparsegpt-2:4": dict(method="sparsegpt", mask_structure="2:4"),
    "si-wanda": dict(method="wanda", induction=True),
    "owl-wanda": dict(method="wanda", sparsity=0.6, sparsity_profile="owl", profile_args={"lam": 0.2}),
}


def _pruner(**kwargs):
    return SIPruner(num_samples=8, seqlen=32, show_progress=False, **kwargs)


def _cpu_offloaded(model):
    return cpu_offload(model, execution_device="cpu")  # every module on meta, one CPU state dict in the hooks


def _dispatched(model, offloaded=("model.layers.1", "lm_head")):
    """What `dispatch_model` (and so `from_pretrained(device_map=...)`) builds for a device map with "cpu" entries
    while the main device is a GPU; on this CPU-only test machine the CPU plays the GPU's part."""
    names = ["model.embed_tokens", "model.rotary_emb", "model.layers.0", "model.layers.1", "model.norm", "lm_head"]
    weights_map = OffloadedWeightsLoader(state_dict=extract_submodules_state_dict(model.state_dict(), list(offloaded)))
    attach_align_device_hook_on_blocks(model, execution_device={**dict.fromkeys(names, "cpu"), "": "cpu"},
                                       offload={n: n in offloaded for n in names}, weights_map=weights_map,
                                       tied_params_map={})
    model.hf_device_map = dict.fromkeys(names, "cpu")
    return model


def _block_offloaded(model):
    # One hook per decoder block, onloading the whole block (names relative to the block: "mlp.up_proj.weight").
    return cpu_offload(model, execution_device="cpu", preload_module_classes=["LlamaDecoderLayer"])


OFFLOADERS = {"cpu_offload": _cpu_offloaded, "dispatch": _dispatched, "per_block": _block_offloaded}


def _stored(model):
    """The offloaded model's real weights (meta parameters replaced by their stored tensors), cloned."""
    return {k: v.clone() for k, v in offloaded_state_dict(model).items()}


def _assert_still_offloaded(model, offloaded_names):
    for name in offloaded_names:
        module = model.get_submodule(name)
        assert isinstance(module._hf_hook, AlignDevicesHook) and module._hf_hook.offload, name
        assert all(p.is_meta for p in module.parameters(recurse=module._hf_hook.place_submodules)), name
    assert not any(STORAGE_ATTR in m.__dict__ for m in model.modules())


@pytest.mark.parametrize("offloader", OFFLOADERS)
@pytest.mark.parametrize("recipe", RECIPES)
def test_offloaded_prune_is_bit_identical_to_plain(offloader, recipe):
    plain, offloaded = tiny_model("llama"), OFFLOADERS[offloader](tiny_model("llama"))
    hooked = [n for n, m in offloaded.named_modules() if getattr(getattr(m, "_hf_hook", None), "offload", False)]
    reference = _pruner(**RECIPES[recipe])
    reference.prune(plain, dataset=token_ids())
    pruner = _pruner(**RECIPES[recipe])
    pruner.prune(offloaded, dataset=token_ids())

    expected, stored = plain.state_dict(), _stored(offloaded)
    assert stored.keys() == expected.keys()
    for name, tensor in expected.items():
        assert stored[name].dtype == tensor.dtype and torch.equal(stored[name], tensor), name
    q = stored["model.layers.1.self_attn.q_proj.weight"]
    if recipe != "owl-wanda":  # OWL gives each block its own sparsity
        assert (q == 0).sum().item() == q.numel() // 2
    assert not torch.signbit(q[q == 0]).any()  # exact +0.0 zeros in the offloaded storage
    _assert_still_offloaded(offloaded, hooked)
    assert pruner.report.sparsity == reference.report.sparsity == (0.5 if recipe != "owl-wanda" else pytest.approx(0.6,
                                                                                                               abs=0.01))
    ids = token_ids(2, 16, seed=1)
    assert torch.equal(offloaded(ids).logits, plain(ids).logits)  # the forward through the hooks sees pruned weights


@pytest.mark.parametrize("offload", ["dispatched", "cpu_offload"])
def test_save_of_an_offloaded_model_reloads_the_pruned_weights(offload, tmp_path):
    from transformers import AutoModelForCausalLM

    wrap = _dispatched if offload == "dispatched" else _cpu_offloaded
    plain, offloaded = tiny_model("llama"), wrap(tiny_model("llama"))
    _pruner(method="wanda").prune(plain, dataset=token_ids())
    pruner = _pruner(method="wanda")
    pruner.prune(offloaded, dataset=token_ids())
    pruner.save(offloaded, tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").state_dict()
    expected = plain.state_dict()
    assert reloaded.keys() == expected.keys()
    assert all(torch.equal(reloaded[k], v) for k, v in expected.items())


def test_offloaded_state_dict_saves_a_cpu_offloaded_model(tmp_path):
    from transformers import AutoModelForCausalLM

    plain, offloaded = tiny_model("llama"), _cpu_offloaded(tiny_model("llama"))
    _pruner(method="wanda").prune(plain, dataset=token_ids())
    _pruner(method="wanda").prune(offloaded, dataset=token_ids())
    offloaded.save_pretrained(tmp_path, state_dict=offloaded_state_dict(offloaded))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).state_dict()
    assert all(torch.equal(reloaded[k], v) for k, v in plain.state_dict().items())


def test_failure_mid_run_restores_the_offloaded_storage(monkeypatch):
    offloaded = _cpu_offloaded(tiny_model("llama"))
    before = _stored(offloaded)
    bad = "model.layers.1.mlp.down_proj.weight"
    release = OffloadedBlocks.release

    def release_then_corrupt(self, index, block):
        release(self, index, block)
        if index == 0:  # block 0 is pruned and written back by now; block 1 goes bad after the up-front checks
            offloaded_tensors(offloaded)[bad].fill_(float("nan"))

    monkeypatch.setattr(OffloadedBlocks, "release", release_then_corrupt)
    with pytest.raises(FloatingPointError):
        _pruner(method="wanda").prune(offloaded, dataset=token_ids())
    after = _stored(offloaded)
    changed = [k for k, v in before.items() if k != bad and not torch.equal(v, after[k])]
    assert not changed, f"offloaded weights not restored: {changed[:5]}"
    _assert_still_offloaded(offloaded, ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"])

    # Fully restored: with the bad tensor repaired, a new run gives exactly the plain result.
    monkeypatch.setattr(OffloadedBlocks, "release", release)
    offloaded_tensors(offloaded)[bad].copy_(before[bad])
    plain = tiny_model("llama")
    _pruner(method="wanda").prune(plain, dataset=token_ids())
    _pruner(method="wanda").prune(offloaded, dataset=token_ids())
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in _stored(offloaded).items())


def test_disk_offload_is_refused_before_any_weight_is_touched(tmp_path):
    folder = tmp_path / "offload"
    offloaded = disk_offload(tiny_model("llama"), folder, execution_device="cpu")  # .dat memmaps
    files = {name: (folder / name).read_bytes() for name in os.listdir(folder)}
    ids = token_ids(2, 16)
    logits = offloaded(ids).logits
    with pytest.raises(ValueError, match=r"offloaded to disk.*prune\('<folder or repo>', save_dir="):
        _pruner(method="wanda").prune(offloaded, dataset=token_ids())
    assert {name: (folder / name).read_bytes() for name in os.listdir(folder)} == files
    assert torch.equal(offloaded(ids).logits, logits)


def test_disk_offload_from_a_device_map_is_refused(tmp_path):
    from transformers import AutoModelForCausalLM

    tiny_model("llama").save_pretrained(tmp_path / "src")
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                  "model.layers.1": "disk", "model.norm": "cpu", "lm_head": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "src", device_map=device_map,
                                                 offload_folder=tmp_path / "offload")
    before = snapshot(model)  # real tensors only; the disk part is the source safetensors file
    source = (tmp_path / "src" / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="offloaded to disk"):
        _pruner(method="wanda").prune(model, dataset=token_ids())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items() if not v.is_meta)
    assert (tmp_path / "src" / "model.safetensors").read_bytes() == source


def test_whole_model_offload_hook_is_refused():
    offloaded = cpu_offload(tiny_model("llama"), execution_device="cpu", preload_module_classes=["LlamaModel"])
    before = _stored(offloaded)
    with pytest.raises(ValueError, match="as a whole, decoder blocks included"):
        _pruner(method="wanda").prune(offloaded, dataset=token_ids())
    assert all(torch.equal(v, _stored(offloaded)[k]) for k, v in before.items())


def test_meta_model_without_hooks_is_still_refused():
    from transformers import AutoModelForCausalLM

    from tests.conftest import tiny_config

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(tiny_config("llama"))
    with pytest.raises(ValueError, match="init_empty_weights"):
        _pruner(method="wanda").prune(model, dataset=token_ids())


def test_device_other_than_the_hooks_execution_device_is_refused():
    offloaded = _cpu_offloaded(tiny_model("llama"))
    before = _stored(offloaded)
    with pytest.raises(ValueError, match="leave `device` unset"):
        _pruner(method="wanda", device="cuda").prune(offloaded, dataset=token_ids())
    assert all(torch.equal(v, _stored(offloaded)[k]) for k, v in before.items())
