"""`device` is checked up front (spelling when the config is built, existence when a prune starts), and calibration
data that cannot rank weights is refused: in every case before a weight is touched."""

import json

import pytest
import torch

from optimum_si import InductionConfig, RunOptions, SIConfig, SIPruner
from optimum_si.induction.support import check_training_precision
from optimum_si.modeling.devices import check_device_available, check_runtime, validate_device
from optimum_si.recipe.config import CONFIG_NAME
from tests.conftest import assert_unchanged, snapshot, tiny_model, token_ids


@pytest.mark.parametrize("device, expected", [("cpu", "cpu"), ("CUDA", "cuda"), ("cuda:1", "cuda:1"), (0, "cuda:0"),
                                              (torch.device("cpu"), "cpu"), ("mps", "mps"), (None, None)])
def test_valid_spellings_are_normalised(device, expected):
    assert validate_device(device) == expected


@pytest.mark.parametrize("device, message", [
    ("meta", "meta device holds no data"), (torch.device("meta"), "meta device holds no data"),
    ("gpu", "is not a device"), ("cuda:x", "is not a device"), ("", "is not a device"), (True, "is not a device"),
])
def test_meta_and_unknown_devices_are_refused_in_the_run_options(device, message):
    with pytest.raises(ValueError, match=message):
        RunOptions(device=device)
    with pytest.raises(ValueError, match=message):
        SIPruner(device=device)


def test_device_in_a_recipe_file_is_ignored_but_meta_given_to_a_run_is_refused(tmp_path):
    # The device is a run option, not part of a recipe: an old recipe's device (even 'meta') is dropped on load.
    (tmp_path / CONFIG_NAME).write_text(json.dumps({"method": "magnitude", "device": "meta"}))
    assert SIConfig.from_pretrained(tmp_path) == SIConfig(method="magnitude")
    with pytest.raises(ValueError, match="meta device"):
        SIPruner.from_pretrained(tmp_path, device="meta")


def test_meta_set_after_construction_is_refused_before_touching_weights():
    model = tiny_model("llama")
    before = snapshot(model)
    pruner = SIPruner(method="magnitude", show_progress=False)
    pruner.options.device = "meta"
    with pytest.raises(ValueError, match="meta device"):
        pruner.prune(model)
    assert_unchanged(model, before)


@pytest.mark.parametrize("device, label", [("cuda", "CUDA"), ("cuda:0", "CUDA"), ("mps", "MPS"), ("xpu", "XPU")])
def test_missing_accelerator_is_refused_before_touching_weights(monkeypatch, device, label):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    if hasattr(torch, "xpu"):
        monkeypatch.setattr(torch.xpu, "is_available", lambda: False)
    model = tiny_model("llama")
    before = snapshot(model)
    with pytest.raises(ValueError, match=f"no {label}.* device here; leave `device` unset or use 'cpu'"):
        SIPruner(method="wanda", device=device, num_samples=2, seqlen=16, show_progress=False).prune(
            model, dataset=token_ids(2, 16))
    assert_unchanged(model, before)


def test_device_index_beyond_the_count(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    check_device_available("cuda:1")
    with pytest.raises(ValueError, match="has 2 CUDA device"):
        check_device_available("cuda:2")


def test_streaming_checks_the_device_before_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA device here"):
        SIPruner(method="magnitude", device="cuda").prune(str(tmp_path / "not-read"), save_dir=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_activation_dir_is_checked(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        check_runtime(RunOptions(activation_storage="disk", activation_dir=str(a_file)))
    with pytest.raises(ValueError, match="cannot be written"):
        check_runtime(RunOptions(activation_storage="disk", activation_dir=str(a_file / "below")))
    check_runtime(RunOptions(activation_storage="disk", activation_dir=str(tmp_path / "new" / "folder")))
    assert not (tmp_path / "new").exists()  # checking creates nothing


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_all_zero_calibration_inputs_are_refused_naming_the_layer(method):
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[0].post_attention_layernorm.weight.zero_()  # gate/up/down of block 0 see only zeros
    before = snapshot(model)
    pruner = SIPruner(method=method, num_samples=2, seqlen=16, show_progress=False)
    with pytest.raises(ValueError, match=r"Block 0: every calibration input of mlp\.(gate|up)_proj is zero.*ignore="):
        pruner.prune(model, dataset=token_ids(2, 16))
    assert_unchanged(model, before)
    # The fix the message names works.
    SIPruner(method=method, num_samples=2, seqlen=16, show_progress=False,
             ignore=["model.layers.0.mlp.*"]).prune(model, dataset=token_ids(2, 16))


def test_bfloat16_training_is_refused_on_a_gpu_without_bf16(monkeypatch):
    config = InductionConfig(precision="bfloat16")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(ValueError, match="no bfloat16 support; use precision='float32'"):
        check_training_precision(config, "cuda:0")
    check_training_precision(config, "cpu")  # CPU autocast always has bf16
    check_training_precision(InductionConfig(), "cuda:0")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    check_training_precision(config, "cuda:0")
