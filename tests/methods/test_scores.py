import torch

from optimum_si.methods.magnitude.scores import magnitude_scores
from optimum_si.methods.masks import select_mask
from optimum_si.methods.wanda.scores import wanda_scores


def test_wanda_golden_activations_flip_magnitude_order():
    # torchao's golden case: |W| = [1, 2, 3, 4] with ||X|| = [100, 10, 1, 0.1] at 50 % keeps weights 1 and 2.
    weight = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    sq_norms = torch.tensor([100.0, 10.0, 1.0, 0.1]) ** 2
    keep = select_mask(wanda_scores(weight, sq_norms), 0.5, None, per_row=True)
    assert (weight * keep).tolist() == [[1.0, 2.0, 0.0, 0.0]]


def test_wanda_mask_invariant_to_absorbable_input_scaling():
    # W[:, j] * s_j with x_j / s_j upstream: |W_ij s_j| * ||X_j|| / s_j is unchanged (pruning-reference.md §2).
    torch.manual_seed(0)
    weight, x = torch.randn(8, 16), torch.randn(100, 16)
    s = torch.rand(16) * 10 + 0.1
    base = select_mask(wanda_scores(weight, x.square().sum(0)), 0.5, None, per_row=True)
    scaled = select_mask(wanda_scores(weight * s, (x / s).square().sum(0)), 0.5, None, per_row=True)
    assert torch.equal(base, scaled)
    row_scaled = select_mask(wanda_scores(weight * (torch.rand(8, 1) + 0.1), x.square().sum(0)), 0.5, None, per_row=True)
    assert torch.equal(base, row_scaled)


def test_magnitude_mask_changes_with_input_scaling():
    torch.manual_seed(0)
    weight = torch.randn(8, 16)
    s = torch.rand(16) * 10 + 0.1
    base = select_mask(magnitude_scores(weight), 0.5, None, per_row=False)
    assert not torch.equal(base, select_mask(magnitude_scores(weight * s), 0.5, None, per_row=False))
