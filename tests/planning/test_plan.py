"""The plan's `sparsity_for(name)` seam: the engine prunes each target at the sparsity the plan gives it."""

from __future__ import annotations

import pytest

from optimum_si import InductionConfig, SIPruner
from optimum_si.planning.plan import PrunePlan
from tests.conftest import tiny_model, token_ids


def _mlp_at_70(self, name):
    return 0.7 if ".mlp." in name else self.sparsity


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_engine_follows_the_plans_sparsity(method, monkeypatch):
    monkeypatch.setattr(PrunePlan, "sparsity_for", _mlp_at_70)
    pruner = SIPruner(method=method, num_samples=8, seqlen=32, show_progress=False)
    pruner.prune(tiny_model("llama"), dataset=token_ids())
    for name, record in pruner.report.layers.items():
        assert record.sparsity == pytest.approx(0.7 if ".mlp." in name else 0.5, abs=0.02), name  # int() cuts


def test_uniform_plan_is_the_recipe():
    pruner = SIPruner(method="wanda", num_samples=8, seqlen=32, show_progress=False)
    pruner.prune(tiny_model("llama"), dataset=token_ids())
    assert {record.sparsity for record in pruner.report.layers.values()} == {0.5}


@pytest.mark.parametrize("method", ["wanda", "magnitude", "ria", "sparsegpt"])
def test_induction_keeps_each_layers_planned_sparsity(method, monkeypatch):
    """SI's mask refreshes re-select every layer at its own planned sparsity (OWL's per-block sparsities), not at
    the recipe's: the masks do move (mask-only methods), and the counts stay those of the plan."""
    monkeypatch.setattr(PrunePlan, "sparsity_for", _mlp_at_70)
    pruner = SIPruner(method=method,
                      induction=InductionConfig(refresh_interval=1, validation_fraction=0, min_gain=0.0),
                      num_samples=8, seqlen=32, show_progress=False)
    model = tiny_model("llama")
    pruner.prune(model, dataset=token_ids())
    for name, record in pruner.report.layers.items():
        expected = 0.7 if ".mlp." in name else 0.5
        weight = model.get_submodule(name).weight
        if method == "wanda":  # per row: exactly int(d_in * s) zeros in every row
            assert bool(((weight == 0).sum(1) == int(weight.shape[1] * expected)).all()), name
        else:  # per matrix: exactly int(numel * s)
            assert record.zeros == int(record.numel * expected), name
    if method != "sparsegpt":  # a weight-updating method keeps its own mask
        assert sum(block.induction.mask_changes for block in pruner.report.blocks) > 0


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_reduce_seam_sums_statistics_before_they_are_read(method):
    """A reduction that doubles every sum (two data-parallel ranks that saw the same windows) changes no weight:
    the token count doubles with the sums, so Wanda's ranking and SparseGPT's Hessian 2/n X X^T are the same."""
    from optimum_si.pipeline.statistics import StatisticsPass
    from tests.test_golden import weights_digest

    seen = []
    plain = tiny_model("llama")
    SIPruner(method=method, num_samples=8, seqlen=32, show_progress=False).prune(plain, dataset=token_ids())
    original = StatisticsPass.__init__

    def with_reduce(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.reduce_stats = lambda tensor: (seen.append(tensor.shape), tensor.mul_(2))

    reduced = tiny_model("llama")
    try:
        StatisticsPass.__init__ = with_reduce
        SIPruner(method=method, num_samples=8, seqlen=32, show_progress=False).prune(reduced, dataset=token_ids())
    finally:
        StatisticsPass.__init__ = original
    assert seen and weights_digest(reduced) == weights_digest(plain)
