import json
import os

import pytest

from optimum_si.checkpoint import folders
from tests.conftest import record_disk_events


@pytest.mark.parametrize("name", ["../x.safetensors", "/etc/passwd", "a/../../x", "..", "", "a\\..\\x", 3])
def test_names_that_could_leave_the_folder_are_refused(tmp_path, name):
    with pytest.raises(ValueError, match="not inside"):
        folders.inside(str(tmp_path), name, "model.safetensors.index.json")


def test_names_inside_the_folder_are_accepted(tmp_path):
    assert folders.inside(str(tmp_path), "sub/../model.safetensors", "x") == os.path.join(tmp_path, "model.safetensors")


def _checkpoint(folder, marker):
    folder.mkdir()
    (folder / "model.safetensors").write_text(marker)
    folders.write_manifest(str(folder))


def test_recover_puts_back_an_old_folder_caught_between_the_two_renames(tmp_path):
    target = str(tmp_path / "out")
    _checkpoint(tmp_path / ".out.optimum-si-old", "old")
    (tmp_path / ".out.optimum-si-staging").mkdir()
    folders.recover(target)
    assert (tmp_path / "out" / "model.safetensors").read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_recover_drops_an_old_folder_left_after_the_swap(tmp_path):
    _checkpoint(tmp_path / "out", "new")
    _checkpoint(tmp_path / ".out.optimum-si-old", "old")
    folders.recover(str(tmp_path / "out"))
    assert (tmp_path / "out" / "model.safetensors").read_text() == "new" and sorted(os.listdir(tmp_path)) == ["out"]


def test_describe_tells_own_files_from_the_users(tmp_path):
    _checkpoint(tmp_path / "out", "new")
    (tmp_path / "out" / "adapter_model.safetensors").write_text("user")
    state = folders.describe(str(tmp_path / "out"))
    assert state.complete and state.own == {"model.safetensors", folders.MANIFEST_NAME}
    assert state.foreign == ["adapter_model.safetensors"]
    (tmp_path / "out" / "si_config.json").write_text("{}")
    (tmp_path / "out" / "si_report.json").write_text("{}")
    for damage in ("{not json", "[" * 100_000 + "]" * 100_000, '{"files": "x"}', b"\xff\xfe"):
        manifest = tmp_path / "out" / folders.MANIFEST_NAME
        manifest.write_bytes(damage if isinstance(damage, bytes) else damage.encode())
        with pytest.raises(ValueError, match="is corrupted .* overwrite=True"):  # a partial folder's manifest
            folders.read_manifest(str(tmp_path / "out"))
        # The folder is never stuck: its files are told apart by their names, and the damaged manifest is ours.
        state = folders.describe(str(tmp_path / "out"))
        assert state.own == {"model.safetensors", "si_config.json", "si_report.json", folders.MANIFEST_NAME}
        assert state.foreign == ["adapter_model.safetensors"] and state.complete
    os.remove(tmp_path / "out" / "si_report.json")  # and without the names of a checkpoint: all the user's
    assert folders.describe(str(tmp_path / "out")).own == {folders.MANIFEST_NAME}
    os.remove(tmp_path / "out" / "si_config.json")
    (tmp_path / "out" / folders.MANIFEST_NAME).write_text(json.dumps({"files": ["model.safetensors"]}))
    assert folders.describe(str(tmp_path / "out")).foreign == ["adapter_model.safetensors"]


def test_a_checkpoint_with_a_damaged_manifest_is_replaced_by_the_next_save(tmp_path):
    from tests.conftest import pruned_tiny as _pruned

    model, pruner = _pruned()
    out = tmp_path / "out"
    pruner.save(model, out)
    (out / "adapter_model.safetensors").write_text("user")
    (out / folders.MANIFEST_NAME).write_text('{"files": [')  # cut short
    pruner.save(model, out, overwrite=True)
    assert (out / "adapter_model.safetensors").read_text() == "user"
    assert folders.read_manifest(str(out))["files"]  # the new, whole manifest (not the damaged one kept over it)


def test_a_folder_holding_the_working_directory_or_a_file_is_refused(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        folders.check_target(str(tmp_path / "file"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="current working directory"):
        folders.check_target(str(tmp_path))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to name synced files")
def test_files_are_on_disk_before_the_manifest_and_the_swap_before_the_old_folder_goes(tmp_path, monkeypatch):
    root = os.path.realpath(tmp_path)
    _checkpoint(tmp_path / "out", "old")
    staging = tmp_path / ".out.optimum-si-staging"
    staging.mkdir()
    (staging / "model.safetensors").write_text("new")
    (staging / "tokenizer").mkdir()
    (staging / "tokenizer" / "vocab.json").write_text("{}")
    existing = folders.describe(str(tmp_path / "out"))
    events = record_disk_events(monkeypatch)
    folders.write_manifest(str(staging))
    folders.publish(str(staging), str(tmp_path / "out"), existing)

    manifest_placed = events.index(("rename", os.path.join(root, ".out.optimum-si-staging", folders.MANIFEST_NAME)))
    synced_before = {path for what, path in events[:manifest_placed] if what == "sync"}
    for name in ("model.safetensors", "tokenizer/vocab.json", folders.MANIFEST_NAME + ".tmp"):
        assert os.path.join(root, ".out.optimum-si-staging", name) in synced_before
    swapped = events.index(("rename", os.path.join(root, "out")))
    old_deleted = events.index(("delete", os.path.join(root, ".out.optimum-si-old")))
    assert ("sync", root) in events[swapped:old_deleted]
    assert (tmp_path / "out" / "model.safetensors").read_text() == "new"


def test_a_stale_progress_file_next_to_a_manifest_is_never_taken_for_the_users(tmp_path):
    _checkpoint(tmp_path / "out", "new")
    (tmp_path / "out" / ".optimum-si-progress.json").write_text("{}")  # a power loss undid its removal
    state = folders.describe(str(tmp_path / "out"))
    assert state.complete and state.foreign == [] and ".optimum-si-progress.json" in state.own


def test_a_checkpoint_without_manifest_owns_every_chart_optimum_si_draws(tmp_path):
    from optimum_si.reporting.plots import PLOT_FILES

    (tmp_path / "out").mkdir()
    for name in ("si_config.json", "si_report.json", "model.safetensors", *PLOT_FILES):
        (tmp_path / "out" / name).write_text("x")
    (tmp_path / "out" / "notes.png").write_text("user")
    state = folders.describe(str(tmp_path / "out"))
    assert set(PLOT_FILES) <= state.own and state.foreign == ["notes.png"]
