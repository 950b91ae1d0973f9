"""Seeded calibration windows drawn from one token stream (the convention of the Wanda / SparseGPT loaders)."""

from __future__ import annotations

import logging
import os
import random

import torch

__all__ = ["draw_windows", "check_windows_fit"]

logger = logging.getLogger(__name__)


def _available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux MemAvailable, else total RAM), None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def check_windows_fit(num_samples: int, seqlen: int) -> None:
    """Refuse, before drawing anything, a window count whose token ids alone exceed the memory of this machine."""
    needed = num_samples * (seqlen * 8 * 2 + 64)  # int64 ids and their gather index, plus each window's start
    available = _available_memory()
    if available is not None and needed > available:
        raise ValueError(
            f"{num_samples} calibration windows of {seqlen} tokens need {needed / 2**30:.1f} GiB for their token ids "
            f"alone, more than the {available / 2**30:.1f} GiB of memory available; lower num_samples or seqlen."
        )


def draw_windows(stream: torch.Tensor, num_samples: int, seqlen: int, seed: int) -> torch.Tensor:
    """`num_samples` windows of `seqlen` consecutive tokens at seeded random starts."""
    total = stream.numel()
    if total < seqlen + 1:
        raise ValueError(
            f"The calibration text has only {total} tokens, too little for windows of seqlen={seqlen} "
            f"(needs at least {seqlen + 1}). Pass more text, or lower SIConfig(seqlen=...)."
        )
    if total < num_samples * seqlen // 4:
        logger.warning(
            "The calibration text has %d tokens for %d windows of %d: the windows overlap heavily.", total, num_samples, seqlen
        )
    rng = random.Random(seed)
    starts = torch.tensor([rng.randint(0, total - seqlen - 1) for _ in range(num_samples)], dtype=torch.long)
    # One gather instead of a tensor view per window: many short windows stay cheap.
    return stream[starts[:, None] + torch.arange(seqlen)]
