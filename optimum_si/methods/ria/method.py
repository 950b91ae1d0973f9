"""RIA, Relative Importance and Activations (Zhang et al., "Plug-and-Play: An Efficient Post-training Pruning Method
for Large Language Models", ICLR 2024; reference code: github.com/biomedical-cybernetics/Relative-importance-and-
activation-pruning, `lib/prune.py`, `prune_ria`).

Score of weight (i, j) of a Linear [out, in]:

    RIA_ij = (|W_ij| / sum_k |W_ik|  +  |W_ij| / sum_k |W_kj|) * ||X_j||_2 ^ a

the weight's share of its output row's L1 mass plus its share of its input column's, times the input channel's
activation norm to the power a (the reference code's `--a`, default 0.5).

Decisions (docs/methods.md gives the sources):
- Comparison group: the whole matrix, as the reference code does unless `--per_outneuron` is passed (its README
  commands never pass it; pruning-reference.md §1.7 agrees). `ria_per_row=True` is the per-output-row variant.
- N:M: the generic per-row group selection (pruning-reference.md §1.4), which is the reference's "directly N:M" path.
  Its optional channel reallocation and linear-sum-assignment permutations are not implemented.
- Exact-count selection (the walker's), not the reference's `score <= sorted[k]` threshold, which drops one weight
  more than asked and more on ties.
- Knobs: `RIAConfig.a` (the code's `--a`) and `RIAConfig.per_row` (its `--per_outneuron`).
- fp32 scores; the reference sums |W| in the model's dtype (fp16). A row or column whose weights are all zero scores
  0 (the reference divides 0 by 0).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..exponent_scored import ActivationExponentMethod
from .config import RIAConfig

if TYPE_CHECKING:
    import torch

__all__ = ["RIA"]


class RIA(ActivationExponentMethod):
    """RIA as a registered method (`SIConfig(method="ria")`): the authors' defaults, a = 0.5, per-matrix masks.

    The recipe sets the knobs: `SIConfig(method="ria", method_args={"a": 1.0, "per_row": True})`. A variant
    registered under its own name, e.g. `register_method(RIA(per_row=True, name="ria-row"))`, reads the same ones.
    """

    name = "ria"
    display_name = "RIA"
    exponent_label = "activation exponent a ="
    exponent_field = "a"
    config_class = RIAConfig
    citation = ("Zhang et al., Plug-and-Play: An Efficient Post-training Pruning Method for Large Language Models "
                "(RIA), ICLR 2024.")

    def scores(self, weight: torch.Tensor, input_sq_norms: torch.Tensor) -> torch.Tensor:
        from .scores import ria_scores

        return ria_scores(weight, input_sq_norms, self.activation_exponent)
