"""Which calibration windows a stage holds out from training to judge itself on."""

from __future__ import annotations

__all__ = ["validation_windows"]


def validation_windows(count: int, fraction: float) -> list[int]:
    """Indices of the `fraction` of `count` calibration windows held out from training, evenly spread so that no
    stretch of the calibration text is over-represented (at least one window is left for training)."""
    held = min(int(round(count * fraction)), count - 1)
    if held <= 0:
        return []
    return sorted({int(i * count / held) for i in range(held)})
