"""Evaluation of a (pruned) model: perplexity on a text or a named set, and zero-shot scores through
lm-evaluation-harness. Imports: `data`, `modeling`."""

from __future__ import annotations

from .perplexity import perplexity
from .zero_shot import TASK_PRESETS, zero_shot

__all__ = ["perplexity", "zero_shot", "TASK_PRESETS"]
