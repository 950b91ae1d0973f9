import json
import os

import pytest
import torch

from optimum_si import SIConfig, SIPruner
from optimum_si.recipe.config import CONFIG_NAME
from optimum_si.reporting.report import REPORT_NAME
from tests.conftest import pruned_tiny, tiny_model, token_ids


def test_saved_checkpoint_loads_with_plain_transformers_bit_identical(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    model, pruner = pruned_tiny("sparsegpt", mask_structure="2:4")
    pruner.save(model, tmp_path / "out")
    files = set(os.listdir(tmp_path / "out"))
    assert {"config.json", "model.safetensors", CONFIG_NAME, REPORT_NAME, "README.md"} <= files
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert not {"quantization_config", "sparsity_config"} & set(config)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    ids = token_ids(2, 16)
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model(ids).logits)
    for name, tensor in load_file(tmp_path / "out" / "model.safetensors").items():
        zeros = tensor == 0
        assert not torch.signbit(tensor[zeros]).any(), f"-0.0 in {name}"


def test_recipe_round_trip_and_report(tmp_path):
    model, pruner = pruned_tiny("wanda", mask_structure="4:8", seed=7)
    pruner.save(model, tmp_path)
    again = SIPruner.from_pretrained(tmp_path)
    assert again.config.to_dict() | {"meta": None} == pruner.config.to_dict() | {"meta": None}  # run options aside
    assert SIPruner.from_pretrained(tmp_path, mask_structure="unstructured", sparsity=0.6).config.sparsity == 0.6
    report = json.loads((tmp_path / REPORT_NAME).read_text())
    assert report["sparsity"] == 0.5 and len(report["layers"]) == 14
    recipe = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert recipe["meta"]["achieved_sparsity"] == 0.5


def test_saving_again_replaces_old_shards(tmp_path):
    model, pruner = pruned_tiny()
    pruner.save(model, tmp_path, max_shard_size="20KB")
    assert os.path.isfile(tmp_path / "model.safetensors.index.json")
    pruner.save(model, tmp_path, overwrite=True)
    shards = [f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]
    assert shards == ["model.safetensors"]
    assert not os.path.exists(tmp_path / "model.safetensors.index.json")
    leftovers = [f for f in os.listdir(tmp_path.parent) if f.startswith(f".{tmp_path.name}.")]
    assert leftovers == []  # no staging or old folder, and no lock file left beside it


def test_model_card_has_metadata(tmp_path):
    from huggingface_hub import ModelCard

    model, pruner = pruned_tiny("wanda", mask_structure="2:4")
    model.config._name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    pruner.save(model, tmp_path, perplexity={"dense": 39.5, "pruned": 95.2})
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert {"sparse", "pruned", "optimum-si", "wanda", "2:4"} <= set(card.data.tags)
    assert card.data.library_name == "transformers"
    assert "95.20" in card.text and "arXiv 2306.11695" in card.text


# ---------------------------------------------------------------------------------------------- integrity
def _files(folder):
    return {name: (folder / name).read_bytes() for name in os.listdir(folder) if (folder / name).is_file()}


def test_save_keeps_the_files_it_did_not_write(tmp_path):
    from safetensors.torch import save_file

    out = tmp_path / "shared"
    out.mkdir()
    save_file({"lora_A": torch.ones(2, 2)}, out / "adapter_model.safetensors")
    (out / "notes.txt").write_text("mine")
    (out / "runs").mkdir()
    (out / "runs" / "log.txt").write_text("also mine")
    model, pruner = pruned_tiny()
    pruner.save(model, out, max_shard_size="20KB")
    assert os.path.isfile(out / "model.safetensors.index.json")
    pruner.save(model, out, overwrite=True)  # one shard now: the old shards and index go, the user's files stay
    assert sorted(f for f in os.listdir(out) if f.endswith(".safetensors")) == ["adapter_model.safetensors",
                                                                               "model.safetensors"]
    assert not os.path.exists(out / "model.safetensors.index.json")
    assert (out / "notes.txt").read_text() == "mine" and (out / "runs" / "log.txt").read_text() == "also mine"
    from safetensors.torch import load_file

    assert torch.equal(load_file(out / "adapter_model.safetensors")["lora_A"], torch.ones(2, 2))


def test_save_never_replaces_a_file_it_did_not_write(tmp_path):
    out = tmp_path / "someone-elses-model"
    tiny_model("llama", seed=3).save_pretrained(out)
    before = _files(out)
    model, pruner = pruned_tiny()
    with pytest.raises(FileExistsError, match="holds config.json, which optimum-si did not write"):
        pruner.save(model, out)
    assert _files(out) == before
    model.config._name_or_path = str(out)  # the folder the model was loaded from
    with pytest.raises(ValueError, match="source checkpoint"):
        pruner.save(model, out)
    assert _files(out) == before
    # A recipe kept beside the user's model does not make the folder an optimum-si checkpoint.
    SIConfig(method="wanda").save_pretrained(out)
    before = _files(out)
    model.config._name_or_path = "someone/else"
    with pytest.raises(FileExistsError, match="which optimum-si did not write"):
        pruner.save(model, out)
    assert _files(out) == before


def test_save_replaces_a_checkpoint_of_an_earlier_version_but_not_the_users_files(tmp_path):
    model, pruner = pruned_tiny()
    pruner.save(model, tmp_path / "out", max_shard_size="20KB")
    os.remove(tmp_path / "out" / ".optimum-si-manifest.json")  # as written before manifests existed
    (tmp_path / "out" / "adapter_model.safetensors").write_bytes(b"adapter")
    pruner.save(model, tmp_path / "out", overwrite=True)
    names = set(os.listdir(tmp_path / "out"))
    assert {"model.safetensors", "adapter_model.safetensors"} <= names and "model.safetensors.index.json" not in names
    assert not [n for n in names if n.startswith("model-")]


