"""Named text sets, Hub dataset ids and local folders, loaded through the real `datasets` library.

Hub sets come from a fake Hub on 127.0.0.1 serving small dataset repos (parquet and gzipped JSON lines written here).
Endpoints `datasets` 5.2 / huggingface_hub 2.4 call for `load_dataset("owner/name", ...)`:
  GET|HEAD /datasets/{repo}/resolve/{rev}/{file}   README.md (dataset card, configs), probes for a loading script,
                                                   .huggingface.yaml and dataset_infos.json (404 is fine), data files
  GET /api/datasets/{repo}[/revision/{rev}]        repo info (the commit sha; also read by optimum-si to record it)
  GET /api/datasets/{repo}/tree/{rev}/{path}       file listing (?recursive=true|false) for data-file patterns
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import torch

datasets = pytest.importorskip("datasets")

from optimum_si.calibration import build_calibration, draw_windows  # noqa: E402
from optimum_si.calibration_sets import (  # noqa: E402
    C4_REVISION,
    NAMED_SETS,
    TextSet,
    calibration_ids,
    evaluation_ids,
    text_set,
)

SHA = "c0ffee" + "0" * 34


class CharTokenizer:
    """One token per character (ids below 100): windows can be checked by hand, and fit the tiny models' vocab."""

    def __call__(self, text, verbose=True):
        return {"input_ids": [ord(c) % 100 for c in text]}

    def save_pretrained(self, folder):  # SIPruner.save writes the tokenizer it pruned with
        pass


def encode(text):
    return torch.tensor(CharTokenizer()(text)["input_ids"])


def _parquet(columns: dict) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer)
    return buffer.getvalue()


def _jsonl_gz(texts: list[str]) -> bytes:
    return gzip.compress("".join(json.dumps({"text": t, "timestamp": "2019"}) + "\n" for t in texts).encode())


def _card(configs: dict[str, dict[str, str]]) -> bytes:
    lines = ["---", "configs:"]
    for name, splits in configs.items():
        lines += [f"- config_name: {name}", "  data_files:"]
        lines += [f"  - split: {split}\n    path: {path}" for split, path in splits.items()]
    return ("\n".join(lines) + "\n---\n# test data\n").encode()


C4_TRAIN = [f"c4 document {i} " * (2 + 3 * (i % 4)) for i in range(40)]  # lengths vary: some shorter than a window
C4_OTHER_SHARD = ["ZZZZ other shard " * 20] * 10
C4_VALIDATION = [f"validation document {i}. " * 3 for i in range(1200)]
WIKI_TRAIN = [" = Heading = ", "", " wiki train text about things . " * 4, " more train text . " * 6]
WIKI_TEST = [" = Test = ", "", " wiki test text for perplexity . " * 8, " second test paragraph . " * 8]
PILE = [f"  pile document {i} with some words  " for i in range(30)]
CUSTOM = {"content": [f"custom text number {i} " * 5 for i in range(8)], "id": list(range(8))}

REPOS = {
    "allenai/c4": {
        "README.md": _card({"en": {"train": "en/c4-train.*.json.gz", "validation": "en/c4-validation.*.json.gz"}}),
        "en/c4-train.00000-of-01024.json.gz": _jsonl_gz(C4_TRAIN),
        "en/c4-train.00001-of-01024.json.gz": _jsonl_gz(C4_OTHER_SHARD),
        "en/c4-validation.00000-of-00008.json.gz": _jsonl_gz(C4_VALIDATION),
        "en/c4-validation.00001-of-00008.json.gz": _jsonl_gz(C4_OTHER_SHARD),
    },
    "Salesforce/wikitext": {
        "README.md": _card({
            "wikitext-103-raw-v1": {"train": "wikitext-103-raw-v1/train-*.parquet"},
            "wikitext-2-raw-v1": {"train": "wikitext-2-raw-v1/train-*.parquet",
                                  "test": "wikitext-2-raw-v1/test-*.parquet"},
        }),
        "wikitext-103-raw-v1/train-00000-of-00001.parquet": _parquet({"text": C4_OTHER_SHARD}),
        "wikitext-2-raw-v1/train-00000-of-00001.parquet": _parquet({"text": WIKI_TRAIN}),
        "wikitext-2-raw-v1/test-00000-of-00001.parquet": _parquet({"text": WIKI_TEST}),
    },
    "mit-han-lab/pile-val-backup": {
        "README.md": b"---\nlicense: mit\n---\n# pile val\n",
        "data/validation-00000-of-00001.parquet": _parquet({"text": PILE}),
    },
    "alice/custom-texts": {
        "README.md": b"---\nlicense: mit\n---\n# custom\n",
        "data/train-00000-of-00001.parquet": _parquet(CUSTOM),
        "data/validation-00000-of-00001.parquet": _parquet({"content": ["validation only " * 30], "id": [0]}),
    },
}


