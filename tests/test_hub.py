"""End-to-end tests of `push_to_hub` against a fake Hub: a real HTTP server on 127.0.0.1, driven by the real HfApi.

Endpoints huggingface_hub 2.4 calls for `create_repo` + `upload_folder` of a small folder:
  POST /api/repos/create                          create_repo (401/403 there -> GET /api/models/{repo} to see if
                                                  the repo already exists)
  POST /api/validate-yaml                         README.md metadata check
  POST /api/models/{repo}/preupload/{revision}    upload mode per file; we answer "regular" for every file, so the
                                                  contents travel base64-encoded inside the commit and no LFS/Xet
                                                  transfer happens, even in the hf_xet pipeline
  POST /api/models/{repo}/discussions             create_pr in the hf_xet pipeline (opens the PR first) ...
  GET  /api/models/{repo}/discussions/{num}       ... and reads it back, then commits to refs/pr/{num}
  POST /api/models/{repo}/commit/{revision}       ndjson: a header line, then one {"key": "file"} line per file
"""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import huggingface_hub.constants
import pytest
import torch

from optimum_si.hub import HubPushError, push_to_hub

REPO = "alice/tiny-si"
TOKEN = "hf_fake_test_token"
_REPO_PATH = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/(?P<op>preupload|commit)/(?P<rev>.+)$")


class FakeHub:
    """What the server saw, and how it should answer (`unauthorized` makes every endpoint answer 401)."""

    def __init__(self):
        self.requests: list[tuple[str, str]] = []
        self.unexpected: list[tuple[str, str]] = []
        self.created: list[dict] = []
        self.commits: list[dict] = []
        self.unauthorized = False
        self.url = ""
        # Path prefixes where the server misbehaves: `stall_on` never answers (until the test ends), `garbage_on`
        # answers 200 with an HTML page, as a captive portal or a wrong endpoint would.
        self.stall_on: str | None = None
        self.garbage_on: str | None = None
        self.release = threading.Event()


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean; requests are recorded in `hub.requests`
            pass

        def _reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))

        def do_GET(self):
            self._route("GET")

        def do_POST(self):
            self._route("POST")

        def _route(self, method: str) -> None:
            url = urlsplit(self.path)
            path, query = url.path, parse_qs(url.query)
            hub.requests.append((method, path))
            body = self._body() if method == "POST" else b""
            if hub.stall_on and path.startswith(hub.stall_on):
                hub.release.wait(30)
                return None
            if hub.garbage_on and path.startswith(hub.garbage_on):
                page = b"<html><body>Welcome to the hotel Wi-Fi</body></html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)
                return None
            if hub.unauthorized:
                return self._reply(401, {"error": "Invalid credentials in Authorization header"})
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                return self._reply(401, {"error": "missing token"})
            match = _REPO_PATH.match(path)
            if method == "POST" and path == "/api/repos/create":
                payload = json.loads(body)
                hub.created.append(payload)
                return self._reply(200, {"url": f"{hub.url}/{payload['organization']}/{payload['name']}"})
            if method == "POST" and path == "/api/validate-yaml":
                return self._reply(200, {"errors": [], "warnings": []})
            if method == "POST" and match and match["op"] == "preupload":
                files = json.loads(body)["files"]
                return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                                    "oid": None} for f in files]})
            if method == "POST" and match and match["op"] == "commit":
                lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                header = next(line["value"] for line in lines if line["key"] == "header")
                files = {line["value"]["path"]: base64.b64decode(line["value"]["content"])
                         for line in lines if line["key"] == "file"}
                others = [line["key"] for line in lines if line["key"] not in ("header", "file")]
                oid = f"{len(hub.commits) + 1:040x}"
                hub.commits.append({"revision": unquote(match["rev"]), "header": header, "files": files,
                                    "other_keys": others, "create_pr": query.get("create_pr") == ["1"]})
                return self._reply(200, {"commitUrl": f"{hub.url}/{match['repo']}/commit/{oid}", "commitOid": oid,
                                         "pullRequestUrl": f"{hub.url}/{match['repo']}/discussions/1"})
            if method == "POST" and path == f"/api/models/{REPO}/discussions":
                return self._reply(200, {"num": 1})
            if method == "GET" and path == f"/api/models/{REPO}/discussions/1":
                return self._reply(200, {
                    "title": "t", "num": 1, "createdAt": "2025-01-01T00:00:00.000Z", "status": "draft",
                    "repo": {"name": REPO, "type": "model"}, "isPullRequest": True, "events": [],
                    "changes": {"base": "refs/heads/main"}, "filesWithConflicts": [],
                })
            hub.unexpected.append((method, self.path))
            return self._reply(404, {"error": f"fake hub: no route for {method} {path}"})

    return Handler


@pytest.fixture
def hub_env(monkeypatch):
    # conftest sets HF_HUB_OFFLINE=1 for the whole suite, and huggingface_hub reads it into a constant at import
    # time (its HTTP hook checks `constants.HF_HUB_OFFLINE`), so the environment variable alone is not enough.
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)


