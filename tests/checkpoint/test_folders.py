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


# ------------------------------------------------------------------------------------ a save_dir that cannot move
def _files_of(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))
            if not (folder / name).is_dir()}


def _unmovable(monkeypatch, target, errno_code):
    """`target` cannot be renamed (a mount point: EBUSY; or the new folder would cross filesystems: EXDEV)."""
    import errno

    real = os.rename
    target = os.path.realpath(target)

    def inside(path):
        return os.path.commonpath([os.path.realpath(path), target]) == target

    def rename(src, dst, *args, **kwargs):
        crossing = errno_code == "EXDEV" and inside(dst) != inside(src)  # another filesystem: nothing moves across
        if os.path.realpath(src) == target or os.path.realpath(dst) == target or crossing:
            raise OSError(getattr(errno, errno_code), os.strerror(getattr(errno, errno_code)), src)
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", rename)


def _mount_point(monkeypatch, target):
    """`target` reported as a mount point, and never renamable."""
    real = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda path: os.path.realpath(path) == os.path.realpath(target)
                        or real(path))
    _unmovable(monkeypatch, target, "EBUSY")


@pytest.mark.parametrize("errno_code", ["EBUSY", "EXDEV"])
def test_a_save_dir_that_cannot_be_renamed_is_swapped_by_its_contents(tmp_path, monkeypatch, errno_code):
    from tests.conftest import pruned_tiny

    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file")
    model, pruner = pruned_tiny("magnitude")
    pruner.save(model, out, max_shard_size="20KB")  # an earlier checkpoint of more shards, to be replaced
    _unmovable(monkeypatch, out, errno_code)
    model, pruner = pruned_tiny("wanda")
    pruner.save(model, out, overwrite=True)
    assert sorted(os.listdir(out)) == sorted(["notes.txt", "model.safetensors", "config.json", "generation_config.json",
                                              "si_config.json", "si_report.json", "README.md", folders.MANIFEST_NAME,
                                              *[n for n in os.listdir(out) if n.endswith(".png")]])
    assert (out / "notes.txt").read_text() == "the user's own file" and folders.describe(str(out)).complete
    assert json.loads((out / "si_config.json").read_text())["method"] == "wanda"
    assert sorted(os.listdir(tmp_path)) == ["out"]  # nothing stranded beside it


def test_a_streamed_run_into_a_mount_point_works_inside_it(tmp_path, monkeypatch):
    from optimum_si import SIPruner
    from tests.conftest import saved_tensors, tiny_model

    source, out = tmp_path / "dense", tmp_path / "volume"
    tiny_model("llama").save_pretrained(source)
    SIPruner(method="magnitude", show_progress=False).prune(str(source), save_dir=tmp_path / "reference")
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    _mount_point(monkeypatch, out)
    monkeypatch.chdir(out)  # a container's working folder may be the volume itself
    seen = []
    real_write = folders.write_manifest

    def watch(folder, fingerprint=None):
        seen.append(folder)
        return real_write(folder, fingerprint)

    monkeypatch.setattr(folders, "write_manifest", watch)
    assert SIPruner(method="magnitude", show_progress=False).prune(str(source), save_dir=out) == str(out)
    assert seen == [os.path.join(os.path.realpath(out), ".optimum-si-partial")]  # built on the volume itself
    ours, theirs = saved_tensors(out), saved_tensors(tmp_path / "reference")
    assert ours.keys() == theirs.keys() and all(ours[k].equal(theirs[k]) for k in ours)
    assert (out / "notes.txt").read_text() == "mine"
    assert not [n for n in os.listdir(out) if n.startswith(".optimum-si") and n != folders.MANIFEST_NAME]
    assert sorted(os.listdir(tmp_path)) == ["dense", "reference", "volume"]  # no lock or work folder beside it
    # A rerun of the same run has nothing to do.
    assert SIPruner(method="magnitude", show_progress=False).prune(str(source), save_dir=out) == str(out)


