"""RIA (optimum_si/methods/ria/): hand-computed scores and masks, the comparison group, N:M, and its traits."""

from __future__ import annotations

import pytest
import torch

from optimum_si.methods import get_method
from optimum_si.methods.masks import select_mask
from optimum_si.methods.ria import RIA
from optimum_si.methods.ria.scores import ria_scores
from optimum_si.observers.stats import InputStats

# |W| row sums [4, 6], column sums [4, 2, 1, 3]; ||X|| = [4, 1, 9, 4], so ||X||^0.5 = [2, 1, 3, 2].
WEIGHT = torch.tensor([[1.0, -2.0, 0.0, 1.0],
                       [3.0, 0.0, -1.0, 2.0]])
SQ_NORMS = torch.tensor([16.0, 1.0, 81.0, 16.0])
# Relative importance |W|/row + |W|/col, by hand:
#   row 0: 1/4+1/4 = 1/2, 2/4+2/2 = 3/2, 0, 1/4+1/3 = 7/12
#   row 1: 3/6+3/4 = 5/4, 0, 1/6+1/1 = 7/6, 2/6+2/3 = 1
RELATIVE = torch.tensor([[1 / 2, 3 / 2, 0.0, 7 / 12],
                         [5 / 4, 0.0, 7 / 6, 1.0]])


def test_scores_by_hand():
    expected = RELATIVE * torch.tensor([2.0, 1.0, 3.0, 2.0])  # [[1, 1.5, 0, 7/6], [2.5, 0, 3.5, 2]]
    assert torch.allclose(ria_scores(WEIGHT, SQ_NORMS), expected)
    # a = 1 multiplies by ||X|| itself; a = 0 leaves the relative importance alone.
    assert torch.allclose(ria_scores(WEIGHT, SQ_NORMS, 1.0), RELATIVE * torch.tensor([4.0, 1.0, 9.0, 4.0]))
    assert torch.allclose(ria_scores(WEIGHT, SQ_NORMS, 0.0), RELATIVE)
    assert torch.allclose(get_method("ria").score(WEIGHT, InputStats.of_sq_norms(SQ_NORMS)), expected)


def test_masks_by_hand():
    scores = ria_scores(WEIGHT, SQ_NORMS)
    # Per matrix (the authors' default): the 4 lowest of 1, 1.5, 0, 7/6, 2.5, 0, 3.5, 2 are 0, 0, 1 and 7/6,
    # three of them in row 0.
    assert select_mask(scores, 0.5, None, per_row=False).tolist() == [[False, True, False, False],
                                                                      [True, False, True, True]]
    # Per output row (--per_outneuron): 2 of each row.
    assert select_mask(scores, 0.5, None, per_row=True).tolist() == [[False, True, False, True],
                                                                     [True, False, True, False]]
    # 2:4 keeps the 2 best of each group of 4 columns of a row, whatever the unstructured comparison group.
    assert select_mask(scores, 0.5, (2, 4), per_row=False).tolist() == [[False, True, False, True],
                                                                        [True, False, True, False]]


def test_matches_a_loop_transcription_of_the_formula():
    torch.manual_seed(0)
    weight, sq_norms = torch.randn(3, 5), torch.rand(5) * 10
    expected = torch.empty(3, 5)
    for i in range(3):
        for j in range(5):
            row = sum(abs(float(weight[i, k])) for k in range(5))
            col = sum(abs(float(weight[k, j])) for k in range(3))
            w = abs(float(weight[i, j]))
            expected[i, j] = (w / row + w / col) * float(sq_norms[j]) ** 0.25  # ||X_j||^0.5
    assert torch.allclose(ria_scores(weight, sq_norms), expected, rtol=1e-5)


def test_zero_rows_and_columns_score_zero_not_nan():
    weight = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, -2.0]])
    scores = ria_scores(weight, torch.ones(3))
    assert torch.isfinite(scores).all()
    assert scores[0].tolist() == [0.0, 0.0, 0.0] and scores[1, 1] == 0.0


def test_input_is_not_modified():
    weight = torch.tensor([[1.0, -2.0], [3.0, 4.0]])
    before = weight.clone()
    ria_scores(weight, torch.ones(2))
    assert torch.equal(weight, before)


def test_not_invariant_to_absorbable_scales():
    # pruning-reference.md §2: RIA's row and column sums see both input-channel and output-row scales (unlike Wanda).
    torch.manual_seed(0)
    weight, x = torch.randn(8, 16), torch.randn(100, 16)
    s = torch.rand(16) * 10 + 0.1
    base = select_mask(ria_scores(weight, x.square().sum(0)), 0.5, None, per_row=False)
    assert not torch.equal(base, select_mask(ria_scores(weight * s, (x / s).square().sum(0)), 0.5, None,
                                             per_row=False))
    rows = torch.rand(8, 1) * 10 + 0.1
    assert not torch.equal(base, select_mask(ria_scores(weight * rows, x.square().sum(0)), 0.5, None, per_row=False))


def test_traits_and_variants():
    ria = get_method("ria")
    assert isinstance(ria, RIA) and ria.activation_exponent == 0.5
    assert ria.needs_data and not ria.per_row and not ria.updates_weights and not ria.needs_hessian
    assert not ria.fold_changes_mask and ria.si_statistics == "pruned" and "ICLR 2024" in ria.citation
    variant = RIA(a=1.0, per_row=True, name="ria-row")
    assert variant.per_row and variant.name == "ria-row" and not ria.per_row and get_method("ria") is ria
    with pytest.raises(ValueError, match=r"RIAConfig\.a"):
        RIA(a=-1.0)
    with pytest.raises(ValueError, match="statistics"):
        ria.score(WEIGHT, None)


def test_card_rows():
    from optimum_si.methods.base import Pattern

    assert get_method("ria").card_rows(Pattern(0.5)) == [("RIA", "activation exponent a = 0.5, per matrix")]
    assert get_method("ria").card_rows(Pattern(0.5, (2, 4))) == [
        ("RIA", "activation exponent a = 0.5, N:M groups")]