def _handler(requests: list):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, status, body: bytes, head=False, headers=None):
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def do_HEAD(self):
            self._route(head=True)

        def do_GET(self):
            self._route(head=False)

        def _route(self, head):
            url = urlsplit(self.path)
            path = unquote(url.path)
            requests.append(path)
            info = re.match(r"^/api/datasets/([^/]+/[^/]+)(/revision/[^/]+)?$", path)
            if info and info[1] in REPOS:
                body = {"id": info[1], "sha": SHA, "private": False, "tags": [],
                        "siblings": [{"rfilename": name} for name in REPOS[info[1]]]}
                return self._send(200, json.dumps(body).encode(), headers={"Content-Type": "application/json"})
            tree = re.match(r"^/api/datasets/([^/]+/[^/]+)/tree/([^/]+)/?(.*)$", path)
            if tree and tree[1] in REPOS:
                recursive = parse_qs(url.query).get("recursive") == ["true"]
                listing = self._tree(REPOS[tree[1]], tree[3].strip("/"), recursive)
                return self._send(200, json.dumps(listing).encode(), headers={"Content-Type": "application/json"})
            resolve = re.match(r"^/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
            if resolve and resolve[3] in REPOS.get(resolve[1], {}):
                data = REPOS[resolve[1]][resolve[3]]
                return self._send(200, data, head, {"X-Repo-Commit": SHA, "ETag": f'"{hashlib.sha1(data).hexdigest()}"',
                                                    "Content-Type": "application/octet-stream"})
            return self._send(404, b'{"error": "not found"}', head,
                              {"X-Error-Code": "EntryNotFound", "Content-Type": "application/json"})

        @staticmethod
        def _tree(files, prefix, recursive):
            entries, folders = [], set()
            for name, data in files.items():
                if prefix and not name.startswith(prefix + "/"):
                    continue
                rest = name[len(prefix) + 1:] if prefix else name
                if "/" in rest and not recursive:
                    folder = f"{prefix}/{rest.split('/')[0]}" if prefix else rest.split("/")[0]
                    if folder not in folders:
                        folders.add(folder)
                        entries.append({"type": "directory", "path": folder, "oid": "0" * 40})
                else:
                    entries.append({"type": "file", "path": name, "size": len(data),
                                    "oid": hashlib.sha1(data).hexdigest()})
            return entries

    return Handler


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """A fake Hub serving `REPOS`; HF_ENDPOINT points at it and the Hub is online for this test only. Both libraries
    read the endpoint and offline flag into constants at import time, so the constants are patched as well."""
    import huggingface_hub.constants as hub_constants

    requests: list[str] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(requests))
    url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    for module, name, value in [
        (hub_constants, "ENDPOINT", url), (hub_constants, "HF_HUB_OFFLINE", False),
        (hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}"),
        (hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub")),
        (datasets.config, "HF_ENDPOINT", url), (datasets.config, "HF_HUB_OFFLINE", False),
        (datasets.config, "HF_DATASETS_OFFLINE", False),
        (datasets.config, "HUB_DATASETS_URL", url + "/datasets/{repo_id}/resolve/{revision}/{path}"),
        (datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets"),
    ]:
        monkeypatch.setattr(module, name, value)
    try:
        yield requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


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


def test_references_and_errors(tmp_path):
    from optimum_si.calibration_sets import is_text_set_reference

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

    from .conftest import tiny_model

    model = tiny_model("llama")
    expected = perplexity(model, CharTokenizer(), "\n\n".join(WIKI_TEST), seqlen=16)
    assert perplexity(model, CharTokenizer(), "wikitext2", seqlen=16) == expected
    custom = text_set("alice/custom-texts", "evaluation", split="validation")
    assert perplexity(model, CharTokenizer(), custom, seqlen=16) == perplexity(
        model, CharTokenizer(), "validation only " * 30, seqlen=16)


def test_prune_records_the_calibration_set_in_recipe_report_and_card(fake_hub, tmp_path):
    from optimum_si import SIPruner

    from .conftest import tiny_model

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