@pytest.mark.parametrize("moved", [0, 1, 3])
def test_a_content_swap_killed_half_way_is_finished_by_the_next_writer(tmp_path, monkeypatch, moved):
    """Killed after `moved` files of the new checkpoint were moved in: the folder never looks complete in between,
    the user's file never moves, and the next writer rolls the swap forward."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_text("old weights")
    (out / "old-only.bin").write_text("old")
    folders.write_manifest(str(out))
    (out / "notes.txt").write_text("mine")
    staging = out / ".optimum-si-staging"
    staging.mkdir()
    for name in ("model.safetensors", "config.json", "si_config.json"):
        (staging / name).write_text(f"new {name}")
    folders.write_manifest(str(staging))
    real_replace, count = os.replace, []

    def killed(src, dst, *args, **kwargs):
        if os.path.dirname(os.fspath(src)) == str(staging):
            if len(count) == moved:
                raise KeyboardInterrupt
            count.append(dst)
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        folders.publish(str(staging), str(out), folders.describe(str(out)))
    monkeypatch.undo()
    assert (out / "notes.txt").read_text() == "mine"
    assert folders.read_manifest(str(out)) is None  # the old manifest left first, the new one comes last
    folders.recover(str(out))
    assert _files_of(out) == {"notes.txt": b"mine", "model.safetensors": b"new model.safetensors",
                              "config.json": b"new config.json", "si_config.json": b"new si_config.json",
                              folders.MANIFEST_NAME: (out / folders.MANIFEST_NAME).read_bytes()}
    assert folders.describe(str(out)).complete and sorted(os.listdir(out)) == sorted(_files_of(out))


def test_an_old_checkpoint_is_never_deleted_for_a_folder_made_after_a_kill(tmp_path):
    """Killed between the two renames of a swap, then `os.makedirs(save_dir, exist_ok=True)` and a file of the
    user's in it: the next writer puts the old checkpoint (and the user's file kept in it) back, and keeps the new
    file; nothing is deleted."""
    out, old = tmp_path / "out", tmp_path / ".out.optimum-si-old"
    _checkpoint(old, "the only copy")
    (old / "adapter.bin").write_text("the user's adapter")
    os.makedirs(out, exist_ok=True)
    (out / "todo.txt").write_text("written after the kill")
    folders.recover(str(out))
    assert _files_of(out) == {"model.safetensors": b"the only copy", "adapter.bin": b"the user's adapter",
                              "todo.txt": b"written after the kill",
                              folders.MANIFEST_NAME: (out / folders.MANIFEST_NAME).read_bytes()}
    assert not old.exists()


def test_an_old_checkpoint_whose_names_are_taken_is_kept(tmp_path):
    out, old = tmp_path / "out", tmp_path / ".out.optimum-si-old"
    _checkpoint(old, "the only copy")
    out.mkdir()
    (out / "model.safetensors").write_text("something else")  # not a checkpoint: no manifest
    folders.recover(str(out))
    assert (old / "model.safetensors").read_text() == "the only copy"  # kept, not deleted
    assert (out / folders.MANIFEST_NAME).is_file() and (out / "model.safetensors").read_text() == "something else"


def test_an_old_folder_after_a_complete_swap_gives_back_what_the_user_put_there(tmp_path):
    _checkpoint(tmp_path / "out", "new")
    _checkpoint(tmp_path / ".out.optimum-si-old", "old")
    (tmp_path / ".out.optimum-si-old" / "late.txt").write_text("the user's, not linked across")
    folders.recover(str(tmp_path / "out"))
    assert (tmp_path / "out" / "late.txt").read_text() == "the user's, not linked across"
    assert (tmp_path / "out" / "model.safetensors").read_text() == "new" and sorted(os.listdir(tmp_path)) == ["out"]


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_the_manifest_gives_every_file_the_umask_mode(tmp_path, mask):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "model.safetensors").write_text("x")
    os.chmod(folder / "model.safetensors", 0o600)  # as safetensors creates its files
    previous = os.umask(mask)
    try:
        folders.write_manifest(str(folder))
    finally:
        os.umask(previous)
    assert os.stat(folder / "model.safetensors").st_mode & 0o777 == 0o666 & ~mask
