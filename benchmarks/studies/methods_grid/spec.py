"""The methods grid: every base method x {50, 60, 70, 80 %, 2:4, 4:8}, without and with Sparsity Induction, scored on
the first 20 x 512 Jargon File tokens. "owl-wanda" is Wanda with OWL's per-block allocation, which has no N:M form
(docs/methods.md), so its N:M cells are not rows. Every method runs with its authors' defaults.

Rows are listed in run order: first the rows the targets compare (plain, then SI), then every method plain and with
SI at 50 % and 70 % (an SI/no-SI ratio for each method where it matters most), then the rest, plain before SI; so
an interrupted run has the most telling rows.
"""

from __future__ import annotations

from benchmarks import protocol
from benchmarks.studies.patterns import PATTERNS, is_n_m, pattern_fields

EVAL_WINDOWS = 20
# grid label -> the recipe fields that select it (OWL's knobs spelled out: the authors' m and lambda)
METHODS: dict[str, dict[str, object]] = {
    "magnitude": {"method": "magnitude"}, "wanda": {"method": "wanda"}, "sparsegpt": {"method": "sparsegpt"},
    "ria": {"method": "ria"}, "zpruner": {"method": "zpruner"}, "alps": {"method": "alps"},
    "owl-wanda": {"method": "wanda", "sparsity_profile": "owl", "profile_args": {"m": 5.0, "lam": 0.08}},
}
NO_NM = {"owl-wanda"}  # grid methods without an N:M form
# (description, numerator row, denominator row, largest allowed ratio); a row is (method, pattern, induction).
TARGETS = (
    ("RIA 50 % <= 1.10 x Wanda 50 %", ("ria", "50%", False), ("wanda", "50%", False), 1.10),
    ("RIA 2:4 <= 1.10 x Wanda 2:4", ("ria", "2:4", False), ("wanda", "2:4", False), 1.10),
    ("Z-Pruner 50 % <= 1.10 x Wanda 50 %", ("zpruner", "50%", False), ("wanda", "50%", False), 1.10),
    ("Z-Pruner 2:4 <= 1.10 x Wanda 2:4", ("zpruner", "2:4", False), ("wanda", "2:4", False), 1.10),
    ("ALPS 50 % <= SparseGPT 50 %", ("alps", "50%", False), ("sparsegpt", "50%", False), 1.0),
    ("ALPS 70 % <= 0.85 x SparseGPT 70 %", ("alps", "70%", False), ("sparsegpt", "70%", False), 0.85),
    ("OWL + Wanda 70 % <= 0.90 x Wanda 70 %", ("owl-wanda", "70%", False), ("wanda", "70%", False), 0.90),
    ("SI + ALPS 70 % <= ALPS 70 %", ("alps", "70%", True), ("alps", "70%", False), 1.0),
    ("SI + OWL + Wanda 70 % <= OWL + Wanda 70 %", ("owl-wanda", "70%", True), ("owl-wanda", "70%", False), 1.0),
)


def priority(cell: tuple[str, str, bool]) -> int:
    """Run order of a (method, pattern, induction) cell: the targets' rows, then 50 % and 70 %, then the rest."""
    _method, pattern, induction = cell
    if any(cell in (top, bottom) for _, top, bottom, _ in TARGETS):
        return int(induction)
    if pattern in ("50%", "70%"):
        return 2
    return 3 + int(induction)


def _row(method: str, pattern: str, induction: bool) -> dict:
    return {"key": f"{method}-{pattern}{'-si' if induction else ''}",
            "label": f"{method} {pattern}{' + SI' if induction else ''}",
            "tags": {"method": method, "pattern": pattern, "induction": induction},
            "recipe": {**METHODS[method], **pattern_fields(pattern), "induction": induction}}


def study() -> dict:
    cells = [(method, pattern, induction) for induction in (False, True) for pattern in PATTERNS
             for method in METHODS if not (method in NO_NM and is_n_m(pattern))]
    return {
        "title": "Every method x pattern, without and with SI",
        "description": __doc__.split("\n\n")[0].replace("\n", " "),
        "protocol": protocol.study_protocol(eval_windows=EVAL_WINDOWS, threads=1),
        "rows": [_row(*cell) for cell in sorted(cells, key=priority)],  # stable: table order within a priority
    }
