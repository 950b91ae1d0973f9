"""What each part of Sparsity Induction buys: SI with one part switched off at a time, same protocol as quality.py.

    python -m benchmarks.ablation --method magnitude --pattern 50%      # about 4 minutes per row on 2 cores
    python -m benchmarks.ablation --method wanda --pattern 2:4 --variants no-refresh classical-refresh

The "full SI" and "no SI" rows are read from benchmarks/results/quality.json (same protocol, deterministic), so
run quality.py first. Results: benchmarks/results/ablation.json and ablation.md (one section per method/pattern).
"""

from __future__ import annotations

import argparse
import json
import os

from benchmarks.quality import RESULTS_DIR, _subprocess_record

# name -> (SIConfig overrides, what it shows)
VARIANTS = {
    "no-init": ({"induction_init": "none"}, "no distribution-level (equivalent, data-initialised) scaling"),
    "no-feature": ({"induction_row_scales": False, "induction_col_scales": False},
                   "distribution level only: no learned feature-level scales"),
    "cols-only": ({"induction_row_scales": False}, "learned input-column scales only"),
    "rows-only": ({"induction_col_scales": False}, "learned output-row scales only (the mask never moves)"),
    "no-refresh": ({"induction_refresh": "none"}, "scales learned, mask frozen after the base pruner"),
    "classical-refresh": ({"induction_refresh": "classical"}, "mask refreshed by re-collecting statistics"),
    "spectral": ({"induction_spectral_weight": 0.1}, "with the spectral-norm term (weight 0.1)"),
    "local-target": ({"induction_target": "local"}, "dense block on the pruned stream's inputs as target"),
}


def _load(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


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
                lines.append(row(r["variant"], VARIANTS[r["variant"]][1], r["ppl"]))
        sections.append("\n".join(lines))
    footer = ("SmolLM2-135M-Instruct, the quality.py protocol (32 x 512 Python-docs calibration tokens, seed 0; 40 x 512 "
              "Jargon evaluation tokens); one process per row. Shifts are not ablated: Llama-family blocks have no "
              "biases to fold them into (docs/si-design.md).")
    return "\n\n".join(sections) + "\n\n" + footer + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="magnitude", choices=["magnitude", "wanda", "sparsegpt"])
    parser.add_argument("--pattern", default="50%", choices=["50%", "2:4", "4:8"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    path = os.path.join(RESULTS_DIR, "ablation.json")
    records = _load(path)
    quality = _load(os.path.join(RESULTS_DIR, "quality.json"))
    for variant in args.variants:
        record = _subprocess_record(args.method, args.pattern, True, VARIANTS[variant][0], None)
        record["variant"] = variant
        key = (args.method, args.pattern, variant)
        records = [r for r in records if (r["method"], r["pattern"], r["variant"]) != key] + [record]
        print(f"{args.method} {args.pattern} {variant:18s} ppl={record['ppl']:9.3f} prune={record['prune_s']:.0f}s",
              flush=True)
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(records, handle, indent=2)
        with open(os.path.join(RESULTS_DIR, "ablation.md"), "w", encoding="utf-8") as handle:
            handle.write(markdown(records, quality))


if __name__ == "__main__":
    main()
