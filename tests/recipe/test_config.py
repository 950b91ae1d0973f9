import dataclasses
import json
import logging

import pytest

from optimum_si import SIConfig
from optimum_si.recipe.config import CONFIG_NAME


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
        ({"method": "sparsegpt", "method_args": {"dampening_frac": 0}}, r"SparseGPTConfig\.dampening_frac"),
        ({"targets": []}, "targets must name at least one pattern"),
        ({"ignore": [3]}, "ignore must be a list"),
        ({"induction": "yes"}, "induction must be True, False, an InductionConfig"),
        ({"device": "cpu"}, "device is a run option"),
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
        (b'{"method": "wanda", "format_version": 3}', r"format 3.*pip install -U optimum-si"),
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
    from optimum_si.induction.config import InductionOptimizer, InductionTarget
    from optimum_si.recipe import RunOptions
    from optimum_si.recipe.run_options import ActivationStorage

    config = SIConfig(induction={"target": "global"})
    assert config.induction.target is InductionTarget.GLOBAL and config.induction.target == "global"
    assert f"{config.induction.target}" == "global"
    assert json.loads(json.dumps(config.to_dict()))["induction"]["target"] == "global"
    assert [m.value for m in InductionOptimizer] == ["adam", "damped-adam"]
    assert str(RunOptions(activation_storage=ActivationStorage.CPU).activation_storage) == "cpu"
    with pytest.raises(ValueError, match="InductionConfig.target must be one of 'local', 'global'"):
        SIConfig(induction={"target": "far"})


# --------------------------------------------------------------------------- the nested configs

KNOB_VALUES = {"ria": {"a": 1.0, "per_row": True},
               "zpruner": {"exponent": 1.0, "per_row": True},
               "alps": {"rho0": 1.0, "max_iter": 50, "update_every": 5, "min_iter": 10, "pcg_iters": 0,
                        "pcg_rtol": 0.0, "dampening": 0.05},
               "sparsegpt": {"dampening_frac": 0.05, "block_size": 64}}


def test_the_recipe_holds_what_every_run_has_and_nests_the_rest():
    from optimum_si.induction.config import InductionConfig
    from optimum_si.methods.alps import ALPSConfig
    from optimum_si.methods.base import MethodConfig
    from optimum_si.planning.config import OWLConfig

    config = SIConfig()
    assert len(dataclasses.fields(SIConfig)) <= 17
    assert config.induction is None and config.profile_args is None
    assert type(config.method_args) is MethodConfig and config.method_args.to_dict() == {}
    assert SIConfig(induction=True).induction == InductionConfig()
    assert SIConfig(induction={"epochs": 2}).induction == InductionConfig(epochs=2)
    assert SIConfig(sparsity_profile="owl").profile_args == OWLConfig(m=5.0, lam=0.08)
    alps = SIConfig(method="alps", method_args={"max_iter": 40})
    assert alps.method_args == ALPSConfig(max_iter=40) and alps.pruning_method.config.max_iter == 40
    assert SIConfig(method="alps", method_args=ALPSConfig(max_iter=40)) == alps


def test_knob_defaults_are_the_authors_and_the_methods_own():
    from optimum_si.methods import get_method
    from optimum_si.methods.alps import solver as alps

    assert SIConfig(method="ria").method_args.to_dict() == {"a": 0.5, "per_row": False}
    assert SIConfig(method="zpruner").method_args.to_dict() == {"exponent": 1.5, "per_row": False}
    assert SIConfig(method="sparsegpt").method_args.to_dict() == {"dampening_frac": 0.01, "block_size": 128}
    assert tuple(SIConfig(method="alps").method_args.to_dict().values()) == (
        alps.DEFAULT_RHO0, alps.DEFAULT_MAX_ITER, alps.DEFAULT_UPDATE_EVERY, alps.DEFAULT_MIN_ITER,
        alps.DEFAULT_PCG_ITERS, alps.DEFAULT_PCG_RTOL, alps.DEFAULT_DAMPENING) == (0.1, 300, 3, 30, 10, 1e-4, 0.01)
    for method in KNOB_VALUES:
        assert SIConfig(method=method).method_args == get_method(method).config


