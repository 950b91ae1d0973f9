"""A fake Hugging Face Hub on 127.0.0.1 serving small dataset repos (parquet and gzipped JSON lines written here), for
the tests of named and Hub datasets (the `fake_hub` fixture in conftest starts it).

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
import re
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, unquote, urlsplit

import torch

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


def handler(requests: list):
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