@pytest.fixture
def fake_hub(hub_env):
    hub = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        hub.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert not hub.unexpected, f"the client called endpoints the fake Hub does not serve: {hub.unexpected}"


@pytest.fixture
def checkpoint(tmp_path):
    from safetensors.torch import save_file

    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    save_file({"w": torch.arange(24, dtype=torch.float32).reshape(4, 6)}, str(folder / "model.safetensors"))
    (folder / "si_config.json").write_text(json.dumps({"method": "wanda", "sparsity": 0.5}))
    (folder / "README.md").write_text("---\nlicense: apache-2.0\ntags:\n- optimum-si\n---\n# tiny pruned model\n")
    return folder


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# hf_xet installed -> upload_folder runs the streamed xet pipeline; HF_HUB_DISABLE_XET -> the legacy create_commit
# path. `is_xet_available()` reads the constant at call time, so patching it selects the path.
@pytest.fixture(params=[False, True], ids=["xet-pipeline", "legacy-commit"])
def upload_path(request, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", request.param)
    return "legacy" if request.param else "xet"


def test_push_uploads_every_file_byte_identical(fake_hub, checkpoint, upload_path):
    before = _snapshot(checkpoint)
    url = push_to_hub(checkpoint, REPO, private=True, token=TOKEN, commit_message="Add 50% wanda",
                      endpoint=fake_hub.url)

    assert fake_hub.created == [{"name": "tiny-si", "organization": "alice", "visibility": "private"}]
    (commit,) = fake_hub.commits
    assert commit["revision"] == "main" and not commit["create_pr"]
    assert commit["header"]["summary"] == "Add 50% wanda"
    assert commit["other_keys"] == []  # all regular files: no lfsFile / deletions
    assert commit["files"] == before
    assert set(before) == {"config.json", "model.safetensors", "si_config.json", "README.md"}
    assert url == f"{fake_hub.url}/{REPO}/commit/{1:040x}" and type(url) is str
    assert _snapshot(checkpoint) == before
    assert fake_hub.requests[0] == ("POST", "/api/repos/create")


def test_push_create_pr(fake_hub, checkpoint, upload_path):
    push_to_hub(checkpoint, REPO, token=TOKEN, create_pr=True, endpoint=fake_hub.url)

    assert "visibility" not in fake_hub.created[0]  # private=None keeps the Hub/org default
    (commit,) = fake_hub.commits
    # The xet pipeline opens the PR, then commits to its ref; the legacy path commits to main with ?create_pr=1.
    expected = ("refs/pr/1", False) if upload_path == "xet" else ("main", True)
    assert (commit["revision"], commit["create_pr"]) == expected
    assert commit["files"] == _snapshot(checkpoint)


def test_default_endpoint_is_huggingface_hub_setting(fake_hub, checkpoint, monkeypatch):
    # HF_ENDPOINT is read into `constants.ENDPOINT` when huggingface_hub is imported: patch the constant.
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", fake_hub.url)
    assert push_to_hub(checkpoint, REPO, token=TOKEN).startswith(fake_hub.url)
    assert fake_hub.commits[0]["files"] == _snapshot(checkpoint)


def test_auth_error_is_clear_and_leaves_folder_intact(fake_hub, checkpoint):
    fake_hub.unauthorized = True
    before = _snapshot(checkpoint)
    with pytest.raises(HubPushError, match="huggingface-cli login") as info:
        push_to_hub(checkpoint, REPO, token=TOKEN, endpoint=fake_hub.url)
    assert "token=" in str(info.value) and "401" in str(info.value) and REPO in str(info.value)
    assert fake_hub.commits == []
    assert _snapshot(checkpoint) == before


def test_unreachable_endpoint_is_a_clear_network_error(hub_env, checkpoint):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    before = _snapshot(checkpoint)
    start = time.monotonic()
    with pytest.raises(HubPushError, match="could not reach") as info:
        push_to_hub(checkpoint, REPO, token=TOKEN, endpoint=endpoint)
    assert time.monotonic() - start < 5  # create_repo does not retry connection errors
    assert endpoint in str(info.value)
    assert _snapshot(checkpoint) == before


def test_offline_mode_is_reported(checkpoint, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubPushError, match="HF_HUB_OFFLINE"):
        push_to_hub(checkpoint, REPO, token=TOKEN, endpoint="http://127.0.0.1:9")


def test_offline_mode_set_after_import_is_honoured_at_once(checkpoint, monkeypatch):
    from tests.conftest import SilentEndpoint

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # imported online...
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # ...and switched off later, as in a notebook
    silent = SilentEndpoint()
    try:
        with pytest.raises(HubPushError, match="offline mode is on"):
            push_to_hub(checkpoint, REPO, token=TOKEN, endpoint=silent.url)
    finally:
        silent.close()
    assert silent.connections == []


def test_validates_folder_and_repo_id(tmp_path, checkpoint):
    (tmp_path / "incomplete").mkdir()
    (tmp_path / "incomplete" / "config.json").write_text("{}")
    for folder in (tmp_path / "incomplete", tmp_path / "missing"):
        with pytest.raises(ValueError, match="si_config.json.*SIPruner.save"):
            push_to_hub(folder, REPO)
    for bad in ("a/b/c", "", "bad name", "owner/../x"):
        with pytest.raises(ValueError, match="'name' or 'owner/name'"):
            push_to_hub(checkpoint, bad)


def test_pruner_save_with_push_uploads_the_real_checkpoint(fake_hub, tmp_path):
    from optimum_si import SIPruner
    from tests.conftest import tiny_model, token_ids

    model = tiny_model("llama")
    pruner = SIPruner(method="wanda", num_samples=4, seqlen=16, show_progress=False)
    pruner.prune(model, dataset=token_ids(4, 16))
    out = tmp_path / "pruned"
    pruner.save(model, out, push_to_hub=True, repo_id=REPO, token=TOKEN, endpoint=fake_hub.url)
    (commit,) = fake_hub.commits
    on_disk = _snapshot(out)
    assert ".optimum-si-manifest.json" in on_disk  # optimum-si's own bookkeeping stays local
    assert commit["files"] == {k: v for k, v in on_disk.items() if k != ".optimum-si-manifest.json"}
    assert {"model.safetensors", "si_config.json", "si_report.json", "README.md"} <= set(commit["files"])
    with pytest.raises(ValueError, match="repo_id"):
        pruner.save(model, out, push_to_hub=True)


@pytest.mark.parametrize("where", ["/api/repos/create", "/api/models/"], ids=["create", "upload"])
def test_stalled_endpoint_times_out_naming_it(fake_hub, checkpoint, where, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    # The upload endpoints are retried by huggingface_hub (5 times, with back-off): skip its sleeps.
    monkeypatch.setattr("huggingface_hub.utils._http.time.sleep", lambda _s: None)
    fake_hub.stall_on = where
    before = _snapshot(checkpoint)
    start = time.monotonic()
    with pytest.raises(HubPushError, match="did not answer within 0.3 s") as info:
        push_to_hub(checkpoint, REPO, token=TOKEN, endpoint=fake_hub.url, timeout=0.3)
    assert time.monotonic() - start < 10
    assert fake_hub.url in str(info.value)
    assert _snapshot(checkpoint) == before
    from huggingface_hub.utils import get_session

    assert get_session().timeout.read is None  # the shared client's own setting is restored


@pytest.mark.parametrize("where", ["/api/repos/create", "/api/models/"], ids=["create", "upload"])
def test_non_json_reply_is_a_push_error_naming_the_endpoint(fake_hub, checkpoint, where, upload_path):
    fake_hub.garbage_on = where
    with pytest.raises(HubPushError, match="not JSON|unexpected reply") as info:
        push_to_hub(checkpoint, REPO, token=TOKEN, endpoint=fake_hub.url)
    assert fake_hub.url in str(info.value) and "HF_ENDPOINT" in str(info.value)
    assert fake_hub.commits == []


@pytest.mark.parametrize("repo_id", [None, 42, ["alice/x"]])
def test_repo_id_of_the_wrong_type_is_a_clear_error(checkpoint, repo_id):
    with pytest.raises(ValueError, match="repo_id must be a Hub repo id such as 'owner/name'"):
        push_to_hub(checkpoint, repo_id)


@pytest.mark.parametrize("timeout", [0, -1, "fast", True])
def test_timeout_must_be_positive(checkpoint, timeout):
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        push_to_hub(checkpoint, REPO, timeout=timeout)


@pytest.mark.parametrize("endpoint", [123, "127.0.0.1:9", "ftp://hub"])
def test_endpoint_must_be_an_http_url(checkpoint, endpoint):
    with pytest.raises(ValueError, match="endpoint must be an http"):
        push_to_hub(checkpoint, REPO, endpoint=endpoint)


def test_bookkeeping_files_are_not_published(fake_hub, checkpoint, upload_path):
    before = _snapshot(checkpoint)
    (checkpoint / ".optimum-si-manifest.json").write_text('{"files": [], "fingerprint": null}')
    (checkpoint / ".optimum-si-progress.json").write_text("{}")
    (checkpoint / "model.safetensors.tmp").write_bytes(b"half")
    push_to_hub(checkpoint, REPO, token=TOKEN, endpoint=fake_hub.url)
    assert fake_hub.commits[0]["files"] == before


def test_push_refuses_a_folder_that_a_run_is_writing(fake_hub, checkpoint):
    from optimum_si.checkpoint.locking import output_lock

    with output_lock(checkpoint):
        with pytest.raises(HubPushError, match="being written by another optimum-si run"):
            push_to_hub(checkpoint, REPO, token=TOKEN, endpoint=fake_hub.url)
    assert fake_hub.commits == []
    push_to_hub(checkpoint, REPO, token=TOKEN, endpoint=fake_hub.url)  # the lock is free again
    assert len(fake_hub.commits) == 1
