import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from optimum_si import SIPruner
from optimum_si.checkpoint.files import INDEX_NAME, PROGRESS_NAME
from tests.conftest import fail_pruning_in_block, saved_tensors, tiny_model, token_ids


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "dense"
    tiny_model("llama").save_pretrained(path, max_shard_size="40KB")
    assert os.path.isfile(path / INDEX_NAME)
    return path


def _partial(out):
    return out.parent / f".{out.name}.optimum-si-partial"


def _pruner(method="wanda", **kwargs):
    return SIPruner(method=method, num_samples=8, seqlen=32, show_progress=False, **kwargs)


@pytest.mark.parametrize("method, extra", [("wanda", {}), ("sparsegpt", {"mask_structure": "2:4"}),
                                           ("magnitude", {}), ("wanda", {"induction": True})])
def test_streaming_equals_in_memory_bit_for_bit(source, tmp_path, method, extra):
    from transformers import AutoModelForCausalLM

    calib = token_ids()
    out = tmp_path / "out"
    streamed = _pruner(method, **extra)
    assert streamed.prune(str(source), save_dir=out, dataset=calib, max_shard_size="60KB") == str(out)
    in_memory = AutoModelForCausalLM.from_pretrained(source)
    _pruner(method, **extra).prune(in_memory, dataset=calib)
    source_keys = set(json.loads((source / INDEX_NAME).read_text())["weight_map"])
    expected = {k: v for k, v in in_memory.state_dict().items() if k in source_keys}
    assert len(expected) == len(source_keys)
    written = saved_tensors(out)
    assert set(written) == set(expected)
    assert all(torch.equal(written[k], expected[k]) for k in expected)
    assert streamed.report.sparsity == 0.5
    index = json.loads((out / INDEX_NAME).read_text())
    assert set(index["weight_map"]) == set(expected)
    assert {"config.json", "si_config.json", "si_report.json", "README.md"} <= set(os.listdir(out))
    assert not os.path.exists(out / PROGRESS_NAME)
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    ids = token_ids(1, 16)
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, in_memory(ids).logits)


def _killed_after_the_first_block(source, out, recipe, calib_file) -> subprocess.CompletedProcess:
    """Runs `recipe` streamed into `out` in a child process that is killed once block 0 is written."""
    child = textwrap.dedent(f"""
        import os, signal, torch
        import optimum_si.checkpoint.progress as st
        original = st.write_progress
        def write_then_die(save_dir, progress):
            original(save_dir, progress)
            if progress["finished_blocks"] == 1:
                os.kill(os.getpid(), signal.SIGKILL)
        st.write_progress = write_then_die
        from optimum_si import SIPruner
        SIPruner(**{recipe!r}, num_samples=8, seqlen=32, show_progress=False).prune(
            {str(source)!r}, save_dir={str(out)!r}, dataset=torch.load({str(calib_file)!r}))
    """)
    return subprocess.run([sys.executable, "-c", child], cwd=os.getcwd(), capture_output=True)


@pytest.mark.parametrize("recipe", [{"method": "sparsegpt"}, {"method": "wanda", "induction": True},
                                    {"method": "wanda", "reconstruction": {"target": "global"}}],
                         ids=["sparsegpt", "si-wanda", "refit-global"])
def test_killed_run_resumes_to_the_same_checkpoint(source, tmp_path, recipe):
    calib = token_ids()
    torch.save(calib, tmp_path / "calib.pt")
    reference = tmp_path / "reference"
    _pruner(**recipe).prune(str(source), save_dir=reference, dataset=calib)
    out = tmp_path / "out"
    result = _killed_after_the_first_block(source, out, recipe, tmp_path / "calib.pt")
    assert result.returncode != 0
    progress = json.loads((_partial(out) / PROGRESS_NAME).read_text())
    assert progress["finished_blocks"] == 1
    assert not os.path.exists(out)  # an interrupted run never looks complete: it works in a hidden sibling
    resumed = _pruner(**recipe)
    resumed.prune(str(source), save_dir=out, dataset=calib)
    assert {k: v.tolist() for k, v in saved_tensors(out).items()} == {k: v.tolist() for k, v in saved_tensors(reference).items()}
    assert resumed.report.sparsity == 0.5 and len(resumed.report.layers) == 14