def test_a_failed_save_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    import errno

    import optimum_si.reporting.report

    model, pruner = pruned_tiny()
    pruner.save(model, tmp_path / "out")
    before = _files(tmp_path / "out")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(optimum_si.reporting.report.PruneReport, "save", full)
    other, other_pruner = pruned_tiny("magnitude")
    with pytest.raises(OSError, match="No space"):
        other_pruner.save(other, tmp_path / "out", overwrite=True)
    assert _files(tmp_path / "out") == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")] == []


def test_killed_between_the_renames_of_the_swap_leaves_one_whole_checkpoint(tmp_path):
    """SIGKILL right after the old folder is moved aside: the folder is absent for that instant, with the old
    checkpoint whole under a known name that the next save puts back (tests/test_folders.py covers the rest)."""
    import subprocess
    import sys
    import textwrap

    from transformers import AutoModelForCausalLM

    model, pruner = pruned_tiny("magnitude")
    pruner.save(model, tmp_path / "out", max_shard_size="20KB")
    old = _files(tmp_path / "out")
    child = textwrap.dedent(f"""
        import os, signal
        from optimum_si import SIPruner
        from tests.conftest import tiny_model, token_ids
        model = tiny_model("llama")
        pruner = SIPruner(method="wanda", num_samples=8, seqlen=32, show_progress=False)
        pruner.prune(model, dataset=token_ids())
        original, count = os.rename, []
        def rename_then_die(src, dst):
            original(src, dst)
            count.append(dst)
            if len(count) == 1:
                os.kill(os.getpid(), signal.SIGKILL)
        os.rename = rename_then_die
        pruner.save(model, {str(tmp_path / 'out')!r}, overwrite=True)
    """)
    assert subprocess.run([sys.executable, "-c", child], cwd=os.getcwd(), capture_output=True).returncode != 0
    aside = tmp_path / ".out.optimum-si-old"
    assert not (tmp_path / "out").exists() and _files(aside) == old
    AutoModelForCausalLM.from_pretrained(aside)
    model, pruner = pruned_tiny("magnitude", mask_structure="2:4")
    pruner.save(model, tmp_path / "out", overwrite=True)  # the next save recovers first, then replaces
    assert not aside.exists() and json.loads((tmp_path / "out" / CONFIG_NAME).read_text())["mask_structure"] == "2:4"


def test_charts_drawn_later_into_a_checkpoint_do_not_block_the_next_save(tmp_path):
    pytest.importorskip("matplotlib")
    from optimum_si.cli import main

    model, pruner = pruned_tiny()
    out = tmp_path / "out"
    pruner.save(model, out, plots=False)
    assert main(["report", str(out), "--plots"]) == 0  # charts written after the manifest
    drawn = {n for n in os.listdir(out) if n.endswith(".png")}
    assert drawn
    pruner.save(model, out, plots=False, overwrite=True)  # they are optimum-si's: replaced, never the user's
    assert not {n for n in os.listdir(out) if n.endswith(".png")}


def test_a_finished_checkpoint_is_replaced_only_with_overwrite(tmp_path):
    """One rule in memory and streamed: a folder holding a pruned checkpoint is refused unless overwrite=True,
    before any weight changes (streaming's side: tests/runs/test_streamed.py)."""
    from tests.conftest import assert_unchanged, snapshot

    out = tmp_path / "out"
    model, pruner = pruned_tiny()
    pruner.save(model, out)
    before = _files(out)
    with pytest.raises(FileExistsError, match=r"out already holds a pruned checkpoint; pass overwrite=True"):
        pruner.save(model, out)
    assert _files(out) == before
    dense = tiny_model("llama")
    weights = snapshot(dense)
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        SIPruner(method="magnitude", show_progress=False).prune(dense, save_dir=out)
    assert_unchanged(dense, weights)
    assert _files(out) == before
    SIPruner(method="magnitude", mask_structure="2:4", show_progress=False).prune(dense, save_dir=out, overwrite=True)
    assert json.loads((out / CONFIG_NAME).read_text())["mask_structure"] == "2:4"


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_every_saved_file_honours_the_umask(tmp_path, mask):
    model, pruner = pruned_tiny()
    previous = os.umask(mask)
    try:
        pruner.save(model, tmp_path / "out")
    finally:
        os.umask(previous)
    modes = {name: os.stat(tmp_path / "out" / name).st_mode & 0o777 for name in os.listdir(tmp_path / "out")}
    assert "model.safetensors" in modes and modes == dict.fromkeys(modes, 0o666 & ~mask), modes


def test_a_bad_shard_size_is_refused_before_any_weight_is_touched(tmp_path):
    from tests.conftest import snapshot

    model = tiny_model("llama")
    before = snapshot(model)
    pruner = SIPruner(method="wanda", num_samples=8, seqlen=32, show_progress=False)
    with pytest.raises(ValueError, match=r"max_shard_size='5XB' is not a size; use e\.g\. '5GB'"):
        pruner.prune(model, dataset=token_ids(), save_dir=tmp_path / "out", max_shard_size="5XB")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    model.save_pretrained(tmp_path / "dense")
    with pytest.raises(ValueError, match=r"max_shard_size='5XB' is not a size"):
        pruner.prune(str(tmp_path / "dense"), dataset=token_ids(), save_dir=tmp_path / "out", max_shard_size="5XB")
    assert sorted(os.listdir(tmp_path)) == ["dense"]
