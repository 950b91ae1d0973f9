"""Named text sets, Hub dataset ids and local folders, loaded through the real `datasets` library.

Hub sets come from the fake Hub of tests/fake_hub.py (the `fake_hub` fixture).
"""

from __future__ import annotations

import json
import random

import pytest
import torch

datasets = pytest.importorskip("datasets")

from optimum_si.data.calibration import build_calibration  # noqa: E402
from optimum_si.data.named_sets import (  # noqa: E402
    C4_REVISION,
    NAMED_SETS,
    TextSet,
    calibration_ids,
    evaluation_ids,
    text_set,
)
from optimum_si.data.windows import draw_windows  # noqa: E402
from tests.fake_hub import (  # noqa: E402
    C4_TRAIN,
    C4_VALIDATION,
    CUSTOM,
    PILE,
    SHA,
    WIKI_TEST,
    WIKI_TRAIN,
    CharTokenizer,
    encode,
)


def test_named_table_pins_the_literature_sources():
    c4, wiki, pile = (NAMED_SETS[n]["calibration"] for n in ("c4", "wikitext2", "pileval"))
    assert (c4.path, c4.config, c4.data_files, c4.split, c4.column) == (
        "allenai/c4", "en", "en/c4-train.00000-of-01024.json.gz", "train", "text")
    assert (wiki.path, wiki.config, wiki.split) == ("Salesforce/wikitext", "wikitext-2-raw-v1", "train")
    assert (pile.path, pile.split) == ("mit-han-lab/pile-val-backup", "validation")
    assert NAMED_SETS["wikitext2"]["evaluation"].split == "test" and NAMED_SETS["pileval"]["evaluation"] is None
    # C4 and WikiText are pinned to full commits (the same text next year); pile-val-backup follows "main".
    for name in ("c4", "wikitext2"):
        for entry in NAMED_SETS[name].values():
            assert entry.revision and len(entry.revision) == 40 and int(entry.revision, 16) >= 0
    assert pile.revision is None


def test_c4_draws_one_window_per_long_enough_document_of_the_first_shard(fake_hub):
    ids, record = calibration_ids("c4", CharTokenizer(), num_samples=6, seqlen=40, seed=3)
    assert ids.shape == (6, 40)
    # The reference procedure (Wanda / SparseGPT get_c4), written out with the same seeded generator.
    rng, expected = random.Random(3), []
    while len(expected) < 6:
        doc = encode(C4_TRAIN[rng.randint(0, len(C4_TRAIN) - 1)])
        if doc.numel() <= 40:
            continue
        start = rng.randint(0, doc.numel() - 40 - 1)
        expected.append(doc[start:start + 40])
    assert torch.equal(ids, torch.stack(expected))
    assert encode("ZZZZ")[0].item() not in ids  # the second shard is never read
    assert record == {"name": "c4", "repo": "allenai/c4", "config": "en", "split": "train", "column": "text",
                      "data_files": "en/c4-train.00000-of-01024.json.gz", "revision": C4_REVISION, "commit": SHA,
                      "sampling": "documents", "windows": 6, "seqlen": 40, "seed": 3}
    assert not any("00001-of-01024" in path for path in fake_hub)


def test_wikitext2_calibration_is_the_train_split_joined(fake_hub):
    ids, record = calibration_ids("wikitext2", CharTokenizer(), num_samples=4, seqlen=32, seed=0)
    assert torch.equal(ids, draw_windows(encode(" ".join(WIKI_TRAIN)), 4, 32, 0))
    assert (record["name"], record["config"], record["split"]) == ("wikitext2", "wikitext-2-raw-v1", "train")


def test_pileval_concatenates_shuffled_documents(fake_hub):
    ids, record = calibration_ids("pileval", CharTokenizer(), num_samples=3, seqlen=50, seed=5)
    order = list(range(len(PILE)))
    random.Random(5).shuffle(order)
    stream = torch.cat([encode(PILE[i].strip()) for i in order])
    assert torch.equal(ids, stream[:150].reshape(3, 50))
    assert (record["repo"], record["split"], record["sampling"]) == ("mit-han-lab/pile-val-backup", "validation",
                                                                     "shuffled")


