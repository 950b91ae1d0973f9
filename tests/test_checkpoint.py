import json
import os

import torch

from optimum_si import SIPruner
from optimum_si.config import CONFIG_NAME
from optimum_si.report import REPORT_NAME

from .conftest import tiny_model, token_ids


def _pruned(method="wanda", **kwargs):
    model = tiny_model("llama")
    pruner = SIPruner(method=method, num_samples=8, seqlen=32, show_progress=False, **kwargs)
    pruner.prune(model, dataset=token_ids())
    return model, pruner


def test_saved_checkpoint_loads_with_plain_transformers_bit_identical(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    model, pruner = _pruned("sparsegpt", mask_structure="2:4")
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
    model, pruner = _pruned("wanda", mask_structure="4:8", seed=7)
    pruner.save(model, tmp_path)
    again = SIPruner.from_pretrained(tmp_path)
    assert again.config == pruner.config
    assert SIPruner.from_pretrained(tmp_path, mask_structure="unstructured", sparsity=0.6).config.sparsity == 0.6
    report = json.loads((tmp_path / REPORT_NAME).read_text())
    assert report["sparsity"] == 0.5 and len(report["layers"]) == 14
    recipe = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert recipe["meta"]["achieved_sparsity"] == 0.5


def test_saving_again_replaces_old_shards(tmp_path):
    model, pruner = _pruned()
    pruner.save(model, tmp_path, max_shard_size="20KB")
    assert os.path.isfile(tmp_path / "model.safetensors.index.json")
    pruner.save(model, tmp_path)
    shards = [f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]
    assert shards == ["model.safetensors"]
    assert not os.path.exists(tmp_path / "model.safetensors.index.json")
    assert not [f for f in os.listdir(tmp_path.parent) if f.startswith(f".{tmp_path.name}.")]


def test_model_card_has_metadata(tmp_path):
    from huggingface_hub import ModelCard

    model, pruner = _pruned("wanda", mask_structure="2:4")
    model.config._name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    pruner.save(model, tmp_path, perplexity={"dense": 39.5, "pruned": 95.2})
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert {"sparse", "pruned", "optimum-si", "wanda", "2:4"} <= set(card.data.tags)
    assert card.data.library_name == "transformers"
    assert "95.20" in card.text and "arXiv 2306.11695" in card.text
