import pytest
import torch

from optimum_si.methods.masks import (
    follows_nm,
    lowest_k_mask,
    measure_sparsity,
    nm_mask,
    select_mask,
    unstructured_mask,
)


def test_lowest_k_mask_golden():
    scores = torch.tensor([[3.0, 1.0, 2.0, 0.5]])
    assert lowest_k_mask(scores, 2).tolist() == [[True, False, True, False]]


def test_ties_drop_exactly_k_and_are_stable():
    # Heavy ties (as in dequantised GGUF weights): a `<= threshold` rule would drop all six.
    scores = torch.ones(1, 6)
    keep = lowest_k_mask(scores, 3)
    assert keep.tolist() == [[False, False, False, True, True, True]]


def test_selection_equals_a_stable_sort_when_only_some_rows_tie_at_the_cut():
    # Rows 0 and 2 tie at the cut, rows 1 and 3 do not: the tie rule applies to the tied rows alone.
    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(4, 12, generator=generator)
    scores[0] = torch.tensor([2.0, 1, 1, 1, 3, 1, 5, 1, 4, 1, 6, 7])
    scores[2] = 1.0
    scores[3, 5] = float("nan")  # sorts last, so it is always kept (and the run's finiteness checks see it)
    for k in range(1, 12):
        order = torch.sort(scores, dim=-1, stable=True).indices[:, :k]
        want = torch.ones_like(scores, dtype=torch.bool).scatter_(1, order, False)
        assert torch.equal(lowest_k_mask(scores, k), want), k


def test_two_four_golden():
    # torchao's golden case: weight 1..8, equal activations, 2:4 keeps the two largest of each group of four.
    scores = torch.arange(1.0, 9.0).reshape(1, 8)
    assert (scores * nm_mask(scores, 2, 4)).tolist() == [[0, 0, 3, 4, 0, 0, 7, 8]]


def test_four_eight_and_one_four():
    scores = torch.tensor([[8.0, 1, 7, 2, 6, 3, 5, 4]])
    assert nm_mask(scores, 4, 8).tolist() == [[True, False, True, False, True, False, True, False]]
    assert nm_mask(scores[:, :4], 1, 4).tolist() == [[True, False, False, False]]


def test_per_row_vs_per_matrix():
    scores = torch.tensor([[1.0, 2.0], [10.0, 20.0]])
    assert unstructured_mask(scores, 0.5, per_row=True).tolist() == [[False, True], [False, True]]
    assert unstructured_mask(scores, 0.5, per_row=False).tolist() == [[False, False], [True, True]]


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_exact_sparsity(sparsity):
    scores = torch.randn(16, 40)
    keep = select_mask(scores, sparsity, None, per_row=True)
    assert (~keep).sum().item() == 16 * int(40 * sparsity)


def test_nm_requires_divisible_columns():
    with pytest.raises(ValueError, match="multiple of M=4"):
        nm_mask(torch.randn(2, 6), 2, 4)


def test_measure_and_follows_nm():
    w = torch.tensor([[1.0, 0.0, 2.0, 0.0], [0.0, 0.0, 3.0, 4.0]])
    assert measure_sparsity(w) == 0.5
    assert follows_nm(w, 2, 4)
    assert not follows_nm(torch.ones(1, 4), 2, 4)


def test_per_row_selection_in_row_chunks_equals_whole_matrix(monkeypatch):
    import optimum_si.methods.masks as masks

    scores = torch.randint(0, 5, (37, 16)).float()  # heavy ties: the tie rule must hold inside every chunk too
    whole = masks.unstructured_mask(scores, 0.5, per_row=True)
    monkeypatch.setattr(masks, "_ROW_CHUNK_ELEMENTS", 16 * 5)  # 5 rows per chunk, the last chunk shorter
    chunked = masks.unstructured_mask(scores, 0.5, per_row=True)
    assert torch.equal(whole, chunked)
    assert (chunked.sum(1) == 8).all()
