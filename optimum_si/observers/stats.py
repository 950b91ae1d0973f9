"""Calibration statistics of Linear inputs, accumulated in fp32 by forward pre-hooks.

Linears that read the very same input tensor in a forward pass (q/k/v after the input norm, gate/up after the
post-attention norm) share one `InputStats`: the squared norms and the Hessian are computed once per group.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from ..modeling.capture import StopForward

__all__ = ["InputStats", "InputStatsCollector", "StopForward"]

STATS_DTYPE = torch.float32  # fp16/bf16 sums of squares over 10^5+ tokens lose precision or overflow


class InputStats:
    """Per-input-channel sum of x^2 (Wanda) and optionally X X^T (SparseGPT's Hessian proxy)."""

    def __init__(self, in_features: int, device: torch.device, with_hessian: bool) -> None:
        self.tokens = 0
        self.sq_norms = torch.zeros(in_features, dtype=STATS_DTYPE, device=device)
        self.xtx = torch.zeros(in_features, in_features, dtype=STATS_DTYPE, device=device) if with_hessian else None

    @classmethod
    def of_sq_norms(cls, sq_norms: torch.Tensor, tokens: int = 0) -> InputStats:
        """Statistics made of given per-channel sums of x^2 (no Hessian), e.g. re-collected or rescaled ones."""
        stats = cls.__new__(cls)
        stats.tokens, stats.sq_norms, stats.xtx = tokens, sq_norms, None
        return stats

    def add(self, inputs: torch.Tensor) -> None:
        x = inputs.detach().reshape(-1, inputs.shape[-1]).to(STATS_DTYPE)
        self.tokens += x.shape[0]
        self.sq_norms += x.square().sum(0)
        if self.xtx is not None:
            self.xtx.addmm_(x.T, x)

    def reduce_(self, op: Callable[[torch.Tensor], None]) -> None:
        """Apply an in-place reduction (e.g. `torch.distributed.all_reduce`, a sum over data-parallel ranks) to the
        token count and every accumulated sum, so that all ranks hold the statistics of all calibration tokens."""
        count = torch.tensor([float(self.tokens)], dtype=torch.float64, device=self.sq_norms.device)
        op(count)
        self.tokens = int(count.item())
        op(self.sq_norms)
        if self.xtx is not None:
            op(self.xtx)

    def is_finite(self) -> bool:
        ok = bool(torch.isfinite(self.sq_norms).all())
        return ok and (self.xtx is None or bool(torch.isfinite(self.xtx).all()))

    @property
    def hessian(self) -> torch.Tensor:
        """H = 2/n X X^T (n tokens), the SparseGPT Hessian of the layer-wise squared error."""
        if self.xtx is None:
            raise RuntimeError("These statistics were collected without a Hessian.")
        return self.xtx * (2.0 / max(self.tokens, 1))


class InputStatsCollector:
    """Hooks the layers of a block while its forwards run and accumulates their `InputStats`.

    `linears` maps names to modules (Linear, Conv1D: a forward pre-hook reads their input) or to
    `optimum_si.modeling.targets.WeightTarget`s; targets that are experts of a fused 3-D parameter are seen through a torch
    function mode instead, which catches `F.linear(x, param[e])` in the experts' eager loop, so each expert gets the
    statistics of the tokens routed to it (experts modules run their eager implementation meanwhile).

    Use as a context manager (hooks are removed on exit, also on errors) and call `end_pass()` after every
    forward. Input sharing is decided on the first forward by tensor identity and reused afterwards. With
    `stop_when_done`, the hook raises `StopForward` as soon as all hooked Linears have seen their input, so the
    caller can skip the rest of the block (e.g. computing `down_proj` itself); never with experts, which need the
    whole forward, and not on the passes numbered in `run_to_end` (counted by `end_pass()` from 0), whose outputs the
    caller wants.
    """

    def __init__(self, linears: dict[str, Any], with_hessian: bool, stop_when_done: bool = True,
                 all_tokens_to_experts: bool = False, run_to_end: Collection[int] = ()) -> None:
        self.modules: dict[str, nn.Module] = {}
        self._experts: dict[tuple[int, str, int | None], list[str]] = {}  # (module id, param, expert) -> names
        self._expert_params: dict[tuple[int, str], tuple[nn.Module, str]] = {}
        for name, item in linears.items():
            expert = getattr(item, "expert", None)
            if expert is None:
                self.modules[name] = getattr(item, "module", item)
            else:
                self._experts.setdefault(item.stats_key, []).append(name)
                self._expert_params[(id(item.module), item.param)] = (item.module, item.param)
        self.linears = linears
        self.with_hessian = with_hessian
        self.stop_when_done = stop_when_done and not self._experts
        self.run_to_end = frozenset(run_to_end)
        self._pass = 0
        self.stats: dict[str, InputStats] = {}
        self._owners: set[str] = set()  # Linears that accumulate; the others alias an owner's stats
        self._seen: set[str] = set()
        # Inputs of the current forward, kept alive so that identity cannot be fooled by memory reuse.
        self._live_inputs: list[tuple[torch.Tensor, str]] = []
        self._first_pass = True
        self._handles: list = []
        self._mode: _ExpertInputs | None = None
        self.all_tokens_to_experts = all_tokens_to_experts
        self._eager: list[tuple[Any, Any]] = []

    def _hook(self, name: str, module: nn.Module, args: tuple) -> None:
        x = args[0]
        if self._first_pass and name not in self.stats:
            shared = next((owner for tensor, owner in self._live_inputs if tensor is x), None)
            if shared is None:
                self.stats[name] = InputStats(x.shape[-1], x.device, self.with_hessian)
                self._owners.add(name)
            else:
                self.stats[name] = self.stats[shared]
            self._live_inputs.append((x, name))
        if name in self._owners:
            self.stats[name].add(x)
        self._seen.add(name)
        if self.stop_when_done and len(self._seen) == len(self.linears) and self._pass not in self.run_to_end:
            raise StopForward

    def _expert_input(self, key: tuple[int, str, int | None], x: torch.Tensor) -> None:
        names = self._experts.get(key)
        if not names:
            return
        if names[0] not in self.stats:
            shared = InputStats(x.shape[-1], x.device, self.with_hessian)
            for name in names:  # gate and up rows of one expert read the same input
                self.stats[name] = shared
        self.stats[names[0]].add(x)

    def end_pass(self) -> None:
        self._pass += 1
        self._live_inputs.clear()
        self._seen.clear()
        self._first_pass = False

    def __enter__(self) -> InputStatsCollector:
        # Experts get their (empty) statistics up front, in the order of `linears`: which experts a forward reaches
        # depends on the tokens (it differs between data-parallel ranks), and a reduction over ranks must meet the
        # same statistics in the same order. An expert no token reaches keeps tokens == 0, as when it had none.
        for keyed in self._experts.values():
            if keyed[0] not in self.stats:
                weight = self.linears[keyed[0]].weight()
                shared = InputStats(weight.shape[1], weight.device, self.with_hessian)
                for name in keyed:
                    self.stats[name] = shared
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_pre_hook(lambda mod, args, _n=name: self._hook(_n, mod, args)))
        if self._experts:
            for module, _param in self._expert_params.values():
                config = getattr(module, "config", None)
                if config is not None and hasattr(config, "_experts_implementation_internal"):
                    # Fused kernels (grouped_mm, ...) never call F.linear per expert: run the eager loop instead.
                    self._eager.append((config, config._experts_implementation_internal))
                    config._experts_implementation_internal = "eager"
            if self.all_tokens_to_experts:  # every expert computes on every token during statistics passes
                for module, _param in dict(self._expert_params.values()).items():
                    self._handles.append(module.register_forward_pre_hook(_route_to_all, with_kwargs=True))
            self._mode = _ExpertInputs(self._expert_params, self._expert_input)
            self._mode.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self._mode = None
        for config, value in reversed(self._eager):
            config._experts_implementation_internal = value
        self._eager.clear()


