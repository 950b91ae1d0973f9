"""What each part of Sparsity Induction buys: SI with one part switched off at a time, on the quality study's protocol.

    python -m benchmarks.ablation --method magnitude --pattern 50%      # about 4 minutes per row on 2 cores
    python -m benchmarks.ablation --method wanda --pattern 2:4 --variants no-refresh classical-refresh

Each variant is one row run by `benchmarks.runner` (its own process, the protocol of
benchmarks/studies/quality/study.json). The "full SI" and "no SI" rows are read from the quality study's records
(same protocol, deterministic), so run `python -m benchmarks.runner quality` first. Results:
benchmarks/results/ablation.json and ablation.md (one section per method/pattern).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks import runner
from benchmarks.studies.patterns import pattern_fields

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# name -> (InductionConfig fields it changes, what it shows)
VARIANTS = {
    "no-init": ({"init": "none"}, "no distribution-level (equivalent, data-initialised) scaling"),
    "no-feature": ({"row_scales": False, "col_scales": False},
                   "distribution level only: no learned feature-level scales"),
    "cols-only": ({"row_scales": False}, "learned input-column scales only"),
    "rows-only": ({"col_scales": False}, "learned output-row scales only (the mask never moves)"),
    "no-refresh": ({"refresh": "none"}, "scales learned, mask frozen after the base pruner"),
    "classical-refresh": ({"refresh": "classical"}, "mask refreshed by re-collecting statistics"),
    "spectral": ({"spectral_weight": 0.1}, "with the spectral-norm term (weight 0.1)"),
    "global-target": ({"target": "global"}, "the dense model's own block outputs as target"),
}


def _load(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []


def variant_row(method: str, pattern: str, variant: str) -> dict:
    """The runner row of one variant: SI with the variant's InductionConfig changes."""
    return {"key": f"{method}-{pattern}-{variant}", "label": f"SI + {method} {pattern}, {variant}",
            "tags": {"method": method, "pattern": pattern, "induction": True, "variant": variant},
            "recipe": {"method": method, **pattern_fields(pattern), "induction": VARIANTS[variant][0]}}


def markdown(records: list[dict], quality: list[dict]) -> str:
    sections = []
    for method, pattern in sorted({(r["method"], r["pattern"]) for r in records}):
        def reference(induction: bool):
            return next((q for q in quality if (q["method"], q["pattern"], q["induction"]) == (method, pattern, induction)),
                        None)

        base, full = reference(False), reference(True)
        lines = [f"**{method} {pattern}**", "", "| variant | what changes | PPL | vs full SI | vs no SI |", "|---|---|---:|---:|---:|"]

        def row(name: str, what: str, ppl: float) -> str:
            vs_full = f"{ppl / full['ppl']:.3f}" if full else "–"
            vs_base = f"{ppl / base['ppl']:.3f}" if base else "–"
            return f"| {name} | {what} | {ppl:.2f} | {vs_full} | {vs_base} |"

        if base:
            lines.append(row("no SI", "base pruner alone", base["ppl"]))
        if full:
            lines.append(row("full SI", "defaults", full["ppl"]))
        for r in records:
            if (r["method"], r["pattern"]) == (method, pattern):
                what = VARIANTS[r["variant"]][1] if r["variant"] in VARIANTS else "(a variant no longer defined)"
                lines.append(row(r["variant"], what, r["ppl"]))
        sections.append("\n".join(lines))
    footer = ("SmolLM2-135M-Instruct, the quality study's protocol (32 x 512 Python-docs calibration tokens, seed 0; "
              "40 x 512 Jargon evaluation tokens); one process per row. Shifts are not ablated: Llama-family blocks "
              "have no biases to fold them into (docs/si-design.md).")
    return "\n\n".join(sections) + "\n\n" + footer + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="magnitude", choices=["magnitude", "wanda", "sparsegpt"])
    parser.add_argument("--pattern", default="50%", choices=["50%", "2:4", "4:8"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    quality_study = runner.load_study("quality")
    quality = runner.read_records(quality_study.results_path)
    path = RESULTS_DIR / "ablation.json"
    records = _load(path)
    for variant in args.variants:
        record = runner.run_in_subprocess(quality_study.protocol, variant_row(args.method, args.pattern, variant))
        key = (args.method, args.pattern, variant)
        records = [r for r in records if (r["method"], r["pattern"], r["variant"]) != key] + [record]
        print(f"{args.method} {args.pattern} {variant:18s} ppl={record['ppl']:9.3f} prune={record['prune_s']:.0f}s",
              flush=True)
        runner.write_atomic(path, json.dumps(records, indent=2))
        runner.write_atomic(RESULTS_DIR / "ablation.md", markdown(records, quality))


if __name__ == "__main__":
    main()
