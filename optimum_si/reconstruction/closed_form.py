"""The closed-form refit of one pruned Linear: for every output row, the least-squares weights on its kept entries
against the dense layer on the dense inputs,

    w_S = argmin || X w_S - X w_dense ||^2 = (H_SS + d I)^-1 (H w_dense)_S,    H = X^T X,

solved exactly per row (S, the row's kept inputs, differs from row to row). It is the objective SparseGPT and ALPS
approximate while they choose the mask, solved exactly once the mask is fixed. Pure tensor math.
"""

from __future__ import annotations

import torch

__all__ = ["least_squares_on_support"]

# Rows whose gathered systems are solved at once: about this many bytes of float64 per batch.
_BATCH_BYTES = 1 << 27


@torch.no_grad()
def least_squares_on_support(dense: torch.Tensor, keep: torch.Tensor, hessian: torch.Tensor,
                             damping: float) -> torch.Tensor:
    """The refit weights [out, in] (float32, exact zeros where `keep` is False) of a Linear whose dense weights are
    `dense` [out, in] and whose inputs have the Hessian `hessian` [in, in] (X^T X up to a positive factor).

    `damping` adds `damping * mean(diag H)` to the diagonal (a ridge towards zero, which keeps a row whose kept inputs
    are nearly collinear finite). Rows are grouped by their count of kept weights and solved in batches, in float64."""
    rows, cols = dense.shape
    h = hessian.double()
    ridge = float(damping) * float(torch.diagonal(h).mean().clamp_min(torch.finfo(torch.float64).tiny))
    h = h + ridge * torch.eye(cols, dtype=h.dtype, device=h.device)
    rhs = dense.double() @ h  # (H w_dense)^T per row, H symmetric
    out = torch.zeros(rows, cols, dtype=torch.float64, device=dense.device)
    counts = keep.sum(1)
    for count in torch.unique(counts).tolist():
        if count == 0:
            continue
        members = torch.nonzero(counts == count).squeeze(1)
        chunk = max(1, _BATCH_BYTES // (8 * count * count))
        for start in range(0, members.numel(), chunk):
            part = members[start:start + chunk]
            support = torch.nonzero(keep[part])[:, 1].view(part.numel(), count)  # sorted kept columns per row
            systems = h[support.unsqueeze(2), support.unsqueeze(1)]  # [rows, count, count]
            values = torch.gather(rhs[part], 1, support)
            factor, info = torch.linalg.cholesky_ex(systems)
            solved = torch.cholesky_solve(values.unsqueeze(2), factor).squeeze(2)
            bad = info != 0
            if bool(bad.any()):  # not positive definite even with the ridge: keep those rows' dense values
                solved[bad] = torch.gather(dense[part].double(), 1, support)[bad]
            out[part.unsqueeze(1), support] = solved
    return out.float()
