"""Section `cuda_tests`: `pytest -m gpu`, its junit XML parsed into one record per test."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from benchmarks.gpu_check.child import ChildContext

JUNIT_NAME = "pytest_gpu.xml"


def parse_junit(path: Path) -> list[dict]:
    """One record per test case: its id, outcome (passed, failed, error, skipped), seconds and message."""
    root = ElementTree.parse(path).getroot()
    records = []
    for case in root.iter("testcase"):
        outcome, message = "passed", None
        for tag in ("failure", "error", "skipped"):
            element = case.find(tag)
            if element is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (element.get("message") or element.text or "").strip()[:2000]
                break
        records.append({"kind": "test", "test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                        "seconds": float(case.get("time") or 0.0), "message": message})
    return records


def run(ctx: ChildContext) -> None:
    junit = Path(ctx.out) / JUNIT_NAME
    junit.unlink(missing_ok=True)
    # Every CUDA test lives in tests/test_gpu.py; collecting the whole suite for the marker would cost the budget
    # seconds (--pytest-paths tests does it).
    paths = ctx.options.get("pytest_paths") or ["tests/test_gpu.py"]
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", "-q", "-rA",
               "--continue-on-collection-errors", f"--junitxml={junit}", *paths]
    # pytest's output goes to the section's log (this process's stdout); the parent stops the whole process group.
    result = subprocess.run(command, cwd=ctx.repo, env={**os.environ, "PYTHONPATH": ctx.repo}, check=False,
                            timeout=max(ctx.seconds_left() - 2.0, 1.0))
    if not junit.is_file():
        raise RuntimeError(f"pytest exited with status {result.returncode} and wrote no junit XML ({command})")
    for record in parse_junit(junit):
        line = None if record["outcome"] == "passed" else f"{record['outcome']}: {record['test']}"
        ctx.emit(record, line)
    ctx.emit({"kind": "pytest", "exit_code": result.returncode, "command": command, "junit": JUNIT_NAME},
             f"pytest exited with status {result.returncode}")
