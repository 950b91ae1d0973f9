import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from optimum_si import SIPruner
from optimum_si.streaming import INDEX_NAME, PROGRESS_NAME

from .conftest import tiny_config, tiny_model, token_ids


def _all_tensors(folder):
    tensors = {}
    for name in os.listdir(folder):
        if name.endswith(".safetensors"):
            tensors.update(load_file(os.path.join(folder, name)))
    return tensors


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "dense"
    tiny_model("llama").save_pretrained(path, max_shard_size="40KB")
    assert os.path.isfile(path / INDEX_NAME)
    return path


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
    written = _all_tensors(out)
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


@pytest.mark.parametrize("recipe", [{"method": "sparsegpt"}, {"method": "wanda", "induction": True}])
def test_killed_run_resumes_to_the_same_checkpoint(source, tmp_path, recipe):
    calib = token_ids()
    torch.save(calib, tmp_path / "calib.pt")
    reference = tmp_path / "reference"
    _pruner(**recipe).prune(str(source), save_dir=reference, dataset=calib)
    out = tmp_path / "out"
    child = textwrap.dedent(f"""
        import os, signal, torch
        import optimum_si.streaming as st
        original = st.write_progress
        def write_then_die(save_dir, progress):
            original(save_dir, progress)
            if progress["finished_blocks"] == 1:
                os.kill(os.getpid(), signal.SIGKILL)
        st.write_progress = write_then_die
        from optimum_si import SIPruner
        SIPruner(**{recipe!r}, num_samples=8, seqlen=32, show_progress=False).prune(
            {str(source)!r}, save_dir={str(out)!r}, dataset=torch.load({str(tmp_path / 'calib.pt')!r}))
    """)
    result = subprocess.run([sys.executable, "-c", child], cwd=os.getcwd(), capture_output=True)
    assert result.returncode != 0
    progress = json.loads((out / PROGRESS_NAME).read_text())
    assert progress["finished_blocks"] == 1
    assert not os.path.exists(out / "si_config.json")  # an interrupted folder never looks complete
    resumed = _pruner(**recipe)
    resumed.prune(str(source), save_dir=out, dataset=calib)
    assert {k: v.tolist() for k, v in _all_tensors(out).items()} == {k: v.tolist() for k, v in _all_tensors(reference).items()}
    assert resumed.report.sparsity == 0.5 and len(resumed.report.layers) == 14


def test_complete_folder_with_another_recipe_needs_overwrite(source, tmp_path):
    out = tmp_path / "out"
    _pruner("magnitude").prune(str(source), save_dir=out)
    assert _pruner("magnitude").prune(str(source), save_dir=out) == str(out)  # same recipe: nothing to do
    with pytest.raises(FileExistsError, match="overwrite=True"):
        _pruner("magnitude", mask_structure="2:4").prune(str(source), save_dir=out)
    _pruner("magnitude", mask_structure="2:4").prune(str(source), save_dir=out, overwrite=True)
    assert json.loads((out / "si_config.json").read_text())["mask_structure"] == "2:4"


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


def test_streaming_needs_save_dir(source):
    with pytest.raises(ValueError, match="save_dir"):
        _pruner("magnitude").prune(str(source))
