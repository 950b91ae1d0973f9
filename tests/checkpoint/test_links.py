"""Links in a source are resolved before they are trusted: followed inside the folder, or inside the repository's
blobs/ for a Hugging Face cache snapshot; refused with both paths anywhere else."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from optimum_si import SIPruner
from optimum_si.checkpoint.files import INDEX_NAME, PROGRESS_NAME
from tests.conftest import saved_tensors, tiny_model, token_ids

REVISION = "0123456789abcdef0123456789abcdef01234567"


def _prune(source, out, **kwargs):
    return SIPruner(method="wanda", num_samples=8, seqlen=32, show_progress=False).prune(
        str(source), save_dir=out, dataset=token_ids(), **kwargs)


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "dense"
    tiny_model("llama").save_pretrained(path, max_shard_size="100KB")
    return path


def _fake_cache(folder, cache):
    """`folder` laid out as the Hub cache lays out a download: every file a link to ../../blobs/<name>."""
    repo = cache / "models--alice--tiny"
    snapshot = repo / "snapshots" / REVISION
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for number, name in enumerate(sorted(os.listdir(folder))):
        blob = repo / "blobs" / f"{number:040x}"
        shutil.copyfile(folder / name, blob)
        (snapshot / name).symlink_to(os.path.join("..", "..", "blobs", blob.name))
    return snapshot


def test_a_hub_cache_snapshot_streams_as_its_folder_does(source, tmp_path):
    snapshot = _fake_cache(source, tmp_path / "hub")
    _prune(source, tmp_path / "plain")
    _prune(snapshot, tmp_path / "cached")
    ours, theirs = saved_tensors(tmp_path / "cached"), saved_tensors(tmp_path / "plain")
    assert ours.keys() == theirs.keys() and all(ours[k].equal(theirs[k]) for k in ours)
    meta = json.loads((tmp_path / "cached" / "si_config.json").read_text())["meta"]
    assert meta["base_model"] == "alice/tiny" and meta["base_revision"] == REVISION
    assert not any(os.path.islink(tmp_path / "cached" / name) for name in os.listdir(tmp_path / "cached"))


def test_links_inside_the_folder_are_followed(source, tmp_path):
    shard = sorted(n for n in os.listdir(source) if n.endswith(".safetensors"))[0]
    (source / "real").mkdir()
    (source / shard).rename(source / "real" / shard)
    (source / shard).symlink_to(os.path.join("real", shard))
    _prune(source, tmp_path / "out")
    assert (tmp_path / "out" / "si_config.json").is_file()


@pytest.mark.parametrize("name", ["shard", INDEX_NAME, "config.json", "generation_config.json", "tokenizer.json"])
def test_a_link_out_of_the_source_is_refused_with_both_paths(source, tmp_path, name):
    other = tmp_path / "other-model"
    other.mkdir()
    if name == "shard":  # the brief's case: a shard that is another model's file
        name = sorted(n for n in os.listdir(source) if n.endswith(".safetensors"))[0]
        tiny_model("llama", seed=1).save_pretrained(other, max_shard_size="100KB")
        os.remove(source / name)
    elif name == "tokenizer.json":
        (other / name).write_text("{}")
    else:
        shutil.move(source / name, other / name)
    (source / name).symlink_to(other / name)
    with pytest.raises(ValueError, match=f"{source / name} is a link to {other / name}, outside {source}"):
        _prune(source, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.optimum-si-partial").exists()


def test_a_cache_snapshot_linking_outside_its_repository_is_refused(source, tmp_path):
    snapshot = _fake_cache(source, tmp_path / "hub")
    elsewhere = tmp_path / "elsewhere.json"
    shutil.copyfile(source / "config.json", elsewhere)
    os.remove(snapshot / "config.json")
    (snapshot / "config.json").symlink_to(elsewhere)
    with pytest.raises(ValueError, match=f"is a link to {elsewhere}, outside"):
        _prune(snapshot, tmp_path / "out")


def test_a_part_of_an_unfinished_run_that_links_out_is_refused(source, tmp_path, monkeypatch):
    from tests.conftest import fail_pruning_in_block

    out = tmp_path / "out"
    fail_pruning_in_block(monkeypatch, 1)
    with pytest.raises(RuntimeError):
        _prune(source, out)
    monkeypatch.undo()
    partial = tmp_path / ".out.optimum-si-partial"
    part = json.loads((partial / PROGRESS_NAME).read_text())["shards"][0]["file"]
    (tmp_path / "planted").mkdir()
    (partial / part).rename(tmp_path / "planted" / part)
    (partial / part).symlink_to(tmp_path / "planted" / part)
    with pytest.raises(ValueError, match=f"is a link to {tmp_path / 'planted' / part}, outside"):
        _prune(source, out)