def test_a_killed_run_whose_masks_follow_the_unrefit_stream_is_refused_not_resumed(source, tmp_path, monkeypatch):
    """That stream (the blocks before their refit) is not in the written blocks: resuming would choose other masks.
    The refusal comes before the capture of the first block's inputs, which it would waste."""
    from optimum_si.runs import streamed

    calib = token_ids()
    torch.save(calib, tmp_path / "calib.pt")
    recipe = {"method": "wanda", "reconstruction": {"target": "global", "mask_stream": "unrefit"}}
    out = tmp_path / "out"
    assert _killed_after_the_first_block(source, out, recipe, tmp_path / "calib.pt").returncode != 0
    progress = (_partial(out) / PROGRESS_NAME).read_text()
    captures = []
    real_capture = streamed.capture_streamed
    monkeypatch.setattr(streamed, "capture_streamed", lambda *args: captures.append(1) or real_capture(*args))
    with pytest.raises(ValueError, match=r"cannot be resumed.*overwrite=True"):
        _pruner(**recipe).prune(str(source), save_dir=out, dataset=calib)
    assert not captures
    assert (_partial(out) / PROGRESS_NAME).read_text() == progress  # the finished block is still there
    reference = tmp_path / "reference"
    _pruner(**recipe).prune(str(source), save_dir=reference, dataset=calib)
    _pruner(**recipe).prune(str(source), save_dir=out, dataset=calib, overwrite=True)
    assert {k: v.tolist() for k, v in saved_tensors(out).items()} == \
        {k: v.tolist() for k, v in saved_tensors(reference).items()}


def test_complete_folder_with_another_recipe_needs_overwrite(source, tmp_path):
    out = tmp_path / "out"
    _pruner("magnitude").prune(str(source), save_dir=out)
    assert _pruner("magnitude").prune(str(source), save_dir=out) == str(out)  # same recipe: nothing to do
    with pytest.raises(FileExistsError, match="overwrite=True"):
        _pruner("magnitude", mask_structure="2:4").prune(str(source), save_dir=out)
    _pruner("magnitude", mask_structure="2:4").prune(str(source), save_dir=out, overwrite=True)
    assert json.loads((out / "si_config.json").read_text())["mask_structure"] == "2:4"


