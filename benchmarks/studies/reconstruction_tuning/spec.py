"""How the reconstruction's defaults were chosen: Wanda 50 %, Wanda 70 % and SparseGPT 2:4 on SmolLM2-135M, without
SI and Wanda 50 % with SI, refit in closed form and by gradient at two learning rates, scored on the first 20 x 512
Jargon File tokens (the methods grid's evaluation).

Rows are listed in run order: the ones that decide the default mode first (Wanda 50 %), then the chosen settings with
SI, at 2:4 and at 70 %, and last the longer gradient refit."""

from __future__ import annotations

from benchmarks import protocol
from benchmarks.studies.patterns import pattern_fields

EVAL_WINDOWS = 20
# variant label -> the reconstruction recipe (None: not reconstructed)
VARIANTS: dict[str, dict | None] = {
    "none": None,
    "closed form": {"mode": "closed-form"},
    "gradient lr 2e-4 x1": {"mode": "gradient", "lr": 2e-4, "epochs": 1},
    "gradient lr 1e-3 x1": {"mode": "gradient", "lr": 1e-3, "epochs": 1},
    "gradient lr 2e-4 x4": {"mode": "gradient", "lr": 2e-4, "epochs": 4},
}
# (method, pattern, SI, variants) in run order: Wanda 50 % decides between the modes and learning rates; then the
# chosen mode with SI, and at 2:4 and 70 %.
CELLS = [
    ("wanda", "50%", False, ["none", "closed form", "gradient lr 2e-4 x1", "gradient lr 1e-3 x1"]),
    ("wanda", "50%", True, ["none", "closed form", "gradient lr 1e-3 x1"]),
    ("sparsegpt", "2:4", False, ["none", "closed form"]),
    ("wanda", "70%", False, ["none", "closed form"]),
    ("wanda", "50%", False, ["gradient lr 2e-4 x4"]),
]


def _key(text: str) -> str:
    return text.replace(" ", "-").replace("+", "").replace("--", "-")


def _row(method: str, pattern: str, induction: bool, variant: str) -> dict:
    refit = VARIANTS[variant]
    si = "-si" if induction else ""
    return {"key": f"{method}-{pattern}{si}-{_key(variant)}",
            "label": f"{method} {pattern}{' SI' if induction else ''}, {variant}",
            "tags": {"method": method, "pattern": pattern, "induction": induction, "variant": variant},
            "recipe": {"method": method, **pattern_fields(pattern), **({"induction": True} if induction else {}),
                       **({"reconstruction": refit} if refit is not None else {})}}


def study() -> dict:
    rows = [_row(method, pattern, induction, v) for method, pattern, induction, variants in CELLS for v in variants]
    return {
        "title": "Choosing the reconstruction's defaults",
        "description": __doc__.split("\n\n")[0].replace("\n", " "),
        "protocol": protocol.study_protocol(eval_windows=EVAL_WINDOWS, threads=2),
        "rows": rows,
    }
