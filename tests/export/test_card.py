"""The model card and recipe metadata: base model of local sources, results tables and model-index metadata."""

from __future__ import annotations

import json
import logging

import pytest
from huggingface_hub import ModelCard

from optimum_si import SIPruner
from optimum_si.export.card import resolve_base_model
from tests.conftest import tiny_model, token_ids

SHA = "0123456789abcdef0123456789abcdef01234567"


def test_resolve_base_model(tmp_path):
    snapshot = tmp_path / "hub" / "models--HuggingFaceTB--SmolLM2-135M" / "snapshots" / SHA
    assert resolve_base_model(str(snapshot)) == ("HuggingFaceTB/SmolLM2-135M", SHA)
    assert resolve_base_model(str(snapshot) + "/") == ("HuggingFaceTB/SmolLM2-135M", SHA)
    assert resolve_base_model(f"/cache/models--gpt2/snapshots/{SHA}") == ("gpt2", SHA)
    assert resolve_base_model("meta-llama/Llama-2-7b-hf") == ("meta-llama/Llama-2-7b-hf", None)
    for local in (str(tmp_path), "/data/models/my-llama", "./dense", None, ""):
        assert resolve_base_model(local) == (None, None)


def _pruned(name_or_path: str | None):
    model = tiny_model("llama")
    model.config._name_or_path = name_or_path
    pruner = SIPruner(method="magnitude", sparsity=0.5, show_progress=False)
    pruner.prune(model)
    return model, pruner


def _saved(folder):
    meta = json.loads((folder / "si_config.json").read_text())["meta"]
    return meta, (folder / "README.md").read_text(), ModelCard.load(folder / "README.md")


def test_a_local_source_never_leaks_its_path(tmp_path):
    local = tmp_path / "my-private-models" / "dense"
    local.mkdir(parents=True)
    model, pruner = _pruned(str(local))
    pruner.save(model, tmp_path / "out", plots=False)
    meta, text, card = _saved(tmp_path / "out")
    assert meta["base_model"] is None and card.data.base_model is None
    assert "my-private-models" not in text and "my-private-models" not in json.dumps(meta)
    # Titled after the folder's own name, the only part of the path the card shows.
    assert text.count("\n# dense-pruned\n") == 1 and "A local llama model pruned to 50 %" in text
    assert "<this" not in text and "reproduce" not in text
    assert 'folder = "."' in text and "restores that recipe (not these weights)" in text


def test_base_model_from_a_cache_snapshot_or_given(tmp_path):
    snapshot = tmp_path / "hub" / "models--alice--tiny-llama" / "snapshots" / SHA
    snapshot.mkdir(parents=True)
    model, pruner = _pruned(str(snapshot))
    pruner.save(model, tmp_path / "a", plots=False)
    meta, text, card = _saved(tmp_path / "a")
    assert (meta["base_model"], meta["base_revision"]) == ("alice/tiny-llama", SHA)
    assert card.data.base_model == "alice/tiny-llama" and "# tiny-llama-pruned" in text

    (tmp_path / "src").mkdir()
    model, pruner = _pruned(str(tmp_path / "src"))
    pruner.save(model, tmp_path / "b", plots=False, base_model="bob/dense-model",
                card_info={"repo_id": "bob/dense-model-wanda"})
    meta, text, card = _saved(tmp_path / "b")
    assert meta["base_model"] == "bob/dense-model" and card.data.base_model == "bob/dense-model"
    assert 'from_pretrained("bob/dense-model-wanda")' in text and "# dense-model-wanda" in text


def test_results_go_into_report_table_and_model_index(tmp_path):
    model, pruner = _pruned("alice/tiny-llama")
    dense = {"perplexity": {"wikitext2": 10.5}, "zero_shot": {"boolq": {"acc": 0.75, "acc_stderr": 0.01}}}
    pruned = {"perplexity": {"wikitext2": 12.25}, "zero_shot": {"boolq": {"acc": 0.625, "acc_stderr": 0.01}},
              "seqlen": 2048}
    pruner.save(model, tmp_path / "out", plots=False, results=pruned, dense_results=dense)
    report = json.loads((tmp_path / "out" / "si_report.json").read_text())
    assert report["dataset_perplexity"] == {"pruned": {"wikitext2": 12.25}, "dense": {"wikitext2": 10.5}}
    assert report["zero_shot"]["pruned"]["boolq"]["acc"] == 0.625 and report["evaluation_seqlen"] == 2048
    _meta, text, card = _saved(tmp_path / "out")
    assert "| wikitext2 perplexity | 10.5000 | 12.2500 |" in text
    assert "| boolq acc | 0.7500 | 0.6250 |" in text and "windows of\n2048 tokens" in text
    results = {(r.dataset_name, r.metric_type): r for r in card.data.eval_results}
    assert results[("wikitext2", "perplexity")].metric_value == 12.25
    assert results[("wikitext2", "perplexity")].dataset_type == "Salesforce/wikitext"
    assert results[("wikitext2", "perplexity")].dataset_split == "test"
    assert results[("boolq", "acc")].metric_value == 0.625
    assert card.data.model_name == "tiny-llama-pruned"
    with pytest.raises(ValueError, match="Unknown result keys"):
        pruner.report.add_results({"accuracy": 1.0})