def test_a_rerun_with_nothing_left_to_do_still_reports_the_run(source, tmp_path, monkeypatch, capsys):
    from optimum_si.checkpoint import folders
    from optimum_si.cli import main

    out = tmp_path / "out"
    first = _pruner()
    first.prune(str(source), save_dir=tmp_path / "reference", dataset=token_ids())
    real_publish = folders.publish

    def killed_before_the_swap(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(folders, "publish", killed_before_the_swap)
    with pytest.raises(KeyboardInterrupt):
        _pruner().prune(str(source), save_dir=out, dataset=token_ids())
    monkeypatch.setattr(folders, "publish", real_publish)
    for _ in ("finished before the swap: only swapped in", "complete: nothing to do"):
        again = _pruner()
        again.prune(str(source), save_dir=out, dataset=token_ids())
        assert again.report.sparsity == first.report.sparsity == 0.5
        assert again.report.layers == first.report.layers and len(again.report.blocks) == 2
    args = ["prune", "--model", str(source), "--output", str(tmp_path / "cli"), "--method", "magnitude", "--stream",
            "--no-show-progress"]
    assert main(args) == 0 and main(args) == 0  # the same command twice: the second has nothing to do
    summary, last = capsys.readouterr().out.splitlines()[-2:]
    assert "achieved sparsity 0.5000" in summary and last.startswith("done: magnitude 50% unstructured")


def _break(source, how):
    index = json.loads((source / INDEX_NAME).read_text())
    shard = source / sorted(set(index["weight_map"].values()))[0]
    if how == "missing":
        os.remove(shard)
    elif how == "truncated":
        shard.write_bytes(shard.read_bytes()[:100])
    elif how == "shape":
        config = json.loads((source / "config.json").read_text())
        config["intermediate_size"] = 96
        (source / "config.json").write_text(json.dumps(config))
    elif how == "not-causal":
        config = json.loads((source / "config.json").read_text())
        config["model_type"] = "vit"
        config["architectures"] = ["ViTModel"]
        (source / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("how, error, message", [
    ("missing", FileNotFoundError, "missing"),
    ("truncated", ValueError, "truncated or corrupted"),
    ("shape", ValueError, "do not match"),
    ("not-causal", ValueError, "not a causal LM"),
])
def test_broken_sources_fail_before_writing(source, tmp_path, how, error, message):
    _break(source, how)
    out = tmp_path / "out"
    with pytest.raises(error, match=message):
        _pruner("wanda").prune(str(source), save_dir=out, dataset=token_ids())
    assert not out.exists()


def test_not_enough_disk(source, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10, 10, 1000))
    with pytest.raises(OSError, match="Not enough disk space"):
        _pruner("magnitude").prune(str(source), save_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_source_that_cannot_be_downloaded_names_the_endpoint(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(OSError, match=r"could not be downloaded from the Hub at http://127\.0\.0\.1:9"):
        _pruner("magnitude").prune("someone/no-such-model", save_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_streaming_needs_save_dir(source):
    with pytest.raises(ValueError, match="save_dir"):
        _pruner("magnitude").prune(str(source))


# ---------------------------------------------------------------------------------------------- integrity
def _files(folder):
    """Every file under `folder` with its bytes (to prove a folder was left exactly as it was)."""
    return {os.path.relpath(os.path.join(root, name), folder): open(os.path.join(root, name), "rb").read()
            for root, _dirs, names in os.walk(folder) for name in names}


def _fail_in_block(monkeypatch, block, error):
    """Make the base pruner raise `error` inside decoder block `block` (after the earlier blocks were pruned)."""
    fail_pruning_in_block(monkeypatch, block, error)


def _full_disk_writing_block(monkeypatch, block):
    import errno

    import safetensors.torch

    original = safetensors.torch.save_file

    def save_file(tensors, path, *args, **kwargs):
        if any(f".layers.{block}." in key for key in tensors):
            original(tensors, path, *args, **kwargs)  # a part file cut short, then the disk is full
            with open(path, "r+b") as handle:
                handle.truncate(100)
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(tensors, path, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)


@pytest.mark.parametrize("error", [RuntimeError("CUDA out of memory"), KeyboardInterrupt(), "full disk"])
def test_fault_inside_a_block_records_nothing_for_it_and_the_rerun_prunes_it(source, tmp_path, monkeypatch, error):
    reference = tmp_path / "reference"
    _pruner().prune(str(source), save_dir=reference, dataset=token_ids())
    out = tmp_path / "out"
    if error == "full disk":
        _full_disk_writing_block(monkeypatch, 1)
        error = OSError()
    else:
        _fail_in_block(monkeypatch, 1, error)
    with pytest.raises(type(error)):
        _pruner().prune(str(source), save_dir=out, dataset=token_ids())
    progress = json.loads((_partial(out) / PROGRESS_NAME).read_text())
    assert progress["finished_blocks"] == 1 and not [k for k in progress["layers"] if ".layers.1." in k]
    assert not out.exists()
    monkeypatch.undo()
    # Options that cannot change the result (device, activation storage, progress bars) do not block the resume.
    resumed = _pruner(device="cpu", activation_storage="cpu")
    resumed.prune(str(source), save_dir=out, dataset=token_ids())
    assert {k: v.tolist() for k, v in saved_tensors(out).items()} == {k: v.tolist() for k, v in saved_tensors(reference).items()}
    report = json.loads((out / "si_report.json").read_text())
    assert len(report["layers"]) == 14 and all(layer["sparsity"] == 0.5 for layer in report["layers"].values())
    block1 = {k: v for k, v in saved_tensors(out).items() if ".layers.1." in k and k.endswith("proj.weight")}
    assert len(block1) == 7 and all(float((v == 0).float().mean()) == 0.5 for v in block1.values())


def test_a_planned_linear_left_dense_is_never_recorded_finished(source, tmp_path, monkeypatch):
    from optimum_si.pipeline import walker

    original = walker.prune_group

    def skips_one(method, prefix, group, *args, **kwargs):  # a bug that forgets a Linear of block 1
        if prefix.endswith(".1"):
            group = {k: v for k, v in group.items() if k != "mlp.down_proj"}
        return original(method, prefix, group, *args, **kwargs)

    monkeypatch.setattr(walker, "prune_group", skips_one)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match=r"Block 1 has 1 planned Linear\(s\) that were not pruned .*down_proj"):
        _pruner("magnitude").prune(str(source), save_dir=out)
    assert json.loads((_partial(out) / PROGRESS_NAME).read_text())["finished_blocks"] == 1
    assert not out.exists()


@pytest.mark.parametrize("where", ["same", "contains", "inside"])
def test_save_dir_that_is_contains_or_lies_inside_the_source_is_refused(source, tmp_path, where):
    save_dir = {"same": source, "contains": tmp_path, "inside": source / "out"}[where]
    before = _files(tmp_path)
    with pytest.raises(ValueError, match="source checkpoint .* must never be modified"):
        _pruner("magnitude").prune(str(source), save_dir=save_dir, overwrite=True)
    assert _files(tmp_path) == before


@pytest.mark.parametrize("where", ["source", "out", "partial"])
def test_activations_on_disk_are_never_written_into_the_source_or_the_output(source, tmp_path, where):
    out = tmp_path / "out"
    scratch = {"source": source / "acts", "out": out / "acts", "partial": _partial(out) / "acts"}[where]
    before = _files(source)
    with pytest.raises(ValueError, match="activation_dir .* lies inside"):
        _pruner(activation_storage="disk", activation_dir=str(scratch)).prune(str(source), save_dir=out,
                                                                                dataset=token_ids())
    assert _files(source) == before and not out.exists() and not _partial(out).exists()


def test_failed_checks_with_overwrite_leave_the_old_checkpoint(source, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    out = tmp_path / "out"
    _pruner("magnitude").prune(str(source), save_dir=out)
    _fail_in_block(monkeypatch, 1, RuntimeError("boom"))
    with pytest.raises(RuntimeError):  # leaves an unfinished run of another recipe in the partial folder
        _pruner("magnitude", mask_structure="2:4").prune(str(source), save_dir=out, overwrite=True)
    monkeypatch.undo()
    before = _files(tmp_path)
    with pytest.raises(ValueError, match="calibration"):
        _pruner("wanda").prune(str(source), save_dir=out, overwrite=True)  # dataset=None
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10, 10, 1000))
    with pytest.raises(OSError, match="Not enough disk space"):
        _pruner("magnitude", sparsity=0.6).prune(str(source), save_dir=out, overwrite=True)
    assert _files(tmp_path) == before


def test_resume_refuses_another_run_and_names_what_differs(source, tmp_path, monkeypatch):
    out = tmp_path / "out"
    _fail_in_block(monkeypatch, 1, RuntimeError("boom"))
    with pytest.raises(RuntimeError):
        _pruner().prune(str(source), save_dir=out, dataset=token_ids())
    monkeypatch.undo()
    with pytest.raises(FileExistsError, match=r"differs from this run in the calibration data; pass overwrite=True"):
        _pruner().prune(str(source), save_dir=out, dataset=token_ids(seed=1))
    with pytest.raises(FileExistsError, match=r"the recipe \(sparsity: 0.5 -> 0.6\)"):
        _pruner(sparsity=0.6).prune(str(source), save_dir=out, dataset=token_ids())
    # The source's config (or tokenizer) edited: the blocks pruned so far were computed with the old one.
    config = (source / "config.json").read_text()
    (source / "config.json").write_text(config.replace('"rms_norm_eps": 1e-06', '"rms_norm_eps": 1e-05'))
    assert (source / "config.json").read_text() != config
    with pytest.raises(FileExistsError, match="the source checkpoint"):
        _pruner().prune(str(source), save_dir=out, dataset=token_ids())
    (source / "config.json").write_text(config)
    # Another model of the same architecture in the same folder: same names, sizes and headers, other values.
    tiny_model("llama", seed=1).save_pretrained(source, max_shard_size="40KB")
    with pytest.raises(FileExistsError, match="the source checkpoint"):
        _pruner().prune(str(source), save_dir=out, dataset=token_ids())
    reference = tmp_path / "reference"
    _pruner().prune(str(source), save_dir=reference, dataset=token_ids())
    _pruner().prune(str(source), save_dir=out, dataset=token_ids(), overwrite=True)
    assert {k: v.tolist() for k, v in saved_tensors(out).items()} == {k: v.tolist() for k, v in saved_tensors(reference).items()}
    # A finished checkpoint is compared the same way.
    assert _pruner().prune(str(source), save_dir=out, dataset=token_ids()) == str(out)  # same run: nothing to do
    with pytest.raises(FileExistsError, match="calibration data"):
        _pruner().prune(str(source), save_dir=out, dataset=token_ids(seed=2))


def _full_disk_at(monkeypatch, step):
    """Raise ENOSPC at one step of finishing a streaming run (what a full disk, or a kill, would interrupt)."""
    import errno

    import optimum_si.checkpoint.progress as st
    import optimum_si.export.save
    import optimum_si.reporting.report
    from optimum_si.checkpoint.folders import MANIFEST_NAME

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    calls = []

    def on(function_name, matches, nth=1):
        original = getattr(os, function_name)

        def patched(src, dst=None, *args, **kwargs):
            if matches(os.fspath(src), os.fspath(dst) if dst is not None else ""):
                calls.append(src)
                if len(calls) == nth:
                    full()
            return original(src, *(() if dst is None else (dst,)), *args, **kwargs)

        monkeypatch.setattr(os, function_name, patched)

    name = os.path.basename
    if step == "renames":  # the parts packed into the final shard, renamed into place
        on("replace", lambda s, d: name(s).startswith("model") and name(s).endswith(".safetensors.tmp"))
    elif step == "index":
        on("replace", lambda s, d: name(d) == INDEX_NAME)
    elif step == "side files":
        monkeypatch.setattr(st, "copy_side_files", full)
    elif step == "report":
        monkeypatch.setattr(optimum_si.reporting.report.PruneReport, "save", full)
    elif step == "card":
        monkeypatch.setattr(optimum_si.export.save, "build_model_card", full)
    elif step == "recipe":
        on("replace", lambda s, d: name(d) == "si_config.json")
    elif step == "manifest":
        on("replace", lambda s, d: name(d) == MANIFEST_NAME)
    elif step == "progress removal":
        on("remove", lambda s, d: name(s) == PROGRESS_NAME)
    elif step == "link":  # neither a hard link nor a copy of the user's file fits
        import shutil

        monkeypatch.setattr(os, "link", full)
        monkeypatch.setattr(shutil, "copy2", full)
    elif step == "swap, first rename":
        on("rename", lambda s, d: name(d).endswith("optimum-si-old"))
    elif step == "swap, second rename":
        on("rename", lambda s, d: name(s).endswith("optimum-si-partial"))


@pytest.mark.parametrize("step", ["renames", "index", "side files", "report", "card", "recipe", "manifest",
                                  "progress removal", "link", "swap, first rename", "swap, second rename"])
def test_full_disk_while_finishing_then_a_rerun_completes_the_folder(source, tmp_path, monkeypatch, step):
    reference = tmp_path / "reference"
    _pruner("magnitude").prune(str(source), save_dir=reference)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file")
    _full_disk_at(monkeypatch, step)
    with pytest.raises(OSError, match="No space left"):  # several shards: an index too
        _pruner("magnitude").prune(str(source), save_dir=out, max_shard_size="100KB")
    monkeypatch.undo()
    # Never a folder that looks complete (or loads) before it is: the user's folder as it was, or no folder at all
    # for an instant between the two renames of the swap (the old one waits under a known name).
    if step == "swap, second rename":
        assert not out.exists() and (tmp_path / ".out.optimum-si-old" / "notes.txt").is_file()
    else:
        assert os.listdir(out) == ["notes.txt"]
    _pruner("magnitude").prune(str(source), save_dir=out, max_shard_size="100KB")
    assert {k: v.tolist() for k, v in saved_tensors(out).items()} == {k: v.tolist() for k, v in saved_tensors(reference).items()}
    assert (out / "notes.txt").read_text() == "the user's own file"
    assert {"si_config.json", "si_report.json", "README.md", INDEX_NAME, "config.json"} <= set(os.listdir(out))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")) == []  # nothing left beside it


def test_killed_while_packing_the_shards_then_a_rerun_completes(source, tmp_path):
    reference = tmp_path / "reference"
    _pruner("magnitude").prune(str(source), save_dir=reference)
    out = tmp_path / "out"
    child = textwrap.dedent(f"""
        import os, signal
        original, count = os.replace, []
        def replace_then_die(src, dst):
            original(src, dst)
            if os.path.basename(src).endswith(".safetensors.tmp") and os.path.basename(dst).startswith("model-"):
                count.append(dst)
                if len(count) == 2:
                    os.kill(os.getpid(), signal.SIGKILL)
        os.replace = replace_then_die
        from optimum_si import SIPruner
        SIPruner(method="magnitude", num_samples=8, seqlen=32, show_progress=False).prune(
            {str(source)!r}, save_dir={str(out)!r}, max_shard_size="100KB")
    """)
    assert subprocess.run([sys.executable, "-c", child], cwd=os.getcwd(), capture_output=True).returncode != 0
    assert not out.exists()
    progress = json.loads((_partial(out) / PROGRESS_NAME).read_text())
    assert len(progress["packing"]) > 2  # killed after two of the shards were packed
    _pruner("magnitude").prune(str(source), save_dir=out, max_shard_size="5GB")  # the recorded packing is kept
    assert {k: v.tolist() for k, v in saved_tensors(out).items()} == {k: v.tolist() for k, v in saved_tensors(reference).items()}


@pytest.mark.parametrize("damage", ["truncated progress", "nested progress", "missing part", "truncated part"])
def test_corrupt_progress_is_a_clear_error_and_overwrite_starts_clean(source, tmp_path, monkeypatch, damage):
    reference = tmp_path / "reference"
    _pruner().prune(str(source), save_dir=reference, dataset=token_ids())
    out = tmp_path / "out"
    _fail_in_block(monkeypatch, 1, RuntimeError("boom"))
    with pytest.raises(RuntimeError):
        _pruner().prune(str(source), save_dir=out, dataset=token_ids())
    monkeypatch.undo()
    progress = _partial(out) / PROGRESS_NAME
    part = _partial(out) / json.loads(progress.read_text())["shards"][0]["file"]
    if damage == "truncated progress":
        progress.write_text(progress.read_text()[:50])
    elif damage == "nested progress":
        progress.write_text("[" * 100_000 + "]" * 100_000)
    elif damage == "missing part":
        os.remove(part)
    else:
        part.write_bytes(part.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"(corrupted|damaged) .*; pass overwrite=True to start over"):
        _pruner().prune(str(source), save_dir=out, dataset=token_ids())
    _pruner().prune(str(source), save_dir=out, dataset=token_ids(), overwrite=True)
    assert {k: v.tolist() for k, v in saved_tensors(out).items()} == {k: v.tolist() for k, v in saved_tensors(reference).items()}


@pytest.mark.parametrize("entry", ["relative", "absolute"])
def test_index_entries_outside_the_source_folder_are_refused(source, tmp_path, entry):
    other = tmp_path / "other"
    tiny_model("llama", seed=1).save_pretrained(other)
    index = json.loads((source / INDEX_NAME).read_text())
    key = "model.embed_tokens.weight"
    index["weight_map"][key] = "../other/model.safetensors" if entry == "relative" else str(other / "model.safetensors")
    (source / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(ValueError, match="not inside"):
        _pruner("magnitude").prune(str(source), save_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, message", [(INDEX_NAME, f"{INDEX_NAME} is corrupted"),
                                           ("config.json", "no usable config.json")])
def test_a_deeply_nested_index_or_config_is_a_clear_error(source, tmp_path, name, message):
    (source / name).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match=message):
        _pruner("magnitude").prune(str(source), save_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_tampered_progress_cannot_bring_an_outside_file_in(source, tmp_path, monkeypatch):
    out = tmp_path / "out"
    _fail_in_block(monkeypatch, 1, RuntimeError("boom"))
    with pytest.raises(RuntimeError):
        _pruner("magnitude").prune(str(source), save_dir=out)
    monkeypatch.undo()
    secret = tmp_path / "secret.safetensors"
    secret.write_bytes(b"not yours")
    path = _partial(out) / PROGRESS_NAME
    progress = json.loads(path.read_text())
    progress["shards"][0]["file"] = "../secret.safetensors"
    path.write_text(json.dumps(progress))
    with pytest.raises(ValueError, match="corrupted"):
        _pruner("magnitude").prune(str(source), save_dir=out)
    _pruner("magnitude").prune(str(source), save_dir=out, overwrite=True)
    assert secret.read_bytes() == b"not yours"
    assert not [name for name in os.listdir(out) if "secret" in name]


@pytest.mark.parametrize("norms, weights", [(torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16)])
def test_every_tensor_keeps_its_source_dtype(source, tmp_path, norms, weights):
    from safetensors.torch import save_file

    for shard in set(json.loads((source / INDEX_NAME).read_text())["weight_map"].values()):
        tensors = load_file(source / shard)
        save_file({k: v.to(norms if "norm" in k else weights) for k, v in tensors.items()}, source / shard,
                  metadata={"format": "pt"})
    before = saved_tensors(source)
    out = tmp_path / "out"
    _pruner().prune(str(source), save_dir=out, dataset=token_ids())
    after = saved_tensors(out)
    assert {k: v.dtype for k, v in after.items()} == {k: v.dtype for k, v in before.items()}
    untouched = [k for k in before if "proj" not in k]  # norms and embeddings: the source bytes themselves
    assert untouched and all(torch.equal(after[k], before[k]) for k in untouched)
    pruned = [k for k in before if "proj" in k]
    assert all(float((after[k] == 0).float().mean()) == 0.5 for k in pruned)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to name synced files")
def test_every_part_is_on_disk_before_the_progress_file_names_it(source, tmp_path, monkeypatch):
    from tests.conftest import record_disk_events

    out = tmp_path / "out"
    partial = os.path.realpath(_partial(out))
    events = record_disk_events(monkeypatch)
    _pruner("magnitude").prune(str(source), save_dir=out)
    progress_writes = [i for i, event in enumerate(events) if event == ("rename", os.path.join(partial, PROGRESS_NAME))]
    assert len(progress_writes) == 4  # two blocks, the non-block tensors and the plan of the final shards
    for count, at in enumerate(progress_writes[:3], start=1):
        synced = {path for what, path in events[:at] if what == "sync"}
        assert {os.path.join(partial, f"part-{i:05d}.safetensors.tmp") for i in range(count)} <= synced
        assert ("sync", partial) in events[at:at + 2]  # the folder: both renames are durable


def _four_blocks(folder):
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tests.conftest import _COMMON

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(LlamaConfig(**{**_COMMON, "num_hidden_layers": 4})).save_pretrained(folder)
    return folder


def _edit_in_place(path, key):
    """Change one value in the middle of tensor `key`'s bytes: same size, same header."""
    import struct

    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(length))
    begin, end = header[key]["data_offsets"]
    where = 8 + length + (begin + end) // 2 // 4 * 4
    size = os.path.getsize(path)
    assert 8 + length + 65536 < where < size - 65536  # outside what the source fingerprint hashes
    with open(path, "r+b") as handle:
        handle.seek(where)
        value = struct.unpack("<f", handle.read(4))[0]
        handle.seek(where)
        handle.write(struct.pack("<f", value + 0.5))


def test_resume_refuses_a_source_whose_bytes_changed_under_it(tmp_path, monkeypatch):
    import optimum_si.checkpoint.progress as st
    from optimum_si.checkpoint.index import CheckpointIndex

    source = _four_blocks(tmp_path / "dense")
    out = tmp_path / "out"
    real_write = st.write_progress

    def killed_after_block_2(folder, progress):
        real_write(folder, progress)
        if progress["finished_blocks"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(st, "write_progress", killed_after_block_2)
    with pytest.raises(KeyboardInterrupt):
        _pruner().prune(str(source), save_dir=out, dataset=token_ids())
    monkeypatch.undo()
    recorded = json.loads((_partial(out) / PROGRESS_NAME).read_text())["source_digests"]
    assert set(recorded) == {"capture", "0", "1"}
    identity = CheckpointIndex(str(source)).identity()
    _edit_in_place(source / "model.safetensors", "model.layers.1.mlp.down_proj.weight")
    assert CheckpointIndex(str(source)).identity() == identity  # the cheap fingerprint cannot see it
    with pytest.raises(ValueError, match=r"The source checkpoint .*dense changed since the unfinished run in .* read "
                                         r"block 1 \(its bytes differ\).*overwrite=True"):
        _pruner().prune(str(source), save_dir=out, dataset=token_ids())
    assert json.loads((_partial(out) / PROGRESS_NAME).read_text())["finished_blocks"] == 2  # nothing was lost
    _pruner().prune(str(source), save_dir=out, dataset=token_ids(), overwrite=True)
    fresh = tmp_path / "fresh"
    _pruner().prune(str(source), save_dir=fresh, dataset=token_ids())
    assert {k: v.tolist() for k, v in saved_tensors(out).items()} == \
        {k: v.tolist() for k, v in saved_tensors(fresh).items()}


def test_a_progress_file_without_source_digests_is_not_resumed_blindly(source, tmp_path, monkeypatch):
    out = tmp_path / "out"
    _fail_in_block(monkeypatch, 1, RuntimeError("boom"))
    with pytest.raises(RuntimeError):
        _pruner().prune(str(source), save_dir=out, dataset=token_ids())
    monkeypatch.undo()
    path = _partial(out) / PROGRESS_NAME
    progress = json.loads(path.read_text())
    del progress["source_digests"]  # as a run of an earlier optimum-si recorded it
    path.write_text(json.dumps(progress))
    with pytest.raises(ValueError, match="does not record the source bytes its blocks were computed from.*overwrite"):
        _pruner().prune(str(source), save_dir=out, dataset=token_ids())


def test_a_source_changed_while_it_is_read_is_refused(source, tmp_path, monkeypatch):
    """OWL reads each block twice (its dense profile, then the pruning): different bytes the second time stop the
    run before that block is recorded."""
    from optimum_si.checkpoint.index import CheckpointIndex

    real_read = CheckpointIndex.read
    reads: dict[str, int] = {}

    def changing(self, key, device="cpu"):
        tensor = real_read(self, key, device)
        reads[key] = reads.get(key, 0) + 1
        if key == "model.layers.1.mlp.up_proj.weight" and reads[key] > 1:
            tensor = tensor + 1.0
            self.digests[key] = "changed"
        return tensor

    monkeypatch.setattr(CheckpointIndex, "read", changing)
    with pytest.raises(ValueError, match=r"changed while this run read it \(block 1 was read twice"):
        _pruner(sparsity_profile="owl").prune(str(source), save_dir=tmp_path / "out", dataset=token_ids())
    assert json.loads((_partial(tmp_path / "out") / PROGRESS_NAME).read_text())["finished_blocks"] == 1


@pytest.mark.parametrize("size", ["100KB", "250KB", "5GB"])
def test_the_output_is_packed_into_shards_as_save_pretrained_packs_them(source, tmp_path, size):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    _pruner("magnitude").prune(str(source), save_dir=out, max_shard_size=size)
    AutoModelForCausalLM.from_pretrained(source).save_pretrained(tmp_path / "saved", max_shard_size=size)
    ours = sorted(n for n in os.listdir(out) if n.endswith(".safetensors"))
    theirs = sorted(n for n in os.listdir(tmp_path / "saved") if n.endswith(".safetensors"))
    assert abs(len(ours) - len(theirs)) <= 1, (ours, theirs)
    if size == "5GB":
        assert ours == ["model.safetensors"] and not (out / INDEX_NAME).exists()
    else:
        index = json.loads((out / INDEX_NAME).read_text())
        assert sorted(set(index["weight_map"].values())) == ours
        limit = 100_000 if size == "100KB" else 250_000
        assert all(sum(t.numel() * t.element_size() for t in load_file(out / name).values()) <= limit
                   for name in ours)
    reloaded = AutoModelForCausalLM.from_pretrained(out)  # loads with plain transformers
    assert set(reloaded.state_dict()) == set(AutoModelForCausalLM.from_pretrained(source).state_dict())
    assert not [n for n in os.listdir(out) if n.startswith("part-")]


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_every_file_honours_the_umask(source, tmp_path, mask):
    previous = os.umask(mask)
    try:
        _pruner("magnitude").prune(str(source), save_dir=tmp_path / "out", max_shard_size="100KB")
    finally:
        os.umask(previous)
    modes = {name: os.stat(tmp_path / "out" / name).st_mode & 0o777 for name in os.listdir(tmp_path / "out")}
    assert any(name.endswith(".safetensors") for name in modes)
    assert modes == dict.fromkeys(modes, 0o666 & ~mask), modes


@pytest.mark.parametrize("damage", ["deleted", "garbled"])
def test_a_checkpoint_with_a_lost_manifest_says_so(source, tmp_path, damage):
    from optimum_si.checkpoint.files import MANIFEST_NAME

    out = tmp_path / "out"
    _pruner("magnitude").prune(str(source), save_dir=out)
    if damage == "deleted":
        os.remove(out / MANIFEST_NAME)
        expected = (r"it has no \.optimum-si-manifest\.json \(deleted: optimum-si \d[^ ]*, which wrote it, always "
                    r"writes one\)")
    else:
        (out / MANIFEST_NAME).write_text('{"files": [')
        expected = r"its \.optimum-si-manifest\.json is damaged \("
    with pytest.raises(FileExistsError, match=expected) as raised:
        _pruner("magnitude").prune(str(source), save_dir=out)  # the same run: but nothing proves it
    assert "earlier optimum-si version" not in str(raised.value)
    _pruner("magnitude").prune(str(source), save_dir=out, overwrite=True)
    assert (out / MANIFEST_NAME).is_file()


def test_integer_weights_are_refused_before_anything_is_written(tmp_path):
    from safetensors.torch import save_file

    model = tiny_model("llama")
    folder = tmp_path / "dense"
    model.save_pretrained(folder)
    state = load_file(folder / "model.safetensors")
    state["model.layers.0.mlp.down_proj.weight"] = (state["model.layers.0.mlp.down_proj.weight"] * 100).to(torch.int32)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.down_proj\.weight \(I32\) is an integer weight; "
                                         r"optimum-si prunes \(and runs\) floating-point weights. Load the model in a "
                                         r"floating dtype"):
        _pruner("magnitude").prune(str(folder), save_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists() and not _partial(tmp_path / "out").exists()