@pytest.mark.parametrize(
    "method, args, message",
    [
        ("ria", {"a": -0.5}, r"RIAConfig.a must be a number >= 0, got -0.5 \(the authors' code uses 0.5\)"),
        ("ria", {"a": float("inf")}, "RIAConfig.a must be a number"),
        ("ria", {"a": "0.5"}, "RIAConfig.a must be a number"),
        ("ria", {"per_row": 1}, "RIAConfig.per_row must be True or False"),
        ("zpruner", {"exponent": float("nan")}, "ZPrunerConfig.exponent must be a number >= 0"),
        ("alps", {"rho0": 0}, r"ALPSConfig.rho0 must be a number > 0, got 0 \(the authors' code uses 0.1\)"),
        ("alps", {"max_iter": 0}, "ALPSConfig.max_iter must be a positive integer"),
        ("alps", {"max_iter": 2.5}, "ALPSConfig.max_iter must be a positive integer"),
        ("alps", {"max_iter": True}, "ALPSConfig.max_iter must be a positive integer"),
        ("alps", {"min_iter": -1}, "ALPSConfig.min_iter must be an integer >= 0"),
        ("alps", {"pcg_rtol": -1e-4}, "ALPSConfig.pcg_rtol must be a number >= 0"),
        ("alps", {"dampening": 0.0}, "ALPSConfig.dampening must be a number > 0"),
        ("sparsegpt", {"block_size": 0}, "SparseGPTConfig.block_size must be a positive integer"),
        ("alps", {"rho": 1.0}, "method_args of method='alps' has unknown field.s. rho; valid fields: rho0, max_iter"),
        ("wanda", {"a": 1.0}, "method_args of method='wanda' has unknown field.s. a; valid fields: none"),
    ],
)
def test_invalid_knobs_name_the_field_and_the_default(method, args, message):
    with pytest.raises(ValueError, match=message):
        SIConfig(method=method, method_args=args)


def test_method_args_of_another_method_are_refused():
    from optimum_si.methods.alps import ALPSConfig

    with pytest.raises(ValueError, match="method_args of method='ria' must be a RIAConfig or a dict of its fields, "
                                         "got ALPSConfig"):
        SIConfig(method="ria", method_args=ALPSConfig())


def test_sparsegpt_block_size_must_fit_the_nm_groups():
    with pytest.raises(ValueError, match=r"block_size \(6\) must be a multiple of M=4"):
        SIConfig(method="sparsegpt", mask_structure="2:4", method_args={"block_size": 6})


@pytest.mark.parametrize("method", list(KNOB_VALUES))
def test_switching_the_method_takes_the_new_methods_defaults(method, caplog):
    recipe = SIConfig(method=method, method_args=KNOB_VALUES[method])
    with caplog.at_level(logging.INFO, logger="optimum_si"):
        switched = recipe.replace(method="wanda")
    assert switched.method_args.to_dict() == {} and "does not read the settings" in caplog.text
    assert SIConfig.from_dict(recipe.to_dict(), method="wanda") == switched
    assert recipe.replace(sparsity=0.6).method_args == recipe.method_args  # other changes keep the knobs


@pytest.mark.parametrize("method", list(KNOB_VALUES))
def test_knobs_configure_the_method_without_touching_the_registered_one(method):
    from optimum_si.methods import get_method

    registered = get_method(method)
    before = registered.config.to_dict()
    assert SIConfig(method=method).pruning_method is registered  # defaults: the registered object itself
    configured = SIConfig(method=method, method_args=KNOB_VALUES[method]).pruning_method
    assert configured is not registered and type(configured) is type(registered) and configured.name == method
    assert configured.config.to_dict() == {**before, **KNOB_VALUES[method]}
    assert registered.config.to_dict() == before


def test_a_registered_variant_reads_its_own_knobs():
    from optimum_si.methods import register_method
    from optimum_si.methods.ria import RIA

    register_method(RIA(per_row=True, a=0.25, name="ria-row-knobs"), overwrite=True)
    assert SIConfig(method="ria-row-knobs").pruning_method.activation_exponent == 0.25  # the variant's own value
    configured = SIConfig(method="ria-row-knobs", method_args={"a": 1.0}).pruning_method
    assert (configured.activation_exponent, configured.per_row, configured.name) == (1.0, True, "ria-row-knobs")


