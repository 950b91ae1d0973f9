"""A baseline with the structure of the Wanda / SparseGPT reference scripts, for speed comparisons in one run.

It reproduces what those scripts (locuslab/wanda `lib/prune.py`, IST-DASLab/sparsegpt `llama.py`) spend time on,
written here from their published description, not copied: one statistics object per Linear (q/k/v each keep
their own Hessian), forward hooks that see every layer's full forward, a full dense pass per block, a
`<= threshold` mask, the per-column OBS loop on the untransposed weight, and a re-run of every block (including
the last). Quality is not the point here; the quality study (`python -m benchmarks.runner quality`) checks ours
against the published numbers.
"""

from __future__ import annotations

import torch
from torch import nn


class _Stop(Exception):
    pass


class _LayerStats:
    def __init__(self, linear: nn.Linear, hessian: bool) -> None:
        self.samples = 0
        # On the layer's device: the statistics of a model on a GPU are gathered there, as the reference scripts do.
        device = linear.weight.device
        self.scaler_row = torch.zeros(linear.in_features, device=device)
        self.H = torch.zeros(linear.in_features, linear.in_features, device=device) if hessian else None

    def add_batch(self, inp: torch.Tensor) -> None:
        x = inp.reshape(-1, inp.shape[-1]).float()
        batch = 1
        self.scaler_row *= self.samples / (self.samples + batch)
        if self.H is not None:
            self.H *= self.samples / (self.samples + batch)
        self.samples += batch
        self.scaler_row += x.norm(p=2, dim=0) ** 2 / self.samples
        if self.H is not None:
            x = (2 / self.samples) ** 0.5 * x
            self.H += x.T @ x


def _obs_prune(W: torch.Tensor, H: torch.Tensor, sparsity: float, block: int = 128, percdamp: float = 0.01) -> torch.Tensor:
    W = W.float().clone()
    H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H[range(len(H)), range(len(H))] += percdamp * torch.mean(torch.diag(H))
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    for i1 in range(0, W.shape[1], block):
        i2 = min(i1 + block, W.shape[1])
        W1, Q1, Err1 = W[:, i1:i2].clone(), torch.zeros_like(W[:, i1:i2]), torch.zeros_like(W[:, i1:i2])
        Hinv1 = Hinv[i1:i2, i1:i2]
        tmp = W1 ** 2 / torch.diag(Hinv1).reshape(1, -1) ** 2
        mask1 = tmp <= torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
        for i in range(i2 - i1):
            w, d = W1[:, i], Hinv1[i, i]
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return W


def _prune_layer(linear: nn.Linear, stats: _LayerStats, method: str, sparsity: float) -> None:
    if method == "wanda":
        metric = linear.weight.abs() * torch.sqrt(stats.scaler_row.reshape(1, -1))
        indices = torch.sort(metric, dim=-1, stable=True)[1][:, : int(metric.shape[1] * sparsity)]
        linear.weight.scatter_(1, indices, 0)
    else:
        linear.weight.copy_(_obs_prune(linear.weight, stats.H, sparsity))


@torch.no_grad()
def reference_prune(model: nn.Module, calibration: torch.Tensor, method: str, sparsity: float = 0.5) -> None:
    """Prune `model` (a Llama-family causal LM) in place the way the reference scripts do."""
    layers = model.model.layers
    inps, cache = [], {}

    def catcher(module, args, kwargs):
        inps.append(args[0] if args else kwargs["hidden_states"])
        cache.update({k: v for k, v in kwargs.items() if k != "hidden_states"})
        raise _Stop

    handle = layers[0].register_forward_pre_hook(catcher, with_kwargs=True)
    for sample in calibration.split(1):
        try:
            model(input_ids=sample, use_cache=False)
        except _Stop:
            pass
    handle.remove()
    for layer in layers:
        subset = {n: m for n, m in layer.named_modules() if isinstance(m, nn.Linear)}
        wrapped = {n: _LayerStats(m, hessian=method == "sparsegpt") for n, m in subset.items()}
        handles = [m.register_forward_hook(lambda mod, inp, out, n=n: wrapped[n].add_batch(inp[0]))
                   for n, m in subset.items()]
        for x in inps:
            layer(x, **cache)
        for h in handles:
            h.remove()
        for name, linear in subset.items():
            _prune_layer(linear, wrapped[name], method, sparsity)
        inps = [layer(x, **cache) for x in inps]
        inps = [o[0] if isinstance(o, tuple) else o for o in inps]
