"""OWL allocation (optimum_si/allocation.py): outlier ratios and per-block sparsities on hand-made inputs."""

from __future__ import annotations

import random

import pytest
import torch

from optimum_si.planning.allocation import outlier_ratio, owl_sparsities


def test_outlier_ratio_by_hand():
    # Pooled mean 40 / 10 = 4, so with m = 5 only the 31 is above 20: 1 of 10 entries.
    assert outlier_ratio([torch.tensor([1.0] * 9 + [31.0])], m=5) == pytest.approx(10.0)
    # Pooling over a block's matrices of different shapes gives the same number.
    assert outlier_ratio([torch.ones(2, 2), torch.tensor([1.0, 1, 1, 1, 1, 31])], m=5) == pytest.approx(10.0)
    # Strictly greater: mean 2.5, m = 4, threshold 10, and 10 is not an outlier.
    assert outlier_ratio([torch.tensor([0.0, 0.0, 0.0, 10.0])], m=4) == 0.0
    assert outlier_ratio([torch.tensor([0.0, 0.0, 0.0, 10.0])], m=3.9) == pytest.approx(25.0)


def test_outlier_ratio_matches_the_concatenated_definition():
    torch.manual_seed(0)
    parts = [torch.randn(16, 8).abs() ** 3, torch.randn(4, 32).abs() ** 3]
    pooled = torch.cat([p.flatten() for p in parts])
    assert outlier_ratio(parts) == pytest.approx(100.0 * float((pooled > 5 * pooled.mean()).float().mean()))


def test_outlier_ratio_refuses_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        outlier_ratio([])
    with pytest.raises(ValueError, match="owl_m"):
        outlier_ratio([torch.ones(3)], m=0)
    with pytest.raises(ValueError, match="non-finite"):
        outlier_ratio([torch.tensor([1.0, float("inf")])])


def test_sparsities_by_hand():
    # Ratios 1, 3, 5 -> [0, 0.08, 0.16] (lambda 0.08) -> minus the mean 0.08 -> densities 0.5 + [-0.08, 0, 0.08].
    assert owl_sparsities([1.0, 3.0, 5.0], 0.5, 0.08) == pytest.approx([0.58, 0.50, 0.42])
    # Units do not matter (percent or fraction): min-max normalisation removes them.
    assert owl_sparsities([0.01, 0.03, 0.05], 0.5, 0.08) == pytest.approx([0.58, 0.50, 0.42])


def test_code_mapping_vs_the_papers_bound():
    # One outlier-heavy block among four: spread [0, 0, 0, 0.16], mean 0.04.
    code = owl_sparsities([0.0, 0.0, 0.0, 1.0], 0.7, 0.08)
    assert code == pytest.approx([0.74, 0.74, 0.74, 0.58])  # 0.58 is 0.12 below the target: outside 0.7 +- 0.08
    # The paper's bound: deviations shrunk by 0.08 / 0.12, order and mean kept.
    paper = owl_sparsities([0.0, 0.0, 0.0, 1.0], 0.7, 0.08, within_lambda=True)
    assert paper == pytest.approx([0.7 + 0.04 * 2 / 3] * 3 + [0.62])


@pytest.mark.parametrize("within_lambda", [False, True])
def test_mean_is_the_target_and_the_range_holds(within_lambda):
    rng = random.Random(0)
    for _ in range(50):
        ratios = [rng.uniform(0, 10) for _ in range(rng.randint(2, 40))]
        target, lam = rng.uniform(0.3, 0.8), rng.uniform(0.0, 0.15)
        sparsities = owl_sparsities(ratios, target, lam, within_lambda=within_lambda)
        assert sum(sparsities) / len(sparsities) == pytest.approx(target, abs=1e-12)
        if within_lambda:
            assert all(target - lam - 1e-12 <= s <= target + lam + 1e-12 for s in sparsities)
        else:
            assert max(sparsities) - min(sparsities) == pytest.approx(2 * lam, abs=1e-12)
        # More outliers, lower sparsity.
        order = sorted(range(len(ratios)), key=ratios.__getitem__)
        assert all(sparsities[a] >= sparsities[b] - 1e-12 for a, b in zip(order, order[1:]))


def test_equal_ratios_and_zero_lambda_are_uniform():
    assert owl_sparsities([2.0, 2.0, 2.0], 0.6) == [0.6, 0.6, 0.6]
    assert owl_sparsities([1.0, 2.0, 3.0], 0.6, 0.0) == pytest.approx([0.6, 0.6, 0.6])


def test_out_of_range_blocks_are_refused_not_clamped():
    with pytest.raises(ValueError, match=r"outside \[0, 1\)"):
        owl_sparsities([0.0, 1.0], 0.95, 0.08)  # 0.95 + 0.08 >= 1
    assert owl_sparsities([0.0, 1.0], 0.95, 0.04) == pytest.approx([0.99, 0.91])
    with pytest.raises(ValueError, match=r"outside \[0, 1\)"):
        owl_sparsities([0.0, 1.0], 0.05, 0.08)
    for bad in ([], [1.0, float("nan")]):
        with pytest.raises(ValueError):
            owl_sparsities(bad, 0.5)
    with pytest.raises(ValueError, match="target"):
        owl_sparsities([1.0, 2.0], 1.0)


def test_wanda_metrics_to_block_sparsities():
    # Two blocks of two "matrices" each: block 1 carries one large activation channel, so more outliers and less pruning.
    torch.manual_seed(0)
    weights = [torch.randn(8, 8) for _ in range(4)]
    norms = [torch.ones(8), torch.ones(8), torch.ones(8), torch.tensor([40.0] + [1.0] * 7)]
    metrics = [w.abs() * n for w, n in zip(weights, norms)]
    ratios = [outlier_ratio(metrics[:2]), outlier_ratio(metrics[2:])]
    assert ratios[1] > ratios[0]
    assert owl_sparsities(ratios, 0.7) == pytest.approx([0.78, 0.62])
