import os
import subprocess
import sys
import textwrap

import pytest

from optimum_si import SIPruner
from optimum_si.checkpoint.locking import FolderLockedError, output_lock
from tests.conftest import tiny_model


def _pruned():
    model = tiny_model("llama")
    pruner = SIPruner(method="magnitude", show_progress=False)
    pruner.prune(model)
    return model, pruner


def test_a_second_run_into_the_same_folder_fails_at_once_naming_the_holder(tmp_path):
    source = tmp_path / "dense"
    tiny_model("llama").save_pretrained(source)
    model, pruner = _pruned()
    out = tmp_path / "out"
    with output_lock(out):
        with pytest.raises(FolderLockedError, match=rf"another optimum-si run \(pid {os.getpid()} on "):
            pruner.save(model, out)
        with pytest.raises(FolderLockedError, match="wait for it to finish or choose another save_dir"):
            SIPruner(method="magnitude", show_progress=False).prune(str(source), save_dir=out)
    assert not out.exists()
    pruner.save(model, out)  # free again
    assert os.path.isfile(out / "si_config.json")


def test_the_lock_of_a_killed_run_does_not_block_the_next_one(tmp_path):
    locking = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "optimum_si",
                           "checkpoint", "locking.py")
    out = tmp_path / "out"
    child = textwrap.dedent(f"""
        import importlib.util, sys, time
        spec = importlib.util.spec_from_file_location("locking", {locking!r})
        locking = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(locking)
        with locking.output_lock({str(out)!r}):
            print("locked", flush=True)
            time.sleep(60)
    """)
    holder = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        model, pruner = _pruned()
        with pytest.raises(FolderLockedError, match=f"pid {holder.pid} on "):
            pruner.save(model, out)
    finally:
        holder.kill()
        holder.wait()
    pruner.save(model, out)  # the OS released the lock of the killed holder
    assert os.path.isfile(out / "si_config.json")


def test_a_damaged_owner_file_only_hides_the_holders_name(tmp_path):
    from optimum_si.checkpoint.locking import _holder

    owner = tmp_path / "owner"
    for damage in ("[" * 100_000 + "]" * 100_000, "{", "[]", '{"pid": 1}'):
        owner.write_text(damage)
        assert _holder(str(owner)) == "holder unknown"


def test_the_lock_file_is_removed_when_the_run_ends(tmp_path):
    model, pruner = _pruned()
    pruner.save(model, tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no lock or owner file left beside the output
    with output_lock(tmp_path / "out"):
        assert (tmp_path / ".out.optimum-si.lock").exists() and (tmp_path / ".out.optimum-si.owner").exists()
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_a_lock_file_that_is_no_longer_ours_is_left_alone(tmp_path):
    lock = tmp_path / ".out.optimum-si.lock"
    with output_lock(tmp_path / "out"):
        os.remove(lock)  # someone removed it, and another run made a new one meanwhile
        lock.write_text("")
    assert lock.exists()


def test_a_mount_point_keeps_its_lock_inside_and_removes_it(tmp_path, monkeypatch):
    out = tmp_path / "volume"
    out.mkdir()
    real = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda path: os.path.realpath(path) == str(out) or real(path))
    with output_lock(out):
        assert (out / ".optimum-si.lock").exists() and sorted(os.listdir(tmp_path)) == ["volume"]
        with pytest.raises(FolderLockedError):
            with output_lock(out):
                pass
    assert os.listdir(out) == []
