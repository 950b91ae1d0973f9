"""The quality study: perplexity of SmolLM2-135M after magnitude, Wanda and SparseGPT at 50 %, 2:4 and 4:8, without
and with Sparsity Induction, next to the dense model; the base rows are checked against the reference
implementations' perplexities (`benchmarks.protocol.REFERENCE_PPL`)."""

from __future__ import annotations

from benchmarks import protocol
from benchmarks.studies.patterns import pattern_fields

METHODS = ("magnitude", "wanda", "sparsegpt")
PATTERNS = ("50%", "2:4", "4:8")


def _row(method: str, pattern: str, induction: bool) -> dict:
    return {"key": f"{method}-{pattern}{'-si' if induction else ''}",
            "label": f"{method} {pattern}{' + SI' if induction else ''}",
            "tags": {"method": method, "pattern": pattern, "induction": induction},
            "recipe": {"method": method, **pattern_fields(pattern), "induction": induction}}


def study() -> dict:
    dense = {"key": "dense", "label": "dense model", "tags": {"method": "dense", "pattern": "-", "induction": False},
             "recipe": None}
    rows = [dense] + [_row(method, pattern, induction) for induction in (False, True) for method in METHODS
                      for pattern in PATTERNS]
    return {
        "title": "Base pruners against the reference implementations, without and with SI",
        "description": __doc__.replace("\n", " "),
        # Two threads: the reference perplexities and timings this table is compared with ran on both cores.
        "protocol": protocol.study_protocol(threads=2),
        "rows": rows,
    }
