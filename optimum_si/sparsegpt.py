"""SparseGPT: one-shot pruning with optimal-brain-surgeon weight updates.

Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot", arXiv 2301.00774
(algorithm as in IST-DASLab/sparsegpt `sparsegpt.py`, reimplemented). Glossary: W [out, in] weight, H = X X^T
Hessian proxy of the layer inputs, U the upper Cholesky factor of H^-1 (row i = OBS update for column i once the
columns before it are fixed), d_i = U_ii.

Deviation from the reference code: the adaptive mask drops *exactly* `int(numel * sparsity)` weights per lazy
block (stable sort) instead of thresholding with `<=`, so ties cannot overshoot the target.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from .masks import lowest_k_mask

__all__ = ["SparseGPTResult", "inverse_hessian_factor", "sparsegpt_prune"]

logger = logging.getLogger(__name__)

# Each failed Cholesky retries with this many times more dampening before giving up.
_DAMPENING_RETRY_FACTOR = 10.0
_MAX_RETRIES = 3


@dataclass
class SparseGPTResult:
    weight: torch.Tensor  # pruned and updated weight, fp32
    keep_mask: torch.Tensor
    loss: float  # sum over pruned weights of (w - q)^2 / d^2 / 2, the OBS error estimate


def inverse_hessian_factor(hessian: torch.Tensor, dampening_frac: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper Cholesky factor U of (H + damp I)^-1 and the mask of dead inputs (diag H == 0).

    Dead inputs get H_jj = 1 so the factorisation exists; their weights are zeroed by the caller. On a failed
    factorisation the dampening grows tenfold (with a warning naming the knob) before the last resort, an
    identity inverse (plain magnitude-like pruning for this layer).
    """
    H = hessian.detach().float().clone()
    diag = torch.diagonal(H)
    dead = diag == 0
    diag[dead] = 1.0
    frac = dampening_frac
    for attempt in range(_MAX_RETRIES + 1):
        damped = H.clone()
        torch.diagonal(damped).add_(frac * torch.mean(torch.diagonal(H)))
        factor, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0:
            U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(factor), upper=True)
            if int(info) == 0:
                if attempt:
                    logger.warning("SparseGPT: Hessian factorised only with dampening_frac=%g.", frac)
                return U, dead
        logger.warning(
            "SparseGPT: Cholesky factorisation failed with dampening_frac=%g; retrying with %g. Increase "
            "`dampening_frac` or `num_samples` to avoid this.", frac, frac * _DAMPENING_RETRY_FACTOR,
        )
        frac *= _DAMPENING_RETRY_FACTOR
    logger.warning(
        "SparseGPT: Hessian is not positive definite even with dampening_frac=%g; using an identity inverse for this "
        "layer. Increase `dampening_frac` or `num_samples`.", frac,
    )
    return torch.eye(H.shape[0], dtype=H.dtype, device=H.device), dead


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian_factor: tuple[torch.Tensor, torch.Tensor],
    sparsity: float,
    n_m: tuple[int, int] | None = None,
    block_size: int = 128,
) -> SparseGPTResult:
    """Prune `weight` [out, in] to `sparsity` (or N:M, N kept of M) with lazy OBS updates.

    `hessian_factor` is `inverse_hessian_factor(H, dampening_frac)`; it is shared by Linears with the same input.
    """
    U, dead = hessian_factor
    W = weight.detach().float().clone()
    W[:, dead] = 0
    rows, cols = W.shape
    keep = torch.ones_like(W, dtype=torch.bool)
    loss = torch.zeros((), dtype=torch.float64, device=W.device)
    if n_m is not None:
        n_keep, m = n_m
        if block_size % m:
            raise ValueError(f"block_size ({block_size}) must be a multiple of M={m} for N:M SparseGPT.")

    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        W1 = W[:, start:end].clone()
        U1 = U[start:end, start:end]
        d = torch.diagonal(U1)
        errors = torch.zeros_like(W1)
        if n_m is None:
            # Adaptive mask: one exact-count cut over the whole rows x block, scored by the OBS saliency w^2 / d^2.
            block_keep = lowest_k_mask((W1 ** 2 / d.unsqueeze(0) ** 2).reshape(1, -1), int(W1.numel() * sparsity))
            block_keep = block_keep.reshape(W1.shape)
        else:
            block_keep = torch.ones_like(W1, dtype=torch.bool)
        for i in range(end - start):
            if n_m is not None and i % m == 0:
                # N:M groups are scored on the already-updated weights of the current group.
                group = W1[:, i:i + m] ** 2 / d[i:i + m].unsqueeze(0) ** 2
                block_keep[:, i:i + m] = lowest_k_mask(group, m - n_keep)
            w = W1[:, i]
            q = torch.where(block_keep[:, i], w, torch.zeros_like(w))
            err = (w - q) / d[i]
            loss += (err.double() ** 2).sum() / 2
            W1[:, i:].sub_(err.unsqueeze(1) * U1[i, i:].unsqueeze(0))
            W1[:, i] = q
            errors[:, i] = err
        W[:, start:end] = W1
        keep[:, start:end] = block_keep
        if end < cols:
            W[:, end:].sub_(errors @ U[start:end, end:])
    # Updates can leave tiny non-zeros nowhere, but pruned slots must be exact +0.0.
    W = torch.where(keep, W, torch.zeros((), dtype=W.dtype, device=W.device))
    return SparseGPTResult(weight=W, keep_mask=keep, loss=float(loss))