@pytest.mark.parametrize("method", list(KNOB_VALUES))
def test_nested_recipes_round_trip(method, tmp_path):
    config = SIConfig(method=method, method_args=KNOB_VALUES[method], induction={"epochs": 2},
                      sparsity_profile="owl" if method != "sparsegpt" else "uniform")
    data = json.loads(config.to_json_string())
    assert data["method_args"] == {**SIConfig(method=method).method_args.to_dict(), **KNOB_VALUES[method]}
    assert data["induction"]["epochs"] == 2 and data["format_version"] == 2
    assert SIConfig.from_dict(data) == config
    config.save_pretrained(tmp_path)
    assert SIConfig.from_pretrained(tmp_path) == config


# --------------------------------------------------------------------------- recipe format 1 (flat knobs)

def test_format_1_recipes_load_upgraded_with_a_note(tmp_path, caplog):
    """A recipe written by optimum-si 0.1 (every knob a flat field, the run options filtered out)."""
    old = {"method": "alps", "sparsity": 0.7, "mask_structure": "unstructured", "induction": True, "num_samples": 32,
           "seqlen": 512, "seed": 0, "batch_size": 1, "dampening_frac": 0.01, "block_size": 128,
           "alps_rho0": 0.2, "alps_max_iter": 40, "sparsity_profile": "owl", "owl_m": 3.0, "owl_lambda": 0.1,
           "targets": None, "ignore": [], "block_name": None, "true_sequential": False, "expert_calibration": "routed",
           "induction_epochs": 2, "induction_lr": 0.005, "induction_target": "local",
           "format_version": 1, "meta": {"optimum_si": "0.1.0"}}
    (tmp_path / CONFIG_NAME).write_text(json.dumps(old))
    with caplog.at_level(logging.INFO, logger="optimum_si"):
        config = SIConfig.from_pretrained(tmp_path)
    assert "recipe format 1" in caplog.text
    assert (config.method_args.rho0, config.method_args.max_iter, config.method_args.pcg_iters) == (0.2, 40, 10)
    assert (config.profile_args.m, config.profile_args.lam) == (3.0, 0.1)
    assert (config.induction.epochs, config.induction.lr, config.induction.target) == (2, 0.005, "local")
    # SparseGPT's knobs, written for every method by format 1, did nothing for ALPS: dropped.
    assert "dampening_frac" not in json.dumps(config.to_dict())
    # Flat overrides apply to the nested configs they belong to.
    assert SIConfig.from_pretrained(tmp_path, alps_max_iter=30).method_args.max_iter == 30


def test_format_1_knob_names_still_work_as_arguments():
    from optimum_si import SIPruner

    config = SIConfig(method="ria", ria_a=1.0, induction=True, induction_epochs=2)
    assert config == SIConfig(method="ria", method_args={"a": 1.0}, induction={"epochs": 2})
    assert SIPruner(method="sparsegpt", dampening_frac=0.05).config.method_args.dampening_frac == 0.05
    assert SIConfig(method="ria", ria_a=1.0).replace(ria_per_row=True).method_args.to_dict() == {"a": 1.0,
                                                                                                 "per_row": True}
    with pytest.raises(ValueError, match=r"ria_a=1.0 is a setting of RIAConfig, which this recipe does not use "
                                         r"\(method='wanda'\); remove it"):
        SIConfig(method="wanda", ria_a=1.0)
    with pytest.raises(ValueError, match="induction_lr=0.1 is a setting of InductionConfig, which this recipe does not "
                                         "use"):
        SIConfig(induction_lr=0.1)
    assert SIConfig(method="wanda", ria_a=0.5).method == "wanda"  # a flat knob at its default says nothing


def test_run_options_are_not_part_of_a_recipe(tmp_path, caplog):
    with pytest.raises(ValueError, match=r"device is a run option, not part of a recipe: pass device=\.\.\. to "
                                         r"SIPruner\(\.\.\.\) or prune\(\.\.\.\)"):
        SIConfig(device="cpu")
    assert "device" not in SIConfig().to_dict()
    data = {**SIConfig().to_dict(), "device": "cuda:1", "show_progress": False}
    (tmp_path / CONFIG_NAME).write_text(json.dumps(data))
    with caplog.at_level(logging.INFO, logger="optimum_si"):
        assert SIConfig.from_pretrained(tmp_path) == SIConfig()
    assert "run options" in caplog.text


def test_the_recipe_and_its_configs_import_without_torch():
    import subprocess
    import sys

    code = ("import sys; import optimum_si.recipe, optimum_si.methods, optimum_si.cli.flags; "
            "from optimum_si import SIConfig; SIConfig(method='alps', induction=True, sparsity_profile='owl'); "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
