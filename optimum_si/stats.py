"""Calibration statistics of Linear inputs, accumulated in fp32 by forward pre-hooks.

Linears that read the very same input tensor in a forward pass (q/k/v after the input norm, gate/up after the
post-attention norm) share one `InputStats`: the squared norms and the Hessian are computed once per group.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["InputStats", "InputStatsCollector", "StopForward"]

STATS_DTYPE = torch.float32  # fp16/bf16 sums of squares over 10^5+ tokens lose precision or overflow


class StopForward(Exception):
    """Raised by a hook once every hooked Linear has seen its input, to skip the rest of the block."""


class InputStats:
    """Per-input-channel sum of x^2 (Wanda) and optionally X X^T (SparseGPT's Hessian proxy)."""

    def __init__(self, in_features: int, device: torch.device, with_hessian: bool) -> None:
        self.tokens = 0
        self.sq_norms = torch.zeros(in_features, dtype=STATS_DTYPE, device=device)
        self.xtx = torch.zeros(in_features, in_features, dtype=STATS_DTYPE, device=device) if with_hessian else None
        self._hessian_factor: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def of_sq_norms(cls, sq_norms: torch.Tensor, tokens: int = 0) -> InputStats:
        """Statistics made of given per-channel sums of x^2 (no Hessian), e.g. re-collected or rescaled ones."""
        stats = cls.__new__(cls)
        stats.tokens, stats.sq_norms, stats.xtx, stats._hessian_factor = tokens, sq_norms, None, None
        return stats

    def add(self, inputs: torch.Tensor) -> None:
        x = inputs.detach().reshape(-1, inputs.shape[-1]).to(STATS_DTYPE)
        self.tokens += x.shape[0]
        self.sq_norms += x.square().sum(0)
        if self.xtx is not None:
            self.xtx.addmm_(x.T, x)

    def is_finite(self) -> bool:
        ok = bool(torch.isfinite(self.sq_norms).all())
        return ok and (self.xtx is None or bool(torch.isfinite(self.xtx).all()))

    @property
    def hessian(self) -> torch.Tensor:
        """H = 2/n X X^T (n tokens), the SparseGPT Hessian of the layer-wise squared error."""
        if self.xtx is None:
            raise RuntimeError("These statistics were collected without a Hessian.")
        return self.xtx * (2.0 / max(self.tokens, 1))

    def hessian_factor(self, dampening_frac: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached upper Cholesky factor of the damped inverse Hessian, shared by all Linears reading this input."""
        if self._hessian_factor is None:
            from .sparsegpt import inverse_hessian_factor

            self._hessian_factor = inverse_hessian_factor(self.hessian, dampening_frac)
        return self._hessian_factor


class InputStatsCollector:
    """Hooks Linears while block forwards run and accumulates their `InputStats`.

    Use as a context manager (hooks are removed on exit, also on errors) and call `end_pass()` after every
    forward. Input sharing is decided on the first forward by tensor identity and reused afterwards. With
    `stop_when_done`, the hook raises `StopForward` as soon as all hooked Linears have seen their input, so the
    caller can skip the rest of the block (e.g. computing `down_proj` itself).
    """

    def __init__(self, linears: dict[str, nn.Linear], with_hessian: bool, stop_when_done: bool = True) -> None:
        self.linears = linears
        self.with_hessian = with_hessian
        self.stop_when_done = stop_when_done
        self.stats: dict[str, InputStats] = {}
        self._owners: set[str] = set()  # Linears that accumulate; the others alias an owner's stats
        self._seen: set[str] = set()
        # Inputs of the current forward, kept alive so that identity cannot be fooled by memory reuse.
        self._live_inputs: list[tuple[torch.Tensor, str]] = []
        self._first_pass = True
        self._handles: list = []

    def _hook(self, name: str, module: nn.Linear, args: tuple) -> None:
        x = args[0]
        if self._first_pass and name not in self.stats:
            shared = next((owner for tensor, owner in self._live_inputs if tensor is x), None)
            if shared is None:
                self.stats[name] = InputStats(module.in_features, x.device, self.with_hessian)
                self._owners.add(name)
            else:
                self.stats[name] = self.stats[shared]
            self._live_inputs.append((x, name))
        if name in self._owners:
            self.stats[name].add(x)
        self._seen.add(name)
        if self.stop_when_done and len(self._seen) == len(self.linears):
            raise StopForward

    def end_pass(self) -> None:
        self._live_inputs.clear()
        self._seen.clear()
        self._first_pass = False

    def __enter__(self) -> InputStatsCollector:
        for name, module in self.linears.items():
            self._handles.append(module.register_forward_pre_hook(lambda mod, args, _n=name: self._hook(_n, mod, args)))
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
