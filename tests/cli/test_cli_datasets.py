"""The command line with named / Hub datasets, zero-shot tasks and --base-model."""

from __future__ import annotations

import json

import pytest

from optimum_si.cli import main
from tests.conftest import TINY_TASK, char_tokenizer, tiny_model
from tests.fake_hub import SHA, WIKI_TEST


@pytest.fixture
def dense_dir(tmp_path):
    path = tmp_path / "dense"
    tiny_model("llama").save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path


def test_eval_on_a_named_set_and_zero_shot_tasks(fake_hub, dense_dir, tmp_path, capsys):  # noqa: F811
    pytest.importorskip("lm_eval")
    items = [{"question": "is the sky blue", "choices": [" yes", " no"], "answer": 0},
             {"question": "is fire cold", "choices": [" yes", " no"], "answer": 1}]
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    (tmp_path / "si_tiny_choice.yaml").write_text(TINY_TASK.format(data=tmp_path / "items.jsonl"))
    text = tmp_path / "test.txt"
    text.write_text("\n\n".join(WIKI_TEST))

    assert main(["eval", "--model", str(dense_dir), "--text", str(text), "--dataset", "wikitext2", "--seqlen", "16",
                 "--tasks", "si_tiny_choice", "--include-path", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    from_text, from_set = (line for line in lines if line.startswith("perplexity"))
    assert from_text.split()[1] == from_set.split()[1] and "wikitext2" in from_set  # the same joined test split
    assert any(line.startswith("si_tiny_choice: acc ") for line in lines), lines


def test_prune_with_a_hub_dataset_and_base_model(fake_hub, dense_dir, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    assert main(["prune", "--model", str(dense_dir), "--method", "wanda", "--dataset", "alice/custom-texts",
                 "--num-samples", "4", "--seqlen", "16", "--base-model", "bob/dense", "--output", str(out),
                 "--no-show-progress"]) == 0
    meta = json.loads((out / "si_config.json").read_text())["meta"]
    assert meta["base_model"] == "bob/dense" and meta["calibration"]["repo"] == "alice/custom-texts"
    assert meta["calibration"]["commit"] == SHA and str(tmp_path) not in json.dumps(meta)


def test_usage_errors(dense_dir, tmp_path, capsys):
    assert main(["eval", "--model", str(dense_dir)]) == 2
    assert "Nothing to evaluate" in capsys.readouterr().err
    assert main(["eval", "--model", str(dense_dir), "--dataset", "no such set"]) == 2
    assert "--text" in capsys.readouterr().err
    assert main(["prune", "--model", str(dense_dir), "--method", "magnitude", "--stream", "--base-model", "a/b",
                 "--output", str(tmp_path / "o")]) == 2
    assert "--base-model applies without --stream" in capsys.readouterr().err


def test_eval_records_into_the_checkpoint_and_the_dense_model_beside_it(fake_hub, dense_dir, tmp_path,  # noqa: F811
                                                                         capsys):
    pytest.importorskip("lm_eval")
    from huggingface_hub import ModelCard

    (tmp_path / "items.jsonl").write_text(json.dumps({"question": "is fire cold", "choices": [" yes", " no"],
                                                      "answer": 1}) + "\n")
    (tmp_path / "si_tiny_choice.yaml").write_text(TINY_TASK.format(data=tmp_path / "items.jsonl"))
    out = tmp_path / "out"
    assert main(["prune", "--model", str(dense_dir), "--method", "wanda", "--dataset", "alice/custom-texts",
                 "--num-samples", "4", "--seqlen", "16", "--base-model", "bob/dense", "--output", str(out),
                 "--no-show-progress"]) == 0
    text = tmp_path / "notes.txt"
    text.write_text("\n\n".join(WIKI_TEST))
    tasks = ["--tasks", "si_tiny_choice", "--include-path", str(tmp_path)]
    assert main(["eval", "--model", str(out), "--dataset", "wikitext2", "--text", str(text), "--seqlen", "16",
                 *tasks]) == 0
    assert "recorded as the pruned model's results in" in capsys.readouterr().out
    assert main(["eval", "--model", str(dense_dir), "--dataset", "wikitext2", "--seqlen", "16", *tasks,
                 "--record-into", str(out), "--record-as", "dense"]) == 0
    report = json.loads((out / "si_report.json").read_text())
    assert set(report["dataset_perplexity"]) == {"pruned", "dense"}
    assert list(report["dataset_perplexity"]["pruned"]) == ["wikitext2"]  # a --text file is only printed
    assert set(report["zero_shot"]["dense"]["si_tiny_choice"]) <= {"acc", "acc_stderr"}
    card = ModelCard.load(out / "README.md")
    assert "notes.txt" not in str(card) and "| wikitext2 perplexity |" in card.text
    assert {r.dataset_name for r in card.data.eval_results} == {"wikitext2", "si_tiny_choice"}
    assert "calibration set" in card.text  # provenance and results on one card

    before = (out / "si_report.json").read_text()
    assert main(["eval", "--model", str(out), "--dataset", "wikitext2", "--seqlen", "16", "--no-record"]) == 0
    assert (out / "si_report.json").read_text() == before
    assert main(["eval", "--model", str(dense_dir), "--dataset", "wikitext2", "--record-into", str(tmp_path)]) == 2
    assert "is not an optimum-si checkpoint folder" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["prune", "prune-stream", "eval"])
def test_a_named_dataset_is_fetched_before_the_model_and_an_unreachable_hub_exits_1(silent_hub, dense_dir, tmp_path,
                                                                                    capsys, monkeypatch, command):
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the dataset was fetched")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", refuse)
    if command == "eval":
        argv = ["eval", "--model", str(dense_dir), "--dataset", "wikitext2", "--no-record"]
    else:
        argv = ["prune", "--model", str(dense_dir), "--method", "wanda", "--dataset", "c4", "--output",
                str(tmp_path / "out"), *(["--stream"] if command == "prune-stream" else [])]
    assert main(argv) == 1  # the network's failure, not the user's mistake
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert silent_hub.url in err and "did not answer within 0.5 s" in err and "HF_ENDPOINT" in err, err
    assert not (tmp_path / "out").exists()


def test_a_file_named_like_a_set_is_the_file(dense_dir, tmp_path, capsys, monkeypatch, caplog):
    """A path that exists wins over the named set of the same name (as a local folder wins over a Hub id in
    from_pretrained and load_dataset), and the log says so; offline here, so the named set could not even load."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c4").write_text("the quick brown fox jumps over the lazy dog " * 40)
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="optimum_si"):
        assert main(["prune", "--model", str(dense_dir), "--method", "wanda", "--dataset", "c4", "--num-samples", "4",
                     "--seqlen", "16", "--output", str(out), "--no-show-progress"]) == 0
    assert "is the local file" in caplog.text and "not the named set 'c4'" in caplog.text
    assert "calibration" not in json.loads((out / "si_config.json").read_text())["meta"]  # a file: no provenance
    assert main(["eval", "--model", str(dense_dir), "--dataset", "c4"]) == 2
    assert "--dataset 'c4' is a file" in capsys.readouterr().err


def test_a_hub_recipe_on_an_unreachable_hub_exits_1(silent_hub, dense_dir, tmp_path, capsys):
    assert main(["prune", "--model", str(dense_dir), "--recipe", "alice/recipe", "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and silent_hub.url in err and "si_config.json of 'alice/recipe'" in err, err