def test_any_hub_dataset_with_split_and_column(fake_hub):
    ids, record = build_calibration("alice/custom-texts", CharTokenizer(), 4, 16, 1, vocab_size=128, max_context=64)
    assert torch.equal(ids, draw_windows(encode("\n\n".join(CUSTOM["content"])), 4, 16, 1))  # column found by name
    assert record["repo"] == "alice/custom-texts" and record["split"] == "train" and record["revision"] == "main"
    ids, record = calibration_ids(TextSet("alice/custom-texts", split="validation", column="content"),
                                  CharTokenizer(), 2, 16, 0)
    assert torch.equal(ids, draw_windows(encode("validation only " * 30), 2, 16, 0))
    with pytest.raises(ValueError, match="no column 'body'.*column="):
        calibration_ids(text_set("alice/custom-texts", column="body"), CharTokenizer(), 2, 16, 0)
    with pytest.raises(ValueError, match="Could not load the dataset 'alice/missing'"):
        calibration_ids("alice/missing", CharTokenizer(), 2, 16, 0)


def test_wikitext2_evaluation_stream_is_the_test_split_joined_with_blank_lines(fake_hub):
    ids, record = evaluation_ids("wikitext2", CharTokenizer(), seqlen=16)
    assert torch.equal(ids, encode("\n\n".join(WIKI_TEST)))
    assert record["split"] == "test" and record["windows"] == ids.numel() // 16


def test_c4_evaluation_uses_the_first_1100_validation_documents(fake_hub):
    ids, record = evaluation_ids("c4", CharTokenizer(), seqlen=64)
    assert torch.equal(ids, encode(" ".join(C4_VALIDATION[:1100]))[:256 * 64])
    assert record["windows"] == 256 and record["split"] == "validation"


def test_local_folders(tmp_path):
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict(CUSTOM).save_to_disk(str(saved))
    ids, record = calibration_ids(str(saved), CharTokenizer(), 3, 16, 0)
    assert torch.equal(ids, draw_windows(encode("\n\n".join(CUSTOM["content"])), 3, 16, 0))
    # Recorded by its folder name only: a local path never goes into a published recipe.
    assert record["name"] == "saved" and record["repo"] is None and record["revision"] is None
    assert str(tmp_path) not in json.dumps(record)

    files = tmp_path / "files"
    files.mkdir()
    (files / "part.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in WIKI_TRAIN))
    ids, _ = calibration_ids(str(files), CharTokenizer(), 3, 16, 0)
    assert torch.equal(ids, draw_windows(encode("\n\n".join(WIKI_TRAIN)), 3, 16, 0))


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_path_named_like_a_set_is_the_path(tmp_path, monkeypatch, caplog, kind):
    """A path that exists wins over the named set (as a local folder wins over a Hub id in from_pretrained and
    load_dataset), said in the log; `text_set("c4")` still means the named set."""
    monkeypatch.chdir(tmp_path)
    if kind == "file":
        (tmp_path / "c4").write_text("local calibration text " * 20)
        expected = draw_windows(encode("local calibration text " * 20), 3, 16, 0)
    else:
        (tmp_path / "c4").mkdir()
        (tmp_path / "c4" / "part.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in WIKI_TRAIN))
        expected = draw_windows(encode("\n\n".join(WIKI_TRAIN)), 3, 16, 0)
    with caplog.at_level("WARNING", logger="optimum_si"):
        ids, provenance = build_calibration("c4", CharTokenizer(), 3, 16, 0, None, None)
    assert torch.equal(ids, expected)
    assert f"is the local {kind}" in caplog.text and "not the named set 'c4'" in caplog.text
    assert provenance is None if kind == "file" else provenance["name"] == "c4" and provenance["repo"] is None
    assert text_set("c4") == NAMED_SETS["c4"]["calibration"]


def test_a_folder_that_is_no_dataset_says_what_to_pass(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "train.json").write_text('{"text": "a"}\n{bad')
    with pytest.raises(ValueError, match=r"dataset='.*broken' is a folder that `datasets` cannot read as a dataset "
                                         r"\(DatasetGenerationError: JSON parse error.*save_to_disk.*text column"):
        calibration_ids(str(broken), CharTokenizer(), 2, 16, 0)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="cannot read as a dataset.*doesn't contain any data files"):
        calibration_ids(str(empty), CharTokenizer(), 2, 16, 0)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="is a model folder"):
        calibration_ids(str(model), CharTokenizer(), 2, 16, 0)