def _route_to_all(module: nn.Module, args: tuple, kwargs: dict):
    """Experts pre-hook: (hidden, top_k_index, top_k_weights) -> every token to every expert, at equal weights. Only
    for statistics passes, whose block outputs are thrown away."""
    names = ("hidden_states", "top_k_index", "top_k_weights")
    values = {**dict(zip(names, args)), **{name: kwargs[name] for name in names if name in kwargs}}
    hidden, index, weights = (values[name] for name in names)
    experts = getattr(module, "num_experts", None) or next(
        p.shape[0] for p in module.parameters(recurse=False) if p.dim() == 3)
    tokens = index.shape[0]
    index = torch.arange(experts, device=index.device, dtype=index.dtype).expand(tokens, experts)
    weights = torch.full((tokens, experts), 1.0 / experts, device=weights.device, dtype=weights.dtype)
    return (hidden, index, weights), {k: v for k, v in kwargs.items() if k not in names}


class _ExpertInputs(TorchFunctionMode):
    """Calls `on_input((module id, param, expert), x)` for every `F.linear(x, w)` whose `w` is one expert's slice
    `param[e]` of a tracked fused parameter (recognised by shared storage and offset, so any indexing works)."""

    def __init__(self, params: dict[tuple[int, str], tuple[nn.Module, str]], on_input) -> None:
        super().__init__()
        self._params = params
        self._on_input = on_input

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            if isinstance(weight, torch.Tensor) and weight.dim() == 2:
                for (module_id, _), (module, name) in self._params.items():
                    param = getattr(module, name)
                    if (weight.shape == param.shape[1:] and weight.device == param.device
                            and weight.untyped_storage().data_ptr() == param.untyped_storage().data_ptr()):
                        expert = (weight.storage_offset() - param.storage_offset()) // param.stride(0)
                        self._on_input((module_id, name, expert), args[0])
                        break
        return func(*args, **kwargs)
