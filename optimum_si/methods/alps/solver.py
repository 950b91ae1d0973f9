"""ALPS: layer-wise pruning by ADMM support search, then PCG refinement of the kept weights (pure tensor math).

Meng, Behdin, Wang & Mazumder, "ALPS: Improved Optimization for Highly Sparse One-Shot Pruning for Large Language
Models", NeurIPS 2024 (arXiv 2406.07831); reimplemented after the authors' code (github.com/mazumder-lab/ALPS,
`alps.py`, `ALPS_prune.ALPS_admm` and `cg_batch`), which was read, not copied, and is the source of every default.

Problem, for one Linear with dense weight W0 [out, in] and input Hessian H = X^T X [in, in]:

    min_W  1/2 sum_rows (W - W0) H (W - W0)^T    s.t. W in C  (at most k non-zeros per matrix, or N kept of every M)

ALPS splits W = D with D in C and runs ADMM on the augmented Lagrangian (dual V, penalty ρ):

    W <- (W0 H - V + ρ D) (H + ρ I)^-1      (one GEMM with an inverse refreshed only when ρ changes)
    D <- Π_C(W + V / ρ)                     (keep the largest |.| per matrix, or per N:M group)
    V <- V + ρ (W - D)

Every `update_every` iterations the number s of weights that entered or left the support of D since the last check
sets ρ: the faster the support moves, the faster ρ grows, which forces W and D together and freezes the support.
The final support is Π_C(W); on it, the problem is an ordinary least-squares problem per output row, solved
approximately by a few preconditioned conjugate-gradient steps (`pcg_on_support`).

Conventions (the authors' code, docs/methods.md):
- H is damped by `dampening` x mean(diag H) and then normalised to unit diagonal (W's columns scaled by
  sqrt(diag H)); the ADMM runs in that basis, so ρ is free of the activations' scale, the projection compares
  |W_ij| sqrt(H_jj) (a per-matrix Wanda metric), and plain CG there is Jacobi-preconditioned CG in the original
  basis. The damped H is also the refinement's objective (a small ridge towards W0).
- The eigendecomposition of H is computed once (float64) so that every ρ change costs one d x d product, not a
  factorisation; Linears reading the same input share it (`prepare_hessian`).

Deviations, all documented in docs/methods.md: exact-count projection (zero exactly int(numel x sparsity), stable
ties) instead of `topk` on the negated squares; the PCG stopping test uses the residual on the support (the authors'
tests the full residual, which never vanishes on a fixed support, so their loop always runs its 10 steps); a floor
on ρ. With the same count, the masks and weights equal a float64 transcription of the authors' loop (docs/methods.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions: `optimum_si.methods.alps` reads the defaults below while the command line
# validates a recipe, before torch is loaded (as the other methods' modules do).

__all__ = ["ALPSHessian", "ALPSResult", "prepare_hessian", "alps_prune", "pcg_on_support", "project"]

# The authors' code's constants (ALPS_prune.ALPS_admm and its callers in llama.py / opt.py).
DEFAULT_RHO0 = 0.1  # passed as rho=0.1 by llama.py and opt.py (their --rho flag is only written into file names)
DEFAULT_MAX_ITER = 300
DEFAULT_UPDATE_EVERY = 3
DEFAULT_MIN_ITER = 30  # `switch_iter`: the "support has settled" stop is allowed from this iteration on
DEFAULT_PCG_ITERS = 10
DEFAULT_PCG_RTOL = 1e-4
DEFAULT_DAMPENING = 0.01
# ρ schedule (authors' code): support change s relative to the kept count k -> growth factor of ρ.
_FAST, _FAST_GROWTH = 0.1, 1.3
_MEDIUM, _MEDIUM_GROWTH = 0.005, 1.2
_SLOW_GROWTH = 1.1
_SHRINK = 5.0  # ρ /= 5 while ρ has never grown: the start was so stiff that the support barely moved
_SETTLED = 3e-4  # s / k below this after `min_iter` iterations: the support has settled
_RHO_MAX = 1e6
_RHO_MIN = 1e-8  # ours: repeated shrinking could otherwise underflow V / ρ (the authors' code has no floor)
_NORM_EPS = 1e-8  # added to sqrt(diag H), as the authors do, so a zero diagonal cannot divide by zero


@dataclass
class ALPSHessian:
    """The per-input part of ALPS, shared by every Linear that reads the same input (q/k/v, gate/up).

    `h` is the damped Hessian normalised to (about) unit diagonal, `scale` the column scale sqrt(diag), `ridge`
    the damping in the normalised basis (subtracted again to report the undamped error), `eigvals`/`eigvecs` the
    eigendecomposition of `h` (float64 values, vectors in the working dtype)."""

    h: torch.Tensor
    scale: torch.Tensor
    ridge: torch.Tensor
    eigvals: torch.Tensor
    eigvecs: torch.Tensor

    def inverse(self, rho: float) -> torch.Tensor:
        """(h + ρ I)^-1 from the eigendecomposition: one d x d product instead of a factorisation per ρ."""
        inv_vals = (1.0 / (self.eigvals + rho)).to(self.eigvecs.dtype)
        return (self.eigvecs * inv_vals) @ self.eigvecs.T


@dataclass
class ALPSResult:
    weight: torch.Tensor  # pruned and refined weight [out, in], in the working dtype (float32 or float64)
    keep_mask: torch.Tensor
    loss: float  # 1/2 sum_rows (W - W0) H (W - W0)^T with the undamped H: SparseGPT's loss on the same scale
    admm_iterations: int
    rho: float  # ρ when the support search stopped
    pcg_iterations: int


def prepare_hessian(hessian: torch.Tensor, dampening: float = DEFAULT_DAMPENING) -> ALPSHessian:
    """Damp, normalise and eigendecompose `hessian` (any positive multiple of X^T X: the normalisation removes the
    scale). Works in float64 when given float64 (tests), else float32; the eigendecomposition always in float64."""
    import torch

    dtype = torch.float64 if hessian.dtype == torch.float64 else torch.float32
    h = hessian.detach().to(dtype).clone()
    mean_diag = float(torch.diagonal(h).mean())
    if not mean_diag > 0:  # no signal at all (the walker refuses all-zero inputs before this): plain magnitude
        h = torch.eye(h.shape[0], dtype=dtype, device=h.device)
        mean_diag = 1.0
    damp = dampening * mean_diag
    torch.diagonal(h).add_(damp)
    scale = torch.diagonal(h).sqrt() + _NORM_EPS
    h.div_(scale.unsqueeze(0)).div_(scale.unsqueeze(1))
    eigvals, eigvecs = torch.linalg.eigh(h.double())
    return ALPSHessian(h=h, scale=scale, ridge=damp / scale.square(), eigvals=eigvals, eigvecs=eigvecs.to(dtype))


def project(weight: torch.Tensor, sparsity: float, n_m: tuple[int, int] | None) -> torch.Tensor:
    """Keep mask of the Euclidean projection onto the sparsity set: the largest |w| per matrix, or per N:M group."""
    from ..masks import select_mask

    return select_mask(weight.abs(), sparsity, n_m, per_row=False)


def pcg_on_support(
    hessian: torch.Tensor,
    rhs: torch.Tensor,
    keep: torch.Tensor,
    x0: torch.Tensor | None = None,
    max_iter: int = DEFAULT_PCG_ITERS,
    rtol: float = DEFAULT_PCG_RTOL,
) -> tuple[torch.Tensor, int]:
    """Rows X [rows, n] that solve, each on its own support `keep[i]`, H_SS x_S = rhs_S (x = 0 off the support):
    the minimiser of 1/2 x H x^T - rhs x^T over vectors supported on S, by Jacobi-preconditioned CG, all rows at
    once (ALPS §3.3; its Algorithm 2 is CG with the iterates and residuals masked to the support).

    Stops after `max_iter` steps or when every row's residual on its support is at most `rtol` times its
    right-hand side on the support. Returns (X, steps taken). In exact arithmetic a row converges in at most
    |S_i| steps; ALPS only needs a few, starting from the ADMM weights."""
    import torch

    keep_f = keep.to(rhs.dtype)
    inv_diag = 1.0 / torch.diagonal(hessian).clamp_min(torch.finfo(hessian.dtype).tiny)
    x = (x0 if x0 is not None else torch.zeros_like(rhs)) * keep_f
    r = (rhs - x @ hessian) * keep_f
    target = rtol * (rhs * keep_f).norm(dim=1)
    z = r * inv_diag
    p = z.clone()
    rz = (r * z).sum(1)
    steps = 0
    while steps < max_iter and not bool((r.norm(dim=1) <= target).all()):
        hp = p @ hessian
        php = (p * hp).sum(1)
        # A converged row (p = 0) has p H p = 0: its step is 0, not 0/0.
        alpha = torch.where(php > 0, rz / php.clamp_min(torch.finfo(php.dtype).tiny), torch.zeros_like(php))
        x.addcmul_(alpha.unsqueeze(1), p)
        r.addcmul_(alpha.unsqueeze(1), hp, value=-1.0).mul_(keep_f)  # hp leaks off the support; the residual may not
        z = r * inv_diag
        rz_next = (r * z).sum(1)
        beta = torch.where(rz > 0, rz_next / rz.clamp_min(torch.finfo(rz.dtype).tiny), torch.zeros_like(rz))
        p = z + beta.unsqueeze(1) * p
        rz = rz_next
        steps += 1
    return x, steps


def alps_prune(
    weight: torch.Tensor,
    prepared: ALPSHessian,
    sparsity: float,
    n_m: tuple[int, int] | None = None,
    *,
    rho0: float = DEFAULT_RHO0,
    max_iter: int = DEFAULT_MAX_ITER,
    update_every: int = DEFAULT_UPDATE_EVERY,
    min_iter: int = DEFAULT_MIN_ITER,
    pcg_iters: int = DEFAULT_PCG_ITERS,
    pcg_rtol: float = DEFAULT_PCG_RTOL,
) -> ALPSResult:
    """Prune `weight` [out, in] to `sparsity` per matrix (or N:M, N kept of every M inputs) with ALPS.

    `prepared` is `prepare_hessian(H, dampening)` for the layer's input. The result has exactly the requested
    pattern: the PCG refinement moves only the kept weights."""
    import torch

    h = prepared.h
    dtype, scale = h.dtype, prepared.scale
    w0 = weight.detach().to(device=h.device, dtype=dtype) * scale  # the normalised basis: column j times sqrt(H_jj)
    target = w0 @ h  # W0 H, the linear term of the objective

    # The support is tracked as the projection's mask, not as `d != 0`: a weight that is already 0 (re-pruning a
    # sparse checkpoint) is still a kept slot of the mask, and counting it as a change would move ρ for nothing.
    support_init = project(w0, sparsity, n_m)
    d_init = w0 * support_init
    kept = int(support_init.sum())
    w, d, v = w0.clone(), d_init.clone(), torch.zeros_like(w0)
    support = support_init
    rho, grown = float(rho0), False
    inverse = prepared.inverse(rho)
    iterations = 0
    for iteration in range(max_iter):
        iterations = iteration + 1
        w = (target - v + rho * d) @ inverse
        shifted = w + v / rho
        new_support = project(shifted, sparsity, n_m)
        d = shifted * new_support
        v.add_(w - d, alpha=rho)
        if iterations % update_every:
            continue
        changed = int((new_support ^ support).sum())
        support = new_support
        ratio = changed / max(kept, 1)
        if ratio > _FAST:
            rho, grown = rho * _FAST_GROWTH, True
        elif ratio > _MEDIUM:
            rho, grown = rho * _MEDIUM_GROWTH, True
        elif changed:
            if grown:
                rho *= _SLOW_GROWTH
            else:  # the support crawls at a ρ that never had to grow: ρ was too large; restart softer
                rho /= _SHRINK
                w, d, v = w0.clone(), d_init.clone(), torch.zeros_like(w0)
                # The next check still compares with the support just seen (not the initial one), as the code does.
        elif grown:  # ρ has forced the support to stop moving
            break
        else:
            rho /= _SHRINK
        rho = min(max(rho, _RHO_MIN), _RHO_MAX)
        if iteration >= min_iter and ratio < _SETTLED:
            break
        inverse = prepared.inverse(rho)
    del d, v, inverse

    keep = project(w, sparsity, n_m)
    refined, pcg_steps = pcg_on_support(h, target, keep, x0=w * keep, max_iter=pcg_iters, rtol=pcg_rtol)
    refined = torch.where(keep, refined, torch.zeros((), dtype=dtype, device=refined.device))  # exact +0.0
    delta = refined - w0
    loss = 0.5 * float(((delta @ h) * delta).sum() - (delta.square() * prepared.ridge).sum())
    return ALPSResult(weight=refined / scale, keep_mask=keep, loss=loss, admm_iterations=iterations, rho=rho,
                      pcg_iterations=pcg_steps)
