"""Induction objectives (eq. 6-8 of arXiv 2602.21652): block-output reconstruction and the spectral-norm term.

The spectral norm sigma_max(W) is estimated by power iteration with persistent singular vectors (one step per
training step, as in spectral normalisation, Miyato et al. 2018), not a full SVD. With the vectors held fixed,
u^T W v is a differentiable estimate whose gradient is u v^T.
"""

from __future__ import annotations

import torch

__all__ = ["block_mse", "SpectralNorm", "power_iteration_sigma"]


def block_mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. (7): mean squared error between the induced sparse block output and the dense one, in fp32."""
    return (output.float() - target.float()).square().mean()


def power_iteration_sigma(weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, steps: int = 1) -> torch.Tensor:
    """Largest singular value of `weight`; `u`, `v` are updated in place (detached) and reused next call."""
    with torch.no_grad():
        w = weight.detach()
        for _ in range(steps):
            v.copy_(torch.nn.functional.normalize(w.T @ u, dim=0))
            u.copy_(torch.nn.functional.normalize(w @ v, dim=0))
    return u @ weight @ v


class SpectralNorm:
    """Sum over layers of sigma_max(W_l), with one persistent (u, v) pair per layer.

    `initial` is the sum at the dense weights (converged with 20 iterations), used to set alpha in
    R_p = exp(-alpha * sum ||W_l||_2) so that the exponent is about -1 at the start (si-method.md §8.7).
    """

    def __init__(self, weights: dict[str, torch.Tensor], generator: torch.Generator) -> None:
        self.vectors = {}
        total = 0.0
        for name, weight in weights.items():
            u = torch.nn.functional.normalize(torch.randn(weight.shape[0], generator=generator), dim=0).to(weight)
            v = torch.nn.functional.normalize(torch.randn(weight.shape[1], generator=generator), dim=0).to(weight)
            self.vectors[name] = (u, v)
            total += float(power_iteration_sigma(weight.float(), u, v, steps=20))
        self.initial = max(total, 1e-12)

    def __call__(self, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(power_iteration_sigma(w, *self.vectors[name]) for name, w in weights.items())
