"""An Adam variant whose steps follow the strength of the evidence, for the stages that train on calibration text
(SI's learned scales, the reconstruction's kept weights).

Plain Adam divides each parameter's gradient by its own running RMS, so every parameter moves about `lr` per step
however weak its gradient: a channel that the calibration text hardly exercises (code tokens in a literary
calibration set, say) is moved as far as a busy one, by noise. That fits the calibration domain and hurts every
other (docs/si-design.md and docs/reconstruction.md, cross-domain results). `DampedAdam` floors the denominator at the
RMS gradient of the whole parameter group: parameters with typical or strong gradients step like Adam (at most
`lr`), while those with weak gradients step in proportion to their gradient, so parameters without evidence stay
near their start.
"""

from __future__ import annotations

import torch

from .fields import TrainingOptimizer

__all__ = ["DampedAdam", "training_optimizer"]


class DampedAdam(torch.optim.Optimizer):
    """Adam with the per-parameter denominator `sqrt(v_i)` replaced by `sqrt(v_i) + sqrt(mean_j v_j)` (the mean
    over every parameter of the group), with the usual bias corrections."""

    def __init__(self, params, lr: float = 1e-2, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-12) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}.")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D401 - torch.optim interface
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            beta1, beta2 = group["betas"]
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["m"] = torch.zeros_like(p)
                    state["v"] = torch.zeros_like(p)
                state["step"] += 1
                state["m"].mul_(beta1).add_(p.grad, alpha=1 - beta1)
                state["v"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            step = self.state[params[0]]["step"]
            m_correction, v_correction = 1 - beta1 ** step, 1 - beta2 ** step
            total = sum(p.numel() for p in params)
            floor = (sum(float(self.state[p]["v"].sum()) for p in params) / total / v_correction) ** 0.5
            for p in params:
                state = self.state[p]
                denominator = (state["v"] / v_correction).sqrt_().add_(floor + group["eps"])
                p.addcdiv_(state["m"], denominator, value=-group["lr"] / m_correction)
        return loss


def training_optimizer(name: str, params: list[torch.nn.Parameter], lr: float, *, floor_per_tensor: bool = False,
                       foreach: bool | None = None) -> torch.optim.Optimizer:
    """The optimiser a stage's `optimizer` field names: `"adam"` (torch's Adam, `foreach` passed through) or
    `"damped-adam"`. `floor_per_tensor` gives `DampedAdam` one group per tensor, so each tensor's weak-gradient floor
    is its own typical gradient (the reconstruction's Linears differ in scale); otherwise one floor is shared."""
    if name == TrainingOptimizer.DAMPED_ADAM:
        return DampedAdam([{"params": [p]} for p in params] if floor_per_tensor else params, lr=lr)
    if name == TrainingOptimizer.ADAM:
        return torch.optim.Adam(params, lr=lr, foreach=foreach)
    raise ValueError(f"Unknown optimizer {name!r}; use one of {', '.join(repr(c.value) for c in TrainingOptimizer)}.")
