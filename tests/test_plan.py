"""The plan's `sparsity_for(name)` seam: the engine prunes each target at the sparsity the plan gives it."""

from __future__ import annotations

import pytest

from optimum_si import SIPruner
from optimum_si.plan import PrunePlan

from .conftest import tiny_model, token_ids


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


def test_induction_refuses_a_non_uniform_plan(monkeypatch):
    monkeypatch.setattr(PrunePlan, "sparsity_for", _mlp_at_70)
    with pytest.raises(NotImplementedError, match="per-layer sparsities"):
        SIPruner(method="wanda", induction=True, num_samples=8, seqlen=32, show_progress=False).prune(
            tiny_model("llama"), dataset=token_ids())


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_reduce_seam_sums_statistics_before_they_are_read(method):
    """A reduction that doubles every sum (two data-parallel ranks that saw the same windows) changes no weight:
    the token count doubles with the sums, so Wanda's ranking and SparseGPT's Hessian 2/n X X^T are the same."""
    from optimum_si.engine import BlockEngine

    from .test_golden import weights_digest

    seen = []
    plain = tiny_model("llama")
    SIPruner(method=method, num_samples=8, seqlen=32, show_progress=False).prune(plain, dataset=token_ids())
    original = BlockEngine.__init__

    def with_reduce(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.reduce_stats = lambda tensor: (seen.append(tensor.shape), tensor.mul_(2))

    reduced = tiny_model("llama")
    try:
        BlockEngine.__init__ = with_reduce
        SIPruner(method=method, num_samples=8, seqlen=32, show_progress=False).prune(reduced, dataset=token_ids())
    finally:
        BlockEngine.__init__ = original
    assert seen and weights_digest(reduced) == weights_digest(plain)
