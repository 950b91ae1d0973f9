"""Recipe vs run options: device, activation storage and progress bars are per run, never published; prune() of an
in-memory model never ignores an argument; the N:M notation warning."""

from __future__ import annotations

import json
import logging
import os

import pytest

from optimum_si import SIConfig, SIPruner
from optimum_si.config import RUN_OPTIONS

from .conftest import assert_unchanged, snapshot, tiny_model, token_ids


def test_run_options_are_not_part_of_the_recipe(tmp_path):
    config = SIConfig(method="magnitude", device="cpu", activation_storage="cpu", show_progress=False)
    assert not set(RUN_OPTIONS) & set(config.to_dict())
    model = tiny_model("llama")
    pruner = SIPruner(config)
    pruner.prune(model)
    out = pruner.save(model, str(tmp_path / "out"))
    with open(os.path.join(out, "si_config.json"), encoding="utf-8") as handle:
        assert not set(RUN_OPTIONS) & set(json.load(handle))
    assert "activation_storage" not in open(os.path.join(out, "README.md"), encoding="utf-8").read()


def test_old_recipe_with_run_options_still_loads(tmp_path, caplog):
    recipe = SIConfig(method="wanda").to_dict()
    recipe.update(device="cuda:3", activation_storage="disk", activation_dir="/scratch", show_progress=False)
    (tmp_path / "si_config.json").write_text(json.dumps(recipe), encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="optimum_si"):
        config = SIConfig.from_pretrained(str(tmp_path))
    assert config.device is None and config.activation_storage == "auto" and config.show_progress is True
    assert "run options" in caplog.text
    assert SIConfig.from_pretrained(str(tmp_path), device="cpu").device == "cpu"  # overrides still apply


def test_copies_keep_run_options():
    config = SIConfig(method="wanda", device="cpu", show_progress=False)
    assert SIPruner(config, sparsity=0.6).config.device == "cpu"
    assert config.replace(mask_structure="2:4").sparsity == 0.5


def test_prune_takes_run_options_for_one_call():
    pruner = SIPruner(method="wanda", num_samples=8, seqlen=32)
    pruner.prune(tiny_model("llama"), dataset=token_ids(), show_progress=False, device="cpu",
                 activation_storage="cpu")
    assert pruner.report is not None and pruner.report.sparsity == 0.5
    assert pruner.config.show_progress is True and pruner.config.device is None  # the pruner's recipe is untouched


def test_in_memory_prune_with_save_dir_saves(tmp_path):
    model = tiny_model("llama")
    out = tmp_path / "out"
    assert SIPruner(method="magnitude", show_progress=False).prune(model, save_dir=str(out)) is model
    assert (out / "si_config.json").is_file() and (out / "si_report.json").is_file()


@pytest.mark.parametrize("argument", [{"revision": "main"}, {"token": "x"}, {"overwrite": True}])
def test_in_memory_prune_refuses_streaming_arguments(argument):
    model = tiny_model("llama")
    before = snapshot(model)
    with pytest.raises(ValueError, match="only apply when streaming"):
        SIPruner(method="magnitude", show_progress=False).prune(model, **argument)
    assert_unchanged(model, before)


def test_nm_notation_warns_when_n_is_not_half_of_m(caplog, monkeypatch):
    monkeypatch.setattr("optimum_si.config._WARNED_NM", set())  # the warning is once per process
    with caplog.at_level(logging.WARNING, logger="optimum_si"):
        SIConfig(mask_structure="2:4")
        assert "llm-compressor" not in caplog.text
        config = SIConfig(mask_structure="1:4")
    assert config.sparsity == 0.75
    assert "keeps 1 of every 4" in caplog.text and "llm-compressor" in caplog.text


def test_a_run_with_run_options_replaces_which_model_the_report_describes(tmp_path):
    """prune(A); prune(B, device=...) must leave the pruner describing B: save(A) is refused, save(B) works."""
    first, second = tiny_model("llama"), tiny_model("llama", seed=1)
    pruner = SIPruner(method="wanda", sparsity=0.5, num_samples=4, seqlen=32, show_progress=False)
    pruner.prune(first, dataset=token_ids())
    pruner.prune(second, dataset=token_ids(), device="cpu")
    with pytest.raises(ValueError, match="another model"):
        pruner.save(first, tmp_path / "first")
    pruner.save(second, tmp_path / "second")
    assert (tmp_path / "second" / "si_config.json").is_file()
