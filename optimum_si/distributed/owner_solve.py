"""Weight-updating methods (SparseGPT, ALPS) solved data-parallel: each Hessian is reduced to one owner rank, which
solves the layers reading it and broadcasts their weights (see `OwnerSolve`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from .group import DataParallel, active

__all__ = ["OwnerSolve", "assign_owners", "data_parallel"]


def assign_owners(costs: Sequence[float], world_size: int) -> list[int]:
    """The rank that solves each job: longest job first to the least-loaded rank (ties: the lower rank). Pure and
    deterministic, so every rank computes the same assignment without a message."""
    loads = [0.0] * world_size
    owners = [0] * len(costs)
    for job in sorted(range(len(costs)), key=lambda j: (-costs[j], j)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        owners[job] = rank
        loads[rank] += costs[job]
    return owners


class OwnerSolve:
    """A weight-updating method (SparseGPT, ALPS) solved data-parallel: the layers reading one input (one Hessian)
    form a job; jobs are bin-packed on the ranks by their cost (rows x d^2 for the updates, d^3 for the
    factorisation), each rank solves its own jobs at once, then every job's results are broadcast from their owner
    in a fixed order. Every rank ends with the owner's bits, whatever its own arithmetic would have given.

    Every other trait and verb is the wrapped method's."""

    def __init__(self, method: Any, group: DataParallel) -> None:
        self._method = method
        self._group = group

    def __getattr__(self, name: str) -> Any:
        return getattr(self._method, name)

    def solve(self, weights: dict[str, torch.Tensor], stats: dict[str, Any], pattern: Any) -> Iterator[Any]:
        jobs: dict[int, list[str]] = {}
        for name in weights:  # by shared statistics, in order of first appearance (as the methods group them)
            jobs.setdefault(id(stats[name]), []).append(name)
        names_of = list(jobs.values())
        costs = []
        for names in names_of:
            d = weights[names[0]].shape[1]
            costs.append(float(sum(weights[n].shape[0] for n in names)) * d * d + float(d) ** 3)
        owners = assign_owners(costs, self._group.world_size)
        for job, names in enumerate(names_of):  # each partial X X^T summed into its owner's copy, in job order
            xtx = stats[names[0]].xtx
            earlier = getattr(xtx, "_optimum_si_owner", None)
            if earlier is not None:  # reduced in an earlier call (layers of one input at two sparsities)
                owners[job] = earlier
            elif getattr(xtx, "_optimum_si_partial", False):
                self._group.reduce_sum_(xtx, owners[job])
                del xtx._optimum_si_partial
                xtx._optimum_si_owner = owners[job]
        mine = {}
        for names, owner in zip(names_of, owners):
            if owner == self._group.rank:
                part = {n: weights[n] for n in names}
                mine.update({name: (w, keep, err) for name, w, keep, err in self._method.solve(part, stats, pattern)})
        for names, owner in zip(names_of, owners):
            values = [0.0] * len(names)
            if owner == self._group.rank:
                values = [float("nan") if mine[n][2] is None else float(mine[n][2]) for n in names]
            errors = torch.tensor(values, dtype=torch.float64)
            self._group.broadcast_(errors, owner)
            for name, error in zip(names, errors.tolist()):
                reference = weights[name]
                if owner == self._group.rank:
                    weight, keep, _ = mine.pop(name)
                    weight, keep = weight.float(), keep.to(torch.uint8)
                else:
                    weight = torch.empty(reference.shape, dtype=torch.float32, device=reference.device)
                    keep = torch.empty(reference.shape, dtype=torch.uint8, device=reference.device)
                self._group.broadcast_(weight, owner)
                self._group.broadcast_(keep, owner)
                yield name, weight, keep.bool(), None if error != error else error  # NaN: no estimate


def data_parallel(method: Any) -> tuple[Any, Callable[[torch.Tensor], None] | None]:
    """The method and the statistics reduction of the active data-parallel run (the method itself and None for one
    process): statistics reduced over ranks before they are read; for weight-updating methods (SparseGPT, ALPS) the
    Hessians reduced to, and solved on, owner ranks."""
    group = active()
    if group is None:
        return method, None
    if getattr(method, "updates_weights", False):
        return OwnerSolve(method, group), group.reduce_statistics_but_hessians_
    return method, group.all_reduce_sum_
