"""Recipe vs run options: device, activation storage and progress bars are per run, never published; prune() of an
in-memory model never ignores an argument; the N:M notation warning."""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import pytest

from optimum_si import RunOptions, SIConfig, SIPruner
from tests.conftest import assert_unchanged, snapshot, tiny_model, token_ids

RUN_OPTIONS = ("device", "activation_storage", "activation_dir", "show_progress")


def test_run_options_are_not_part_of_the_recipe(tmp_path):
    assert RunOptions.field_names() == list(RUN_OPTIONS)
    assert not set(RUN_OPTIONS) & {f.name for f in dataclasses.fields(SIConfig)}
    model = tiny_model("llama")
    pruner = SIPruner(SIConfig(method="magnitude"), device="cpu", activation_storage="cpu", show_progress=False)
    assert pruner.options == RunOptions(device="cpu", activation_storage="cpu", show_progress=False)
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
    assert config == SIConfig(method="wanda")
    assert "run options" in caplog.text
    # Run options given with a loaded recipe go to the pruner, not the recipe.
    pruner = SIPruner.from_pretrained(str(tmp_path), device="cpu", sparsity=0.6)
    assert pruner.options.device == "cpu" and pruner.config.sparsity == 0.6


def test_pruners_keep_their_run_options():
    pruner = SIPruner(SIConfig(method="wanda"), device="cpu", show_progress=False)
    assert SIPruner(pruner.config, options=pruner.options, sparsity=0.6).options.device == "cpu"
    with pytest.raises(ValueError, match="device="):
        RunOptions(device="meta")
    with pytest.raises(TypeError, match="options must be a RunOptions"):
        SIPruner(options={"device": "cpu"})


def test_prune_takes_run_options_for_one_call():
    pruner = SIPruner(method="wanda", num_samples=8, seqlen=32)
    pruner.prune(tiny_model("llama"), dataset=token_ids(), show_progress=False, device="cpu",
                 activation_storage="cpu")
    assert pruner.report is not None and pruner.report.sparsity == 0.5
    assert pruner.options == RunOptions()  # the pruner's own options are untouched


def test_in_memory_prune_with_save_dir_saves(tmp_path):
    model = tiny_model("llama")
    out = tmp_path / "out"
    assert SIPruner(method="magnitude", show_progress=False).prune(model, save_dir=str(out)) is model
    assert (out / "si_config.json").is_file() and (out / "si_report.json").is_file()


@pytest.mark.parametrize("argument, message", [({"revision": "main"}, "only apply when streaming"),
                                               ({"token": "x"}, "only apply when streaming"),
                                               ({"overwrite": True}, "overwrite applies to save_dir")])
def test_in_memory_prune_refuses_streaming_arguments(argument, message):
    model = tiny_model("llama")
    before = snapshot(model)
    with pytest.raises(ValueError, match=message):
        SIPruner(method="magnitude", show_progress=False).prune(model, **argument)
    assert_unchanged(model, before)


def test_nm_notation_warns_when_n_is_not_half_of_m(caplog, monkeypatch):
    monkeypatch.setattr("optimum_si.recipe.config._WARNED_NM", set())  # the warning is once per process
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
