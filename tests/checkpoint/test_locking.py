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
