"""Pure mask selection: which weights to zero, given importance scores.

All functions take a score tensor shaped like the weight ([out, in]) and return a boolean *keep* mask.
Selection is by exact count, never by a `<= threshold` rule: dequantised or low-bit weights tie heavily and a
threshold would overshoot the target sparsity.
"""

from __future__ import annotations

import torch

__all__ = ["lowest_k_mask", "group_keep_mask", "unstructured_mask", "nm_mask", "select_mask", "measure_sparsity", "follows_nm"]


def lowest_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep mask of `scores`' shape that drops exactly the `k` lowest entries of each row (the last dim).

    Ties at the cut are broken by position (lowest index dropped first), as a stable sort would; the k-th value
    is found with a selection instead of a full sort, which is several times faster on large blocks.
    """
    if k <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    if k >= scores.shape[-1]:
        return torch.zeros_like(scores, dtype=torch.bool)
    cut = scores.kthvalue(k, dim=-1, keepdim=True).values
    keep = ~(scores <= cut)  # not `scores > cut`: a NaN score is kept, so that the run's finiteness checks see it
    at_cut = scores == cut
    still_needed = k - (scores < cut).sum(-1, keepdim=True)
    # Usually the k-th value is unique in its row (still_needed == 1 == ties): all of `at_cut` go, and the running
    # count over the row, the costliest step here (about 40 % of the selection), is needed only for rows with more.
    tied = at_cut.sum(-1, keepdim=True) > still_needed
    if bool(tied.any()):
        rows = tied.squeeze(-1)
        keep[rows] |= at_cut[rows] & (at_cut[rows].cumsum(-1) > still_needed[rows])
    return keep


_ROW_CHUNK_ELEMENTS = 1 << 24  # per-row selection works on chunks of rows of about this many scores


def unstructured_mask(scores: torch.Tensor, sparsity: float, per_row: bool) -> torch.Tensor:
    """Drop the lowest `int(group_size * sparsity)` scores per output row (`per_row`) or per matrix."""
    if per_row:
        # Rows are independent: selecting a chunk of rows at a time bounds the selection's temporaries (about
        # 22 bytes per score) to a few hundred MB even for a 28672 x 8192 Linear.
        k = int(scores.shape[-1] * sparsity)
        rows = max(1, _ROW_CHUNK_ELEMENTS // max(1, scores.shape[-1]))
        if scores.shape[0] <= rows:
            return lowest_k_mask(scores, k)
        keep = torch.empty(scores.shape, dtype=torch.bool, device=scores.device)
        for start in range(0, scores.shape[0], rows):
            keep[start:start + rows] = lowest_k_mask(scores[start:start + rows], k)
        return keep
    flat = scores.reshape(1, -1)
    return lowest_k_mask(flat, int(flat.shape[-1] * sparsity)).reshape(scores.shape)


def group_keep_mask(grouped: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Keep the `n_keep` highest of every group along the last dim (size M).

    Ties inside a group are broken as `torch.topk(largest=False)` breaks them, which is what the Wanda and SparseGPT
    reference code uses for N:M: dequantised weights tie often, and a different tie rule moves magnitude 2:4
    perplexity on SmolLM2 by 12 % (1543 vs 1746), so matching it keeps results comparable.
    """
    dropped = torch.topk(grouped, grouped.shape[-1] - n_keep, dim=-1, largest=False).indices
    return torch.ones_like(grouped, dtype=torch.bool).scatter_(-1, dropped, False)


def nm_mask(scores: torch.Tensor, n_keep: int, m: int) -> torch.Tensor:
    """Keep the `n_keep` highest scores in every group of `m` consecutive input columns of each row."""
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"N:M sparsity needs the input size ({cols}) to be a multiple of M={m}.")
    return group_keep_mask(scores.reshape(rows, cols // m, m), n_keep).reshape(rows, cols)


def select_mask(scores: torch.Tensor, sparsity: float, n_m: tuple[int, int] | None, per_row: bool) -> torch.Tensor:
    """The mask a base pruner uses: N:M when given, else unstructured per row or per matrix."""
    if n_m is not None:
        return nm_mask(scores, *n_m)
    return unstructured_mask(scores, sparsity, per_row)


def measure_sparsity(weight: torch.Tensor) -> float:
    """Fraction of exact zeros."""
    return float((weight == 0).sum().item()) / weight.numel()


def follows_nm(weight: torch.Tensor, n_keep: int, m: int) -> bool:
    """True when every group of `m` consecutive inputs in every row has at most `n_keep` non-zeros."""
    rows, cols = weight.shape
    if cols % m:
        return False
    nonzeros = (weight.reshape(rows, cols // m, m) != 0).sum(-1)
    return bool((nonzeros <= n_keep).all())
