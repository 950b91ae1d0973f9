"""Results recorded into a saved checkpoint after the fact (optimum_si.export.results, `optimum-si eval` records)."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import ModelCard

from optimum_si import SIPruner
from optimum_si.export.results import is_checkpoint, record_results
from optimum_si.reporting.report import PruneReport
from tests.conftest import tiny_model, token_ids


@pytest.fixture
def checkpoint(tmp_path):
    model = tiny_model("llama")
    pruner = SIPruner(method="wanda", sparsity=0.5, num_samples=4, seqlen=16, show_progress=False)
    pruner.prune(model, dataset=token_ids(4, 16))
    folder = tmp_path / "out"
    pruner.save(model, folder, plots=False, base_model="alice/tiny-llama",
                card_info={"license": "apache-2.0", "weights_source": "a note given at save time."})
    return folder, pruner.report


def _card(folder):
    return ModelCard.load(folder / "README.md")


def _metrics(card):
    return {(r.dataset_name, r.metric_type): r.metric_value for r in card.data.eval_results or []}


def test_pruned_then_dense_results_fill_report_table_and_model_index(checkpoint):
    folder, report = checkpoint
    assert is_checkpoint(folder) and "## Evaluation" not in _card(folder).text
    written = record_results(folder, {"perplexity": {"wikitext2": 31.5}, "zero_shot": {"boolq": {"acc": 0.61,
                             "acc_stderr": 0.01}}, "seqlen": 16})
    assert [p.rsplit("/", 1)[-1] for p in written] == ["si_report.json", "README.md"]
    record_results(folder, {"perplexity": {"wikitext2": 20.25}, "zero_shot": {"boolq": {"acc": 0.7}}}, "dense")

    saved = PruneReport.load(folder)
    assert saved.dataset_perplexity == {"pruned": {"wikitext2": 31.5}, "dense": {"wikitext2": 20.25}}
    assert saved.zero_shot["pruned"]["boolq"] == {"acc": 0.61, "acc_stderr": 0.01}
    assert saved.layers.keys() == report.layers.keys() and saved.sparsity == report.sparsity
    assert [b.output_error for b in saved.blocks] == [b.output_error for b in report.blocks]

    card = _card(folder)
    assert _metrics(card) == {("wikitext2", "perplexity"): 31.5, ("boolq", "acc"): 0.61}  # the pruned model's
    assert card.data.model_name == "tiny-llama-pruned" and card.data.license == "apache-2.0"
    assert card.data.base_model == "alice/tiny-llama"
    text = card.text
    assert "**Source weights:** a note given at save time." in text  # the rest of the card is kept
    assert "| wikitext2 perplexity | 20.2500 | 31.5000 |" in text and "| boolq acc | 0.7000 | 0.6100 |" in text
    assert text.index("## Evaluation") < text.index("## Versions") and "windows of\n16 tokens" in text


def test_measuring_again_replaces_the_value_and_keeps_one_section(checkpoint):
    folder, _ = checkpoint
    record_results(folder, {"perplexity": {"wikitext2": 31.5}})
    record_results(folder, {"perplexity": {"wikitext2": 30.0, "c4": 40.0}})
    card = _card(folder)
    assert card.text.count("## Evaluation") == 1
    assert _metrics(card) == {("wikitext2", "perplexity"): 30.0, ("c4", "perplexity"): 40.0}
    assert json.loads((folder / "si_report.json").read_text())["dataset_perplexity"]["pruned"] == {
        "wikitext2": 30.0, "c4": 40.0}


def test_refused_outside_a_checkpoint_and_for_unknown_models(tmp_path, checkpoint):
    with pytest.raises(ValueError, match="not an optimum-si checkpoint"):
        record_results(tmp_path, {"perplexity": {"wikitext2": 1.0}})
    with pytest.raises(ValueError, match="'pruned' or 'dense'"):
        record_results(checkpoint[0], {"perplexity": {"wikitext2": 1.0}}, "teacher")
