"""What a section's process has to hand: its settings, the way it reports records, and how it says it cannot run.

A section runs in a process of its own (`python -m benchmarks.gpu_check --child NAME --child-config FILE`), so the
parent can stop it at its budget, a CUDA fault ends only that section, and each starts with a fresh device. It
reports through a JSON-lines file that the parent reads while it runs: one line per finished record, so whatever a
section finished before a timeout or a crash is kept.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import dataclass, field
from typing import Any


class SectionSkipped(Exception):
    """The section cannot run here: `reason` says why, `needs` lists what it would need."""

    def __init__(self, reason: str, needs: list[str] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.needs = needs or []


@dataclass
class ChildContext:
    """A section's settings (written by the parent as JSON) and its report channel."""

    section: str
    mode: str  # "gpu" or "cpu"
    out: str  # the output folder ($OUT): files that must come back (the junit file)
    work: str  # scratch space on the machine's disk: checkpoints, converted models, pruned outputs
    assets: str  # the folder `--pack` filled (token ids, the SmolLM2 GGUF in parts)
    repo: str
    deadline: float  # time.time() at which the parent stops this section
    options: dict[str, Any] = field(default_factory=dict)
    channel: str = ""

    @property
    def cpu(self) -> bool:
        return self.mode == "cpu"

    @property
    def device(self) -> str:
        return "cpu" if self.cpu else "cuda"

    def seconds_left(self) -> float:
        return self.deadline - time.time()

    def emit(self, record: dict[str, Any], line: str | None = None) -> None:
        """Hand one finished record to the parent (and a line for its console)."""
        self._send({"record": record, "line": line})

    def note(self, text: str) -> None:
        self._send({"note": text})

    def _send(self, message: dict[str, Any]) -> None:
        with open(self.channel, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(message, default=_plain) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def _plain(value: Any) -> Any:
    """JSON for what sections record beyond plain types (paths, numpy or torch scalars)."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def run_child(name: str, config_path: str) -> int:
    """The body of a section's process: run the section, report a skip or an error on the channel."""
    import importlib
    import logging

    from benchmarks.gpu_check.sections import SECTIONS

    # The library's own lines (a finished block, a run's summary) go to the check's log with the section's output.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    with open(config_path, encoding="utf-8") as handle:
        ctx = ChildContext(**json.load(handle))
    try:
        module = importlib.import_module(f"benchmarks.gpu_check.{SECTIONS[name].module}")
        module.run(ctx)
    except SectionSkipped as skip:
        ctx._send({"skipped": skip.reason, "needs": skip.needs})
        return 0
    except BaseException as err:  # noqa: BLE001 - everything the section raised is its result
        ctx._send({"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-6000:]})
        return 1
    return 0
