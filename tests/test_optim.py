import math

import pytest
import torch

from optimum_si.optim import DampedAdam, training_optimizer


def test_first_step_is_adam_like_for_strong_gradients_and_zero_without_evidence():
    strong, idle = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimiser = DampedAdam([strong, idle], lr=0.1)
    strong.grad, idle.grad = torch.tensor([3.0]), torch.tensor([0.0])
    optimiser.step()
    # v-hat = 9 for `strong`, 0 for `idle`: the floor is sqrt(mean) = sqrt(4.5).
    assert math.isclose(float(strong.detach()), -0.1 * 3.0 / (3.0 + math.sqrt(4.5)), rel_tol=1e-6)
    assert float(idle.detach()) == 0.0


def test_weak_gradients_step_in_proportion_and_strong_ones_are_capped():
    weights = torch.nn.Parameter(torch.zeros(101))
    optimiser = DampedAdam([weights], lr=0.01)
    grad = torch.full((101,), 1e-4)
    grad[0] = 1.0  # one busy channel, a hundred nearly idle ones
    for _ in range(20):
        weights.grad = grad.clone()
        optimiser.step()
    plain = torch.nn.Parameter(torch.zeros(101))
    adam = torch.optim.Adam([plain], lr=0.01)
    for _ in range(20):
        plain.grad = grad.clone()
        adam.step()
    assert float(weights.detach()[0].abs()) <= 0.01 * 20 + 1e-6  # never more than lr per step
    assert float(weights.detach()[1:].abs().max()) < 0.01 * float(plain.detach()[1:].abs().max())  # Adam moves idle ones fully
    assert torch.allclose(plain[1:], plain[1].expand(100))


def test_training_optimizer_builds_what_the_field_names_with_one_floor_or_one_per_tensor():
    big, small = torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(4))
    assert type(training_optimizer("adam", [big, small], 0.1)) is torch.optim.Adam
    shared = training_optimizer("damped-adam", [big, small], 0.1)
    assert isinstance(shared, DampedAdam) and len(shared.param_groups) == 1
    own = training_optimizer("damped-adam", [big, small], 0.1, floor_per_tensor=True)
    assert len(own.param_groups) == 2
    # With one floor per tensor, a tensor with uniformly small gradients steps as far as one with large ones.
    big.grad, small.grad = torch.full((4,), 100.0), torch.full((4,), 0.01)
    own.step()
    assert torch.allclose(big.detach(), small.detach())
    with pytest.raises(ValueError, match="adam"):
        training_optimizer("sgd", [big], 0.1)
