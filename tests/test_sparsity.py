import pytest

from optimum_si import SIPruner, sparsity_report
from tests.conftest import tiny_model, token_ids


@pytest.mark.parametrize("structure", ["unstructured", "2:4"])
def test_report_from_model_and_folder_agree(structure, tmp_path):
    model = tiny_model("llama")
    pruner = SIPruner(method="wanda", mask_structure=structure, num_samples=8, seqlen=32, show_progress=False)
    pruner.prune(model, dataset=token_ids())
    pruner.save(model, tmp_path)
    in_memory, on_disk = sparsity_report(model), sparsity_report(tmp_path)
    assert in_memory["pruned_modules"] == on_disk["pruned_modules"] == 14
    assert in_memory["sparsity"] == on_disk["sparsity"] == 0.5
    assert on_disk["patterns"]["2:4"] is (structure == "2:4")
    assert not on_disk["modules"]["lm_head.weight"]["pruned"]


def test_dense_model_has_no_pruned_modules():
    report = sparsity_report(tiny_model("llama"))
    assert report["pruned_modules"] == 0 and report["sparsity"] == 0.0
    assert report["patterns"] == {"2:4": False, "4:8": False}


def test_folder_without_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="safetensors"):
        sparsity_report(tmp_path)


@pytest.mark.parametrize("shard_size", ["5GB", "20KB"], ids=["single", "sharded"])
def test_folder_report_counts_only_the_checkpoints_own_weights(tmp_path, shard_size):
    import json

    import torch
    from safetensors.torch import save_file

    model = tiny_model("llama")
    pruner = SIPruner(method="magnitude", show_progress=False)
    pruner.prune(model)
    pruner.save(model, tmp_path, max_shard_size=shard_size)
    before = sparsity_report(tmp_path)
    # A dense adapter the user keeps in the same folder is not part of the checkpoint.
    save_file({"base_model.model.layers.0.mlp.down_proj.lora_A.weight": torch.ones(4, 64)},
              str(tmp_path / "adapter_model.safetensors"))
    assert sparsity_report(tmp_path) == before
    if shard_size == "20KB":
        index = tmp_path / "model.safetensors.index.json"
        data = json.loads(index.read_text())
        data["weight_map"]["lm_head.weight"] = "../elsewhere.safetensors"
        index.write_text(json.dumps(data))
        with pytest.raises(ValueError, match="not inside"):
            sparsity_report(tmp_path)
