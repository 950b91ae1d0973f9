import json
import os

import pytest

from optimum_si import folders


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
    (tmp_path / "out" / folders.MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="is corrupted .* delete it"):
        folders.describe(str(tmp_path / "out"))
    (tmp_path / "out" / folders.MANIFEST_NAME).write_text(json.dumps({"files": ["model.safetensors"]}))
    assert folders.describe(str(tmp_path / "out")).foreign == ["adapter_model.safetensors"]


def test_a_folder_holding_the_working_directory_or_a_file_is_refused(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        folders.check_target(str(tmp_path / "file"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="current working directory"):
        folders.check_target(str(tmp_path))
