"""Z-Pruner (optimum_si/methods/zpruner.py): hand-computed alpha, z-scores, scores and masks; traits."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from optimum_si.methods import get_method
from optimum_si.methods.masks import select_mask
from optimum_si.methods.zpruner import ZPruner
from optimum_si.methods.zpruner.scores import zpruner_alpha, zpruner_scores
from optimum_si.observers.stats import InputStats


def test_alpha_by_hand():
    # mean |W| = 8.06 / 8 = 1.0075; below 0.10075: 0.01, 0.05 and 0 -> f = 3/8; alpha = 0.7 * (1 - 0.3 * 3/8).
    weight = torch.tensor([[1.0, 0.01, -2.0, 0.0], [3.0, 0.05, 1.0, -1.0]])
    assert zpruner_alpha(weight) == pytest.approx(0.7 * (1 - 0.3 * 3 / 8))
    assert zpruner_alpha(torch.ones(2, 2)) == pytest.approx(0.7)


# Rows and columns of this W all have L2 norm 5, so both normalisations give W / 5 and alpha cancels:
# W / 5 = [0.6, 0.8, 0.8, -0.6], mean 0.4, deviations [0.2, 0.4, 0.4, -1.0], unbiased std sqrt(1.36 / 3).
SYMMETRIC = torch.tensor([[3.0, 4.0], [4.0, -3.0]])
_STD = math.sqrt(1.36 / 3)
CUBED_Z = torch.tensor([[0.2, 0.4], [0.4, -1.0]]).div(_STD).abs().pow(3)  # [[0.0262, 0.2097], [0.2097, 3.2762]]


def test_scores_by_hand():
    sq_norms = torch.tensor([81.0, 1.0])  # ||X|| = [9, 1], ||X||^1.5 = [27, 1]
    expected = CUBED_Z * torch.tensor([27.0, 1.0])
    assert torch.allclose(zpruner_scores(SYMMETRIC, sq_norms), expected)
    assert torch.allclose(get_method("zpruner").score(SYMMETRIC, InputStats.of_sq_norms(sq_norms)), expected)
    assert torch.allclose(zpruner_scores(SYMMETRIC, sq_norms, 0.0), CUBED_Z)


def test_masks_by_hand():
    scores = zpruner_scores(SYMMETRIC, torch.tensor([81.0, 1.0]))  # [[0.708, 0.210], [5.661, 3.276]]
    # Per matrix (the reference code's default): both weights of row 0 go.
    assert select_mask(scores, 0.5, None, per_row=False).tolist() == [[False, False], [True, True]]
    # Per output row (--per_outneuron).
    assert select_mask(scores, 0.5, None, per_row=True).tolist() == [[True, False], [True, False]]


def test_row_and_column_parts_mixed_by_alpha():
    # W = [[3, 4], [0, 5]]: rows normalise by 5 and 5, columns by 3 and sqrt(41); mean |W| = 3, so only the 0 is
    # "small": f = 1/4, alpha = 0.7 * (1 - 0.075) = 0.6475. Every step below is plain Python arithmetic.
    weight = torch.tensor([[3.0, 4.0], [0.0, 5.0]])
    rows = [3 / 5, 4 / 5, 0.0, 1.0]
    cols = [1.0, 4 / math.sqrt(41), 0.0, 5 / math.sqrt(41)]

    def cubed_z(values):
        mean, std = statistics.fmean(values), statistics.stdev(values)
        return [abs((v - mean) / std) ** 3 for v in values]

    alpha = 0.7 * (1 - 0.3 / 4)
    activation = [2.0 ** 1.5, 0.5 ** 1.5] * 2  # ||X|| = [2, 0.5]
    expected = [(alpha * r + (1 - alpha) * c) * a for r, c, a in zip(cubed_z(rows), cubed_z(cols), activation)]
    assert zpruner_alpha(weight) == pytest.approx(alpha)
    assert torch.allclose(zpruner_scores(weight, torch.tensor([4.0, 0.25])), torch.tensor(expected).reshape(2, 2),
                          rtol=1e-5)


def test_degenerate_matrices_score_zero_not_nan():
    constant = zpruner_scores(torch.full((2, 3), 0.5), torch.ones(3))
    assert constant.tolist() == [[0.0] * 3] * 2
    with_zero_row = zpruner_scores(torch.tensor([[0.0, 0.0], [1.0, -2.0]]), torch.ones(2))
    assert torch.isfinite(with_zero_row).all()


def test_input_is_not_modified():
    weight = SYMMETRIC.clone()
    zpruner_scores(weight, torch.ones(2))
    assert torch.equal(weight, SYMMETRIC)


def test_not_invariant_to_absorbable_input_scaling():
    torch.manual_seed(0)
    weight, x = torch.randn(8, 16), torch.randn(100, 16)
    s = torch.rand(16) * 10 + 0.1
    base = select_mask(zpruner_scores(weight, x.square().sum(0)), 0.5, None, per_row=False)
    assert not torch.equal(base, select_mask(zpruner_scores(weight * s, (x / s).square().sum(0)), 0.5, None,
                                             per_row=False))


def test_traits_and_variants():
    zp = get_method("zpruner")
    assert isinstance(zp, ZPruner) and zp.activation_exponent == 1.5
    assert zp.needs_data and not zp.per_row and not zp.updates_weights and not zp.fold_changes_mask
    assert "2508.15828" in zp.citation
    assert ZPruner(per_row=True, name="zpruner-row").per_row and not get_method("zpruner").per_row
    with pytest.raises(ValueError, match="exponent"):
        ZPruner(exponent=float("nan"))
    with pytest.raises(ValueError, match="valid fields: exponent, per_row"):
        ZPruner(activation_exponent=1.0)
    with pytest.raises(ValueError, match="statistics"):
        zp.score(SYMMETRIC, None)
