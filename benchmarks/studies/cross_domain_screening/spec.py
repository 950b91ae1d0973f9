"""The screening of SI variants that chose today's SI defaults: Wanda 50 % calibrated on the King James Bible (the
cross-domain grid's worst cell at the time), scored on every corpus, with the SI of the release before: Adam on the
log-scales, the dense model's own block outputs as target ("global"), no held-out windows. Each variant changes
that SI in one or two knobs; the base rows are the plain runs the grid cells of that time compared against.
"""

from __future__ import annotations

from benchmarks import protocol
from benchmarks.studies.cross_domain.spec import EVAL_WINDOWS, row

# The SI defaults of the release the screening ran on, and each variant's changes to them.
PREVIOUS_DEFAULTS = {"optimizer": "adam", "target": "global", "validation_fraction": 0.0}
VARIANTS: dict[str, dict[str, object]] = {
    "default": {},
    "local": {"target": "local"},
    "lr3e-3": {"lr": 0.003},
    "rows": {"col_scales": False},
    "damped": {"optimizer": "damped-adam"},
    "norefresh": {"refresh": "none"},
    "damped-norefresh": {"optimizer": "damped-adam", "refresh": "none"},
    "damped-local": {"optimizer": "damped-adam", "target": "local"},
    "damped-lr5e-3": {"optimizer": "damped-adam", "lr": 0.005},
}
SCREENED = ("wanda", "50%", "kjv")
BASE_CELLS = (("wanda", "50%", "kjv"), ("wanda", "50%", "pydocs"), ("wanda", "2:4", "pydocs"), ("wanda", "2:4", "kjv"),
              ("sparsegpt", "50%", "kjv"), ("sparsegpt", "50%", "pydocs"))


def study() -> dict:
    rows = [row(method, pattern, corpus, "none") for method, pattern, corpus in BASE_CELLS]
    rows += [row(*SCREENED, variant, {**PREVIOUS_DEFAULTS, **changes}) for variant, changes in VARIANTS.items()]
    return {
        "title": "Screening of SI variants on Wanda 50 % calibrated on the King James Bible",
        "description": __doc__.split("\n\n")[0].replace("\n", " "),
        "protocol": protocol.study_protocol(evaluation=protocol.DOMAINS, eval_windows=EVAL_WINDOWS, threads=1),
        "rows": rows,
    }
