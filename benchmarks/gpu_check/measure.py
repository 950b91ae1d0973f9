"""Seconds and device memory of one piece of work: CUDA runs asynchronously, so every clock reading waits for the
device first; memory is the caching allocator's count of live tensors (torch.cuda.max_memory_allocated), which is
what the memory model of docs/memory.md predicts, and the reserved pool next to it (what the process holds)."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from typing import Any

MB = 2**20


def _cuda(device: str) -> bool:
    return device.startswith("cuda")


def synchronize(device: str) -> None:
    if _cuda(device):
        import torch

        torch.cuda.synchronize()


class DevicePeak:
    """The peak of live device memory from `start()` on, and how far it rose above what was live at `start()`."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.baseline = 0

    def start(self) -> None:
        if _cuda(self.device):
            import torch

            torch.cuda.synchronize()
            self.baseline = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()

    def read(self) -> dict[str, float | None]:
        if not _cuda(self.device):
            return {"peak_device_mb": None, "above_start_mb": None, "peak_reserved_mb": None}
        import torch

        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return {"peak_device_mb": peak / MB, "above_start_mb": (peak - self.baseline) / MB,
                "peak_reserved_mb": torch.cuda.max_memory_reserved() / MB}


def timed(device: str, work: Callable[[], Any]) -> tuple[Any, float, dict[str, float | None]]:
    """(what `work` returned, its seconds, its device memory peak)."""
    peak = DevicePeak(device)
    peak.start()
    started = time.perf_counter()
    result = work()
    synchronize(device)
    return result, time.perf_counter() - started, peak.read()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB
