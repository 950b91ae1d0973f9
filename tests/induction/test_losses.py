"""The induction objectives: the spectral-norm estimate against torch's exact matrix 2-norm, and the block MSE."""

from __future__ import annotations

import torch

from optimum_si.induction.losses import SpectralNorm, block_mse, power_iteration_sigma


def _matrix(rows: int, cols: int, seed: int) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


def test_power_iteration_converges_to_the_matrix_2_norm():
    weight = _matrix(48, 32, 0)
    u = torch.nn.functional.normalize(torch.ones(48), dim=0)
    v = torch.nn.functional.normalize(torch.ones(32), dim=0)
    sigma = power_iteration_sigma(weight, u, v, steps=200)
    torch.testing.assert_close(sigma, torch.linalg.matrix_norm(weight, 2), rtol=1e-4, atol=0)


def test_spectral_norm_sums_layers_and_tracks_scaled_weights():
    weights = {"a": _matrix(16, 24, 1), "b": _matrix(24, 16, 2)}
    spectral = SpectralNorm(weights, torch.Generator().manual_seed(0))
    exact = sum(float(torch.linalg.matrix_norm(w, 2)) for w in weights.values())
    assert abs(spectral.initial - exact) / exact < 1e-3  # 20 warm-up iterations at construction
    # Persistent vectors: one step per call keeps following weights that move slowly (here: scaled by 2).
    for _ in range(5):
        value = spectral({name: 2 * w for name, w in weights.items()})
    assert abs(float(value) - 2 * exact) / (2 * exact) < 1e-3


def test_spectral_estimate_is_differentiable():
    weight = _matrix(8, 8, 3).requires_grad_(True)
    spectral = SpectralNorm({"w": weight.detach()}, torch.Generator().manual_seed(0))
    spectral({"w": weight}).backward()
    u, v = spectral.vectors["w"]
    torch.testing.assert_close(weight.grad, torch.outer(u, v))  # d(u^T W v)/dW with the vectors held fixed


def test_block_mse_is_fp32_mean_square():
    out, target = torch.ones(2, 3, dtype=torch.bfloat16), torch.zeros(2, 3)
    assert block_mse(out, target).dtype == torch.float32 and float(block_mse(out, target)) == 1.0
