"""The method registry: built-in traits, validation of registrations, and a user's own metric end to end."""

from __future__ import annotations

import json
import os

import pytest
import torch

from optimum_si import InductionConfig, PruningMethod, SIConfig, SIPruner, register_method
from optimum_si.methods import available_methods, get_method
from optimum_si.methods.registry import _REGISTRY
from optimum_si.observers.stats import InputStats
from tests.conftest import tiny_model, token_ids


def test_builtin_traits():
    assert available_methods()[:3] == ("magnitude", "wanda", "sparsegpt")
    magnitude, wanda, sparsegpt = (get_method(n) for n in ("magnitude", "wanda", "sparsegpt"))
    assert not magnitude.needs_data and magnitude.fold_changes_mask and not magnitude.per_row
    assert wanda.needs_data and wanda.per_row and wanda.si_statistics == "dense" and not wanda.updates_weights
    assert sparsegpt.needs_hessian and sparsegpt.updates_weights and not sparsegpt.fold_changes_mask
    assert all("arXiv" in m.citation for m in (magnitude, wanda, sparsegpt))
    assert get_method("WANDA") is wanda


def test_wanda_score_is_the_metric():
    weight = torch.tensor([[1.0, -2.0, 3.0, -4.0]])
    stats = InputStats.of_sq_norms(torch.tensor([16.0, 4.0, 1.0, 0.0]))
    assert torch.equal(get_method("wanda").score(weight, stats), torch.tensor([[4.0, 4.0, 3.0, 0.0]]))


def test_unknown_method_names_the_choices():
    with pytest.raises(ValueError, match="'magnitude', 'wanda', 'sparsegpt'"):
        SIConfig(method="obs")


def test_registration_is_checked():
    class Nameless(PruningMethod):
        def score(self, weight, stats):
            return weight.abs()

    with pytest.raises(ValueError, match="lower-case `name`"):
        register_method(Nameless)

    class NoVerb(PruningMethod):
        name = "no-verb"

    with pytest.raises(TypeError, match="must implement score"):
        register_method(NoVerb)

    class Taken(PruningMethod):
        name = "wanda"

        def score(self, weight, stats):
            return weight.abs()

    with pytest.raises(ValueError, match="already registered"):
        register_method(Taken)
    with pytest.raises(TypeError):
        register_method(object)


@pytest.fixture
def row_energy():
    """A user metric: |W| * ||x|| * the row's L1 norm (RIA-like), per output row."""

    @register_method
    class RowEnergy(PruningMethod):
        name = "row-energy"
        per_row = True
        citation = "A user's own metric (test)."

        def score(self, weight, stats):
            magnitude = weight.detach().float().abs()
            return magnitude * magnitude.sum(1, keepdim=True) * stats.sq_norms.sqrt().unsqueeze(0)

    yield RowEnergy
    _REGISTRY.pop("row-energy", None)


def test_user_method_end_to_end(row_energy, tmp_path):
    model = tiny_model("llama")
    pruner = SIPruner(method="row-energy", sparsity=0.5, num_samples=8, seqlen=32, show_progress=False)
    assert pruner.config.needs_calibration
    pruner.prune(model, dataset=token_ids())
    layers = pruner.report.layers
    assert len(layers) == 14 and all(abs(r.sparsity - 0.5) < 1e-9 for r in layers.values())
    weight = model.model.layers[0].self_attn.q_proj.weight
    assert bool(((weight == 0).sum(1) == weight.shape[1] // 2).all())  # per row, as declared
    out = pruner.save(model, str(tmp_path / "out"))
    card = open(os.path.join(out, "README.md"), encoding="utf-8").read()
    assert "row-energy" in card and "A user's own metric (test)." in card
    with open(os.path.join(out, "si_config.json"), encoding="utf-8") as handle:
        assert json.load(handle)["method"] == "row-energy"
    assert SIPruner.from_pretrained(out).config.method == "row-energy"


def test_user_method_with_induction(row_energy):
    model = tiny_model("llama")
    pruner = SIPruner(method="row-energy", induction=InductionConfig(epochs=1, refresh_interval=2), num_samples=8,
                      seqlen=32, show_progress=False)
    pruner.prune(model, dataset=token_ids())
    assert all(abs(r.sparsity - 0.5) < 1e-9 for r in pruner.report.layers.values())


def test_data_free_user_method_needs_no_dataset():
    @register_method
    class Random(PruningMethod):
        name = "seeded-random"
        needs_data = False

        def score(self, weight, stats):
            return torch.rand(weight.shape, generator=torch.Generator().manual_seed(0))

    try:
        model = tiny_model("llama")
        pruner = SIPruner(method="seeded-random", show_progress=False)
        pruner.prune(model)
        assert abs(pruner.report.sparsity - 0.5) < 1e-9
    finally:
        _REGISTRY.pop("seeded-random", None)


def test_sparsegpt_card_row(tmp_path):
    from optimum_si.export.card import build_model_card

    card = str(build_model_card(None, SIConfig(method="sparsegpt", method_args={"block_size": 64}), None))
    assert "| SparseGPT | block size 64, dampening 0.01 |" in card
    assert "SparseGPT" not in str(build_model_card(None, SIConfig(method="wanda"), None)).split("## Citation")[0]