def test_references_and_errors(tmp_path):
    from optimum_si.data.named_sets import is_text_set_reference

    text = tmp_path / "calib.txt"
    text.write_text("x")
    assert is_text_set_reference("c4") and is_text_set_reference("owner/name") and is_text_set_reference(str(tmp_path))
    assert not is_text_set_reference(str(text)) and not is_text_set_reference("/no/such/file.txt")
    assert not is_text_set_reference("calib.txt") and not is_text_set_reference(["owner/name"])
    assert not is_text_set_reference("notes/calib.txt")  # a missing file keeps the file error
    with pytest.raises(ValueError, match="'pileval' has no evaluation split"):
        evaluation_ids("pileval", CharTokenizer(), 16)
    with pytest.raises(ValueError, match="a tokenizer is needed"):
        calibration_ids("c4", None, 2, 16, 0)


def test_perplexity_on_wikitext2_is_the_standard_protocol(fake_hub):
    from optimum_si.evaluation import perplexity
    from tests.conftest import tiny_model

    model = tiny_model("llama")
    expected = perplexity(model, CharTokenizer(), "\n\n".join(WIKI_TEST), seqlen=16)
    assert perplexity(model, CharTokenizer(), "wikitext2", seqlen=16) == expected
    custom = text_set("alice/custom-texts", "evaluation", split="validation")
    assert perplexity(model, CharTokenizer(), custom, seqlen=16) == perplexity(
        model, CharTokenizer(), "validation only " * 30, seqlen=16)


def test_prune_records_the_calibration_set_in_recipe_report_and_card(fake_hub, tmp_path):
    from optimum_si import SIPruner
    from tests.conftest import tiny_model

    model = tiny_model("llama")
    pruner = SIPruner(method="wanda", num_samples=4, seqlen=16, seed=2, show_progress=False)
    pruner.prune(model, tokenizer=CharTokenizer(), dataset="alice/custom-texts")
    assert pruner.report.calibration["repo"] == "alice/custom-texts"
    out = tmp_path / "pruned"
    pruner.save(model, out, plots=False)
    meta = json.loads((out / "si_config.json").read_text())["meta"]
    assert meta["calibration"] == {"name": "alice/custom-texts", "repo": "alice/custom-texts", "config": None,
                                   "split": "train", "column": None, "data_files": None, "revision": "main",
                                   "commit": SHA, "sampling": "stream", "windows": 4, "seqlen": 16, "seed": 2}
    assert json.loads((out / "si_report.json").read_text())["calibration"] == meta["calibration"]
    card = (out / "README.md").read_text()
    assert "`alice/custom-texts`, split train, revision main (commit c0ffee000000)" in card
    assert "- alice/custom-texts" in card.split("---")[1]  # card metadata: datasets


def test_offline_without_a_cache_is_one_clear_error():
    # conftest sets HF_HUB_OFFLINE=1: nothing is fetched, and the message says how to get the data.
    message = "Could not load the dataset 'alice/custom-texts'.*HF_HUB_OFFLINE is set.*load it once with network"
    with pytest.raises(ValueError, match=message):
        calibration_ids("alice/custom-texts", CharTokenizer(), 2, 16, 0)
