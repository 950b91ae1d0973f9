import json
import logging

import pytest

from optimum_si import SIConfig
from optimum_si.config import CONFIG_NAME


def test_defaults_and_nm_sparsity():
    assert SIConfig().sparsity == 0.5
    assert SIConfig(mask_structure="2:4").n_m == (2, 4)
    assert SIConfig(mask_structure="1:4").sparsity == 0.75
    assert SIConfig(mask_structure="0:0").mask_structure == "unstructured"
    assert SIConfig(method="SparseGPT").method == "sparsegpt"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "obs"}, "method must be one of"),
        ({"sparsity": 0.0}, r"sparsity must be in \(0, 1\)"),
        ({"sparsity": 1.0}, r"sparsity must be in \(0, 1\)"),
        ({"sparsity": "half"}, "sparsity must be a number"),
        ({"mask_structure": "4:2"}, "0 < N < M"),
        ({"mask_structure": "2-4"}, "with a colon"),
        ({"mask_structure": "0:4"}, "0 < N < M"),
        ({"mask_structure": "2:4", "sparsity": 0.6}, "contradicts"),
        ({"num_samples": 0}, "num_samples must be a positive integer"),
        ({"seqlen": -1}, "seqlen must be a positive integer"),
        ({"dampening_frac": 0}, "dampening_frac"),
        ({"targets": []}, "targets must name at least one pattern"),
        ({"ignore": [3]}, "ignore must be a list"),
        ({"induction": "yes"}, "induction must be True or False"),
    ],
)
def test_invalid_values_name_the_allowed_ones(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SIConfig(**kwargs)


def test_dict_round_trip_and_version_stamp():
    config = SIConfig(method="sparsegpt", mask_structure="4:8", targets=["*mlp*"], ignore=["*down_proj"], seed=3)
    data = config.to_dict()
    assert set(data["meta"]) == {"optimum_si", "transformers", "torch"}
    assert SIConfig.from_dict(json.loads(json.dumps(data))) == config


def test_unknown_keys_error_for_users_warn_for_files(tmp_path, caplog):
    with pytest.raises(ValueError, match="Unknown SIConfig field"):
        SIConfig.from_dict({"method": "wanda", "sparsityy": 0.5})
    data = SIConfig().to_dict()
    data["future_knob"] = 1
    (tmp_path / CONFIG_NAME).write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        loaded = SIConfig.from_pretrained(tmp_path)
    assert loaded == SIConfig()
    assert "future_knob" in caplog.text


def test_save_and_load_with_overrides(tmp_path):
    SIConfig(method="wanda", mask_structure="2:4").save_pretrained(tmp_path)
    assert SIConfig.from_pretrained(tmp_path).mask_structure == "2:4"
    overridden = SIConfig.from_pretrained(tmp_path, mask_structure="unstructured", sparsity=0.6)
    assert (overridden.mask_structure, overridden.sparsity) == ("unstructured", 0.6)
    with pytest.raises(ValueError, match="Unknown SIConfig field"):
        SIConfig.from_pretrained(tmp_path, sparsiti=0.6)


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(OSError, match="has no si_config.json"):
        SIConfig.from_pretrained(tmp_path)
    (tmp_path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="corrupted"):
        SIConfig.from_pretrained(tmp_path)
    with pytest.raises(OSError, match="not a local folder and downloading it from the Hub at http"):
        SIConfig.from_pretrained(str(tmp_path / "missing-repo-name"))


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\xff\xfe{\x00}\x00", "is not UTF-8 text"),
        (b"[" * 100000 + b"]" * 100000, "nests JSON too deeply"),
        (b'"just a string"', "not a recipe object"),
        (b'{"method": "wanda", "format_version": 2}', r"format 2.*pip install -U optimum-si"),
        (b'{"method": "wanda", "format_version": "1"}', "format_version must be a positive integer"),
        (b'{"method": "wanda", "meta": "garbage"}', None),
    ],
)
def test_corrupt_or_future_recipe_files_name_the_file(tmp_path, content, message):
    (tmp_path / CONFIG_NAME).write_bytes(content)
    if message is None:
        assert SIConfig.from_pretrained(tmp_path).method == "wanda"
        return
    with pytest.raises(ValueError, match=message) as info:
        SIConfig.from_pretrained(tmp_path)
    if "format" not in message:
        assert CONFIG_NAME in str(info.value)


def test_future_format_names_the_writer_and_the_upgrade():
    data = {"method": "wanda", "format_version": 7, "meta": {"optimum_si": "9.0.0"}, "future_knob": 1}
    with pytest.raises(ValueError, match=r"optimum-si 9\.0\.0 in recipe format 7.*pip install -U optimum-si"):
        SIConfig.from_dict(data, strict=False)


@pytest.mark.parametrize("num_samples, seqlen", [(10**12, 2048), (2**31, 2), (2**20, 2**12)])
def test_absurd_calibration_sizes_are_refused_at_once(num_samples, seqlen):
    with pytest.raises(ValueError, match="calibration tokens, more than any machine can hold"):
        SIConfig(num_samples=num_samples, seqlen=seqlen)


@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1, 1.5])
def test_seed_outside_torch_range_is_refused(seed):
    with pytest.raises(ValueError, match="seed must be an integer in"):
        SIConfig(seed=seed)


def test_choices_are_str_enums_that_read_as_strings():
    import json

    from optimum_si.choices import ActivationStorage, InductionTarget
    from optimum_si.config import CHOICES

    config = SIConfig(induction_target="global", activation_storage=ActivationStorage.CPU)
    assert config.induction_target is InductionTarget.GLOBAL and config.induction_target == "global"
    assert f"{config.induction_target}" == "global" and str(config.activation_storage) == "cpu"
    assert json.loads(json.dumps(config.to_dict()))["induction_target"] == "global"
    assert CHOICES["induction_optimizer"] == ("adam", "damped-adam")
    with pytest.raises(ValueError, match="induction_target must be one of 'local', 'global'"):
        SIConfig(induction_target="far")
