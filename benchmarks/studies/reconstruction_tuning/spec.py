"""How the reconstruction's defaults were chosen: Wanda 50 %, Wanda 70 % and SparseGPT 2:4 on SmolLM2-135M, without
SI, refit by gradient with several learning rates, epoch counts and with or without the norms, and in closed form,
scored on the first 20 x 512 Jargon File tokens (the methods grid's evaluation).

Rows are listed in run order: the settings that decide the default learning rate first (Wanda 50 %), then the
other knobs, then the check of the chosen setting at 70 % and 2:4."""

from __future__ import annotations

from benchmarks import protocol
from benchmarks.studies.patterns import pattern_fields

EVAL_WINDOWS = 20
# variant label -> the reconstruction recipe (None: not reconstructed)
VARIANTS: dict[str, dict | None] = {
    "none": None,
    "gradient lr 2e-4 x4": {"mode": "gradient", "lr": 2e-4, "epochs": 4},
    "closed form": {"mode": "closed-form"},
    "gradient lr 1e-3 x4": {"mode": "gradient", "lr": 1e-3, "epochs": 4},
    "gradient lr 5e-5 x4": {"mode": "gradient", "lr": 5e-5, "epochs": 4},
    "gradient lr 5e-4 x4": {"mode": "gradient", "lr": 5e-4, "epochs": 4},
    "gradient lr 2e-4 x8": {"mode": "gradient", "lr": 2e-4, "epochs": 8},
    "gradient lr 2e-4 x4 + norms": {"mode": "gradient", "lr": 2e-4, "epochs": 4, "train_norms": True},
    "gradient lr 2e-4 x4 bf16": {"mode": "gradient", "lr": 2e-4, "epochs": 4, "precision": "bfloat16"},
}
CELLS = [("wanda", "50%")] + [("wanda", "70%"), ("sparsegpt", "2:4")]


def _key(text: str) -> str:
    return text.replace(" ", "-").replace("+", "").replace("--", "-")


def _row(method: str, pattern: str, variant: str) -> dict:
    refit = VARIANTS[variant]
    return {"key": f"{method}-{pattern}-{_key(variant)}", "label": f"{method} {pattern}, {variant}",
            "tags": {"method": method, "pattern": pattern, "induction": False, "variant": variant},
            "recipe": {"method": method, **pattern_fields(pattern),
                       **({"reconstruction": refit} if refit is not None else {})}}


def study() -> dict:
    rows = [_row("wanda", "50%", v) for v in VARIANTS]
    rows += [_row(m, p, v) for m, p in CELLS[1:] for v in ("none", "gradient lr 2e-4 x4", "closed form")]
    return {
        "title": "Choosing the reconstruction's defaults",
        "description": __doc__.split("\n\n")[0].replace("\n", " "),
        "protocol": protocol.study_protocol(eval_windows=EVAL_WINDOWS, threads=2),
        "rows": rows,
    }
