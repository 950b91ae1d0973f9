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


# --------------------------------------------------------------------------- method knobs (issue 12)

KNOB_VALUES = {"ria": {"ria_a": 1.0, "ria_per_row": True},
               "zpruner": {"zpruner_exponent": 1.0, "zpruner_per_row": True},
               "alps": {"alps_rho0": 1.0, "alps_max_iter": 50, "alps_update_every": 5, "alps_min_iter": 10,
                        "alps_pcg_iters": 0, "alps_pcg_rtol": 0.0, "alps_dampening": 0.05}}


def test_knob_defaults_are_the_authors_and_the_methods_own():
    from optimum_si import alps
    from optimum_si.config import METHOD_KNOBS
    from optimum_si.methods import get_method

    config = SIConfig()
    assert (config.ria_a, config.ria_per_row, config.zpruner_exponent, config.zpruner_per_row) == (0.5, False, 1.5, False)
    assert (config.alps_rho0, config.alps_max_iter, config.alps_update_every, config.alps_min_iter,
            config.alps_pcg_iters, config.alps_pcg_rtol, config.alps_dampening) == (
        alps.DEFAULT_RHO0, alps.DEFAULT_MAX_ITER, alps.DEFAULT_UPDATE_EVERY, alps.DEFAULT_MIN_ITER,
        alps.DEFAULT_PCG_ITERS, alps.DEFAULT_PCG_RTOL, alps.DEFAULT_DAMPENING) == (0.1, 300, 3, 30, 10, 1e-4, 0.01)
    # Every knob field belongs to exactly the built-in that reads it, and its default is that method's own value.
    assert {name: method for method in KNOB_VALUES for name in get_method(method).config_fields} == METHOD_KNOBS
    for name, method in METHOD_KNOBS.items():
        registered = get_method(method)
        assert getattr(registered, registered.config_fields[name]) == getattr(config, name), name


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "ria", "ria_a": -0.5}, r"ria_a must be a finite number >= 0, got -0.5 \(the authors' code uses 0.5\)"),
        ({"method": "ria", "ria_a": float("inf")}, "ria_a must be a finite number"),
        ({"method": "ria", "ria_a": "0.5"}, "ria_a must be a finite number"),
        ({"method": "ria", "ria_per_row": 1}, "ria_per_row must be True or False"),
        ({"method": "zpruner", "zpruner_exponent": float("nan")}, "zpruner_exponent must be a finite number >= 0"),
        ({"method": "alps", "alps_rho0": 0}, r"alps_rho0 must be a finite number > 0, got 0 \(the authors' code uses 0.1\)"),
        ({"method": "alps", "alps_max_iter": 0}, "alps_max_iter must be an integer >= 1"),
        ({"method": "alps", "alps_max_iter": 2.5}, "alps_max_iter must be an integer >= 1"),
        ({"method": "alps", "alps_max_iter": True}, "alps_max_iter must be an integer >= 1"),
        ({"method": "alps", "alps_update_every": 0}, "alps_update_every must be an integer >= 1"),
        ({"method": "alps", "alps_min_iter": -1}, "alps_min_iter must be an integer >= 0"),
        ({"method": "alps", "alps_pcg_iters": -1}, "alps_pcg_iters must be an integer >= 0"),
        ({"method": "alps", "alps_pcg_rtol": -1e-4}, "alps_pcg_rtol must be a finite number >= 0"),
        ({"method": "alps", "alps_dampening": 0.0}, "alps_dampening must be a finite number > 0"),
    ],
)
def test_invalid_knobs_name_the_field_and_the_default(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SIConfig(**kwargs)


@pytest.mark.parametrize("method, knob, value", [("wanda", "ria_a", 1.0), ("zpruner", "ria_per_row", True),
                                                 ("sparsegpt", "alps_rho0", 1.0), ("ria", "zpruner_exponent", 2.0),
                                                 ("magnitude", "alps_pcg_iters", 0)])
def test_a_knob_of_another_method_is_refused(method, knob, value):
    with pytest.raises(ValueError, match=rf"{knob}={value!r} is a setting of method=.*, but this recipe uses "
                                         rf"method='{method}', which does not read it; remove `{knob}`"):
        SIConfig(method=method, **{knob: value})
    # At its default it says nothing, so a recipe that spells out every field still loads.
    assert SIConfig(method=method, **{knob: getattr(SIConfig(), knob)}).method == method
    # Switching the method of a recipe that set the knob drops it (a setting of the old method, not a mistake), as a
    # new mask_structure drops the old sparsity; given together with the new method it is still refused.
    owner = [m for m, knobs in KNOB_VALUES.items() if knob in knobs][0]
    recipe = SIConfig(method=owner, **{knob: value})
    switched = recipe.replace(method=method)
    assert switched.method == method and getattr(switched, knob) == getattr(SIConfig(), knob)
    assert SIConfig.from_dict(recipe.to_dict(), method=method) == switched
    with pytest.raises(ValueError, match="does not read it"):
        recipe.replace(method=method, **{knob: value})
    with pytest.raises(ValueError, match="does not read it"):
        SIConfig.from_dict(recipe.to_dict(), method=method, **{knob: value})


@pytest.mark.parametrize("method", list(KNOB_VALUES))
def test_knobs_configure_the_method_without_touching_the_registered_one(method):
    from optimum_si.methods import get_method

    registered = get_method(method)
    before = dict(vars(registered))
    assert SIConfig(method=method).pruning_method is registered  # defaults: the registered object itself
    configured = SIConfig(method=method, **KNOB_VALUES[method]).pruning_method
    assert configured is not registered and type(configured) is type(registered) and configured.name == method
    for name, value in KNOB_VALUES[method].items():
        assert getattr(configured, registered.config_fields[name]) == value, name
    assert vars(registered) == before


def test_a_registered_variant_reads_its_class_knobs():
    from optimum_si.methods import register_method
    from optimum_si.methods.ria import RIA

    register_method(RIA(per_row=True, activation_exponent=0.25, name="ria-row-knobs"), overwrite=True)
    assert SIConfig(method="ria-row-knobs").pruning_method.activation_exponent == 0.25  # the variant's own value
    configured = SIConfig(method="ria-row-knobs", ria_a=1.0).pruning_method
    assert (configured.activation_exponent, configured.per_row, configured.name) == (1.0, True, "ria-row-knobs")
    with pytest.raises(ValueError, match="does not read it"):
        SIConfig(method="ria-row-knobs", zpruner_exponent=1.0)


@pytest.mark.parametrize("method", list(KNOB_VALUES))
def test_knobs_round_trip_and_only_the_methods_own_are_written(method, tmp_path):
    from optimum_si.config import METHOD_KNOBS

    config = SIConfig(method=method, **KNOB_VALUES[method])
    data = json.loads(config.to_json_string())
    assert {k for k in data if k in METHOD_KNOBS} == set(KNOB_VALUES[method])
    assert SIConfig.from_dict(data) == config
    config.save_pretrained(tmp_path)
    assert SIConfig.from_pretrained(tmp_path) == config
    assert not set(METHOD_KNOBS) & set(SIConfig(method="wanda").to_dict())  # a Wanda recipe reads as it always did


def test_recipes_written_before_the_knobs_load_with_the_authors_defaults(tmp_path):
    old = {"method": "alps", "sparsity": 0.7, "mask_structure": "unstructured", "format_version": 1,
           "meta": {"optimum_si": "0.1.0"}}
    (tmp_path / CONFIG_NAME).write_text(json.dumps(old))
    config = SIConfig.from_pretrained(tmp_path)
    assert (config.alps_rho0, config.alps_max_iter) == (0.1, 300)
    assert SIConfig.from_pretrained(tmp_path, alps_max_iter=40).pruning_method.max_iter == 40


def test_cli_flags_for_the_knobs_come_from_the_fields(tmp_path):
    from optimum_si.cli import UsageError, _config_from_args, build_parser
    from optimum_si.config import METHOD_KNOBS

    parser = build_parser()
    help_text = parser._subparsers._group_actions[0].choices["prune"].format_help()
    for name in METHOD_KNOBS:
        assert "--" + name.replace("_", "-") in help_text, name
    assert "--no-ria-per-row" in help_text and "--zpruner-per-row" in help_text
    base = ["prune", "--model", "m", "--output", "o"]
    args = parser.parse_args([*base, "--method", "ria", "--ria-a", "1", "--ria-per-row"])
    config = _config_from_args(args)
    assert (config.ria_a, config.ria_per_row) == (1.0, True) and config.pruning_method.per_row
    args = parser.parse_args([*base, "--method", "alps", "--alps-max-iter", "40", "--alps-pcg-rtol", "0"])
    assert _config_from_args(args).pruning_method.max_iter == 40
    recipe = tmp_path / "alps.json"
    SIConfig(method="alps", alps_max_iter=40).save_pretrained(tmp_path)
    (tmp_path / CONFIG_NAME).rename(recipe)
    switched = _config_from_args(parser.parse_args([*base, "--recipe", str(recipe), "--method", "sparsegpt"]))
    assert (switched.method, switched.alps_max_iter) == ("sparsegpt", 300)
    with pytest.raises(UsageError, match=r"--ria-a 1.0 is a setting of --method 'ria', but this recipe uses "
                                         r"--method 'wanda', which does not read it; remove --ria-a"):
        _config_from_args(parser.parse_args([*base, "--method", "wanda", "--ria-a", "1"]))
