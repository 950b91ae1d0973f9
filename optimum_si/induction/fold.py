"""The distribution-level part of Sparsity Induction (eq. 3, 5 of arXiv 2602.21652): an equivalent per-channel scale
of every scaling group, initialised from the calibration statistics and folded into producers and consumers, so
that the dense function is unchanged (`transforms.fold_scaling`)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..modeling.weights import UndoLog
from ..observers.stats import InputStats
from .config import InductionConfig
from .transforms import fold_scaling, resolve_scaling_groups

__all__ = ["fold_distribution_level", "data_driven_scale"]


def data_driven_scale(sq_norms: torch.Tensor, tokens: int, exponent: float) -> torch.Tensor:
    """Equivalent-transform init: s_j = rms(x_j)^exponent, normalised to geometric mean 1.

    A scaled channel x_j / s_j with consumer column W[:, j] * s_j moves weight importance towards channels that carry
    large activations, which is what a per-matrix magnitude mask cannot see on its own (eq. 5 reads the statistics of
    the channel being scaled; see docs/si-design.md for why its literal (median - mean)^2 form is not used).
    """
    rms = (sq_norms.double() / max(tokens, 1)).sqrt().clamp_min(1e-8)
    scale = rms.pow(exponent)
    return (scale / scale.log().mean().exp()).clamp(1e-3, 1e3)


@torch.no_grad()
def fold_distribution_level(
    block: nn.Module,
    model_config,
    stats: dict[str, InputStats],
    linears: Mapping[str, object],
    config: InductionConfig,
    undo: UndoLog,
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Fold the data-driven equivalent scales of every scaling group into `block` (dense function unchanged) and
    rescale the cached statistics of the affected consumers to match their new inputs x / s.

    `linears`: the block's pruning targets by name. Also returns, for every target whose *rows* were divided (the
    producer of a rows group: v_proj, up_proj, an expert's up rows, GPT-2's c_attn with its v third), that row scale
    (1 on rows no group divided): a per-matrix magnitude mask must score such a target with its rows undivided,
    otherwise the channels that carry the largest activations would be the first ones pruned.

    The q/k group keeps s = 1 here: no calibration statistic of its channels is collected, and the attention logits
    are invariant to it anyway. Returns the spread (max / min) of each folded scale.
    """
    spreads = {}
    row_scales: dict[str, torch.Tensor] = {}
    adjusted: set[int] = set()
    for group in resolve_scaling_groups(block, model_config, config.groups):
        if group.spec.kind == "qk":
            continue
        sources = [_segment_statistics(segment.columns, stats) for segment in group.segments]
        if all(source is None for source in sources):
            continue
        device = next(source[0].device for source in sources if source is not None)
        parts = []
        for segment, source in zip(group.segments, sources):
            if source is None:  # e.g. experts kept dense by `ignore`: s = 1 is still an equivalent transform
                parts.append(torch.ones(segment.rows[0].out_features, dtype=torch.float64, device=device))
                continue
            sq_norms, tokens = source
            if group.spec.kv_heads:  # o_proj inputs per query head -> one value per KV channel
                rep = group.heads // group.kv_heads
                sq_norms = sq_norms.view(group.kv_heads, rep, group.head_dim).mean(1).reshape(-1)
            parts.append(data_driven_scale(sq_norms, tokens, config.init_exponent))
        scale = parts[0] if len(parts) == 1 else torch.cat(parts)
        fold_scaling(group, scale, undo=undo)
        for segment in group.segments:
            for matrix in segment.columns:
                entry = stats.get(matrix.name)
                if entry is None or id(entry) in adjusted:
                    continue
                adjusted.add(id(entry))
                column = group.consumer_scale(scale[segment.part]).to(entry.sq_norms)
                entry.sq_norms /= column.square()
                if entry.xtx is not None:
                    entry.xtx /= column.unsqueeze(0) * column.unsqueeze(1)
            if group.spec.kind == "rows":
                for matrix in segment.rows:
                    if matrix.name not in linears:
                        continue
                    part = scale[segment.part].float()
                    if matrix.target_rows is None:
                        row_scales[matrix.name] = part
                    else:  # a block of rows inside a fused target (GPT-2's v in c_attn)
                        full = row_scales.setdefault(matrix.name, torch.ones(matrix.target_out, device=part.device))
                        full[matrix.target_rows[0]:matrix.target_rows[1]] = part
        spreads[group.name] = float(scale.max() / scale.min())
    return spreads, row_scales


def _segment_statistics(columns, stats: dict[str, InputStats]) -> tuple[torch.Tensor, int] | None:
    """(sum of x^2 per channel, tokens) of the channels a segment scales, from its consumers' statistics.

    A plain consumer sees every token. Experts see only the tokens routed to them, but every token reaches exactly
    top-k experts (or all of them with SIConfig(expert_calibration='all')), so the sum over the experts' statistics counts
    each token equally often in both sums: its RMS is the all-token RMS. (An expert no token reached carries
    placeholder statistics of one token, which barely weigh against real calibration data.)
    """
    plain = [stats[m.name] for m in columns if m.expert is None and m.name in stats]
    if plain:
        return plain[0].sq_norms.double(), plain[0].tokens
    experts = list({id(s): s for s in (stats.get(m.name) for m in columns if m.expert is not None) if s}.values())
    if not experts:
        return None
    return torch.stack([s.sq_norms.double() for s in experts]).sum(0), sum(s.tokens for s in experts)
