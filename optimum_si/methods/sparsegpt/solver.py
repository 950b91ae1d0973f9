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
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..masks import group_keep_mask, lowest_k_mask

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
    segment_losses: list[float] | None = None  # the same per stacked matrix


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
    segments: Sequence[int] | None = None,
) -> SparseGPTResult:
    """Prune `weight` [out, in] to `sparsity` (or N:M, N kept of M) with lazy OBS updates.

    `hessian_factor` is `inverse_hessian_factor(H, dampening_frac)`. Linears that read the same input share it and
    can be pruned in one call with their weights stacked by rows: `segments` gives each matrix's row count, so the
    adaptive mask still cuts each matrix separately (rows never interact in OBS, only through the mask).
    """
    U, dead = hessian_factor
    rows, cols = weight.shape
    segments = list(segments) if segments is not None else [rows]
    if sum(segments) != rows:
        raise ValueError(f"segments {segments} do not add up to the {rows} rows of the weight.")
    # Columns are processed one at a time: keep them contiguous by working on the transpose [in, out].
    WT = weight.detach().float().T.contiguous()
    WT[dead] = 0
    keepT = torch.ones_like(WT, dtype=torch.bool)
    loss = torch.zeros(len(segments), dtype=torch.float64, device=WT.device)
    bounds = torch.tensor([0] + segments, device=WT.device).cumsum(0).tolist()
    if n_m is not None:
        n_keep, m = n_m
        if block_size % m:
            raise ValueError(f"block_size ({block_size}) must be a multiple of M={m} for N:M SparseGPT.")

    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        W1 = WT[start:end].clone()
        U1 = U[start:end, start:end]
        d = torch.diagonal(U1).unsqueeze(1)
        errors = torch.empty_like(W1)
        block_keep = torch.ones_like(W1, dtype=torch.bool)
        if n_m is None:
            # Adaptive mask: one exact-count cut over each matrix's rows x block, by the OBS saliency w^2 / d^2.
            saliency = W1 ** 2 / d ** 2
            for lo, hi in zip(bounds[:-1], bounds[1:]):
                part = saliency[:, lo:hi]
                block_keep[:, lo:hi] = lowest_k_mask(part.reshape(1, -1), int(part.numel() * sparsity)).reshape(part.shape)
        dropped = (~block_keep).to(W1.dtype)
        for i in range(end - start):
            if n_m is not None and i % m == 0:
                # N:M groups are scored on the already-updated weights of the current group.
                group = (W1[i:i + m] ** 2 / d[i:i + m] ** 2).T
                block_keep[i:i + m] = group_keep_mask(group, n_keep).T
                dropped[i:i + m] = (~block_keep[i:i + m]).to(W1.dtype)
            err = errors[i]
            torch.mul(W1[i], dropped[i], out=err)
            err.div_(d[i])
            # Rank-1 OBS update of the rest of the block; column i itself becomes q = w - err * d (0 where pruned).
            W1[i:].addr_(U1[i, i:], err, alpha=-1.0)
        squared = errors.double().square().sum(0)
        loss += torch.stack([squared[lo:hi].sum() for lo, hi in zip(bounds[:-1], bounds[1:])]) / 2
        WT[start:end] = W1
        keepT[start:end] = block_keep
        if end < cols:
            WT[end:].sub_(U[start:end, end:].T @ errors)
    # Pruned slots must hold exact +0.0 (the update above leaves rounding residue there).
    W = torch.where(keepT, WT, torch.zeros((), dtype=WT.dtype, device=WT.device)).T.contiguous()
    return SparseGPTResult(weight=W, keep_mask=keepT.T.contiguous(), loss=float(loss.sum()),
                           segment_losses=loss.tolist())
