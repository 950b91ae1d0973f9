"""The CPU figures a GPU row is compared with, and the tolerance of each comparison.

optimum-si's rows are compared with the quality study (`benchmarks/studies/quality/results.json`, the README's
table: same weights, same calibration and evaluation windows, fp32, CPU); the reference loop's with the reference
implementations' own perplexities (`benchmarks.protocol.REFERENCE_PPL`).

Why the tolerances (relative perplexity differences; first-run acceptance bands, to tighten once measured):

- dense, 0.1 %: no pruning; only the order of float32 additions differs between the CPU and the GPU kernels
  (TF32 stays off, as torch's default is).
- Wanda, 1 %: the statistics differ in their last bits, which can flip a weight only where two scores tie to
  those bits: a handful of weights in a model.
- SparseGPT, 3 %: the OBS updates carry last-bit differences of the Hessian and its Cholesky factor (cuSOLVER against
  LAPACK) into every kept weight and every later mask choice; two runs of the reference SparseGPT code on the same
  CPU already differ by up to 3 % (`benchmarks/protocol.py`).
- SI, 5 %: two epochs of Adam on the learned scales amplify those differences further, and a block's keep/revert
  verdict can flip on a near-tie.
- the reference loop, 2 %: the protocol's own band around the reference implementations' two runs
  (`protocol.within_reference`).
"""

from __future__ import annotations

import json
from pathlib import Path

QUALITY_RESULTS = Path(__file__).resolve().parents[1] / "studies" / "quality" / "results.json"
TOLERANCE = {"dense": 0.001, "mask": 0.01, "solve": 0.03, "si": 0.05, "reference": 0.02}
HESSIAN_METHODS = ("sparsegpt", "alps")


def tolerance_for(method: str, induction: bool, impl: str) -> tuple[str, float]:
    """(which band, its relative tolerance) for a row."""
    if impl == "reference":
        return "reference", TOLERANCE["reference"]
    if method == "dense":
        return "dense", TOLERANCE["dense"]
    if induction:
        return "si", TOLERANCE["si"]
    return ("solve", TOLERANCE["solve"]) if method in HESSIAN_METHODS else ("mask", TOLERANCE["mask"])


def quality_record(key: str, path: Path = QUALITY_RESULTS) -> dict | None:
    """The quality study's record of row `key` ("wanda-50%", "sparsegpt-2:4-si", "dense"), or None."""
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for record in records:
        if record.get("key") == key:
            return record
    return None


def compare(gpu_ppl: float, cpu_ppl: float, tolerance: float) -> dict:
    """The relative difference of the GPU perplexity from the CPU one, and whether it is within `tolerance`."""
    rel = gpu_ppl / cpu_ppl - 1.0
    return {"rel_diff": rel, "tolerance": tolerance, "within": abs(rel) <= tolerance}


def cpu_comparison(key: str, method: str, pattern: str, induction: bool, impl: str, gpu_ppl: float) -> dict | None:
    """The CPU figure row `key` is compared with and the verdict, or None when there is none (other patterns,
    the tiny model of the cpu mode)."""
    band, tolerance = tolerance_for(method, induction, impl)
    if impl == "reference":
        from benchmarks.protocol import REFERENCE_PPL

        refs = REFERENCE_PPL.get((method, pattern))
        if refs is None:
            return None
        low, high = min(refs), max(refs)
        within = low * (1 - tolerance) <= gpu_ppl <= high * (1 + tolerance)
        return {"band": band, "cpu_ppl": refs, "source": "benchmarks/protocol.py REFERENCE_PPL",
                "rel_diff": gpu_ppl / ((low + high) / 2) - 1.0, "tolerance": tolerance, "within": within}
    record = quality_record(key)
    if record is None or not isinstance(record.get("ppl"), (int, float)):
        return None
    return {"band": band, "cpu_ppl": record["ppl"], "cpu_prune_s": record.get("prune_s"),
            "source": f"benchmarks/studies/quality/results.json#{key}", **compare(gpu_ppl, record["ppl"], tolerance)}