def test_pruned_only_results_show_a_dash_for_dense(tmp_path):
    model, pruner = _pruned("alice/tiny-llama")
    pruner.save(model, tmp_path / "out", plots=False, results={"perplexity": {"c4": 20.0}})
    _meta, text, _card = _saved(tmp_path / "out")
    assert "| c4 perplexity | – | 20.0000 |" in text


def test_weights_source_is_stated_only_when_given(tmp_path):
    model, pruner = _pruned("alice/tiny-llama")
    pruner.save(model, tmp_path / "plain", plots=False)
    assert "Source weights" not in _saved(tmp_path / "plain")[1]
    pruner.save(model, tmp_path / "gguf", plots=False,
                card_info={"weights_source": "dequantised from a Q4_1 GGUF, not the Hub's weights."})
    _, text, card = _saved(tmp_path / "gguf")
    assert "**Source weights:** dequantised from a Q4_1 GGUF, not the Hub's weights." in text
    assert card.data.base_model == "alice/tiny-llama"


def test_a_model_without_a_name_is_titled_by_its_type(tmp_path):
    model, pruner = _pruned(None)
    pruner.save(model, tmp_path / "out", plots=False)
    assert "\n# Pruned llama\n" in _saved(tmp_path / "out")[1]


def test_magnitude_with_a_dataset_warns_once_and_the_card_says_no_calibration_data(tmp_path, caplog):
    model = tiny_model("llama")
    pruner = SIPruner(method="magnitude", sparsity=0.5, show_progress=False)
    with caplog.at_level(logging.WARNING):
        pruner.prune(model, dataset=token_ids(4, 16))
    warnings = [r.getMessage() for r in caplog.records if "calibration data" in r.getMessage()]
    assert warnings == ["magnitude uses no calibration data: the dataset given is ignored (the card says so)."]
    pruner.save(model, tmp_path / "out", plots=False)
    text = _saved(tmp_path / "out")[1]
    assert "| calibration | no calibration data (magnitude) |" in text and "0 windows x 0 tokens" not in text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        SIPruner(method="magnitude", show_progress=False).prune(tiny_model("llama"))  # no dataset: nothing to say
    assert not caplog.records


def test_the_si_section_leads_with_perplexity_and_names_its_held_out_windows(tmp_path):
    model = tiny_model("llama")
    pruner = SIPruner(method="wanda", sparsity=0.5, induction=True, num_samples=8, seqlen=16, show_progress=False)
    pruner.prune(model, dataset=token_ids(8, 16))
    pruner.save(model, tmp_path / "plain", plots=False)
    text = " ".join(_saved(tmp_path / "plain")[1].split())
    summary = pruner.report.induction_summary()
    assert "## Sparsity Induction" in text and "not trained on?" not in text
    assert f"Induction was kept in {summary['blocks_kept']} of 2 blocks" in text
    assert "held-out windows of the calibration text" in text and "judge it by an evaluation on your own text" in text
    assert "summed over blocks" not in text  # per-block losses stay in the details table, never a headline sum
    assert "<summary>Block losses on the held-out calibration windows</summary>" in text
    pruner.save(model, tmp_path / "measured", plots=False,
                card_info={"si_perplexity": {"without": 95.2234, "with": 88.4926, "on": "the Jargon File"}})
    text = " ".join(_saved(tmp_path / "measured")[1].split())
    section = text[text.index("## Sparsity Induction"):]
    assert section.startswith("## Sparsity Induction Perplexity on the Jargon File: **95.22** with wanda alone, "
                              "**88.49** with Sparsity Induction.")
    assert "judge it by an evaluation" not in section
