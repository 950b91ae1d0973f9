"""The cross-domain grid: does SI's gain survive text it was not calibrated on? Each method and pattern is pruned
with calibration windows from each corpus (benchmarks/protocol.py `DOMAINS`: the Python 3.11 docs, the Jargon File,
the King James Bible), without and with SI, and every run is scored on the held-out evaluation region of every
corpus. Plain magnitude needs no data, so one run of it serves every calibration corpus.

SI variants: "default" is `induction=True`; "damped-local-noval" judges each block's keep/revert verdict on its
training windows (no held-out quarter).
"""

from __future__ import annotations

from benchmarks import protocol
from benchmarks.studies.patterns import pattern_fields

METHODS = ("wanda", "sparsegpt", "magnitude")
PATTERNS = ("50%", "2:4")
EVAL_WINDOWS = 20
# variant -> the `induction` field of its recipes; cells -> the (method, pattern, calibration) it was run on
VARIANTS: dict[str, object] = {"default": True, "damped-local-noval": {"validation_fraction": 0.0}}
EXTRA_CELLS = {"damped-local-noval": (("wanda", "50%", "pydocs"), ("sparsegpt", "50%", "pydocs"))}


def row(method: str, pattern: str, calibration: str | None, variant: str, induction: object = False) -> dict:
    """One run: `calibration` None for a run that reads no calibration data (plain magnitude)."""
    where = f"-{calibration}" if calibration else ""
    return {"key": f"{method}-{pattern}{where}-{variant}",
            "label": f"{method} {pattern}, calibrated on {calibration or 'nothing'}, "
                     + ("no SI" if variant == "none" else f"SI {variant}"),
            "tags": {"method": method, "pattern": pattern, "variant": variant, "induction": induction is not False},
            "calibration": calibration, "evaluation": list(protocol.DOMAINS),
            "recipe": {"method": method, **pattern_fields(pattern), "induction": induction}}


def study() -> dict:
    rows = []
    for method in METHODS:
        for pattern in PATTERNS:
            if method == "magnitude":
                rows.append(row(method, pattern, None, "none"))
            else:
                rows += [row(method, pattern, corpus, "none") for corpus in protocol.DOMAINS]
            rows += [row(method, pattern, corpus, "default", VARIANTS["default"]) for corpus in protocol.DOMAINS]
    for variant, cells in EXTRA_CELLS.items():
        rows += [row(method, pattern, corpus, variant, VARIANTS[variant]) for method, pattern, corpus in cells]
    return {
        "title": "Cross-domain grid: SI / no-SI perplexity for every calibration -> evaluation corpus pair",
        "description": __doc__.split("\n\n")[0].replace("\n", " "),
        "protocol": protocol.study_protocol(evaluation=protocol.DOMAINS, eval_windows=EVAL_WINDOWS, threads=1),
        "rows": rows,
    }
