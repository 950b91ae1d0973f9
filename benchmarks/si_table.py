"""The with/without-SI table (ratios against the targets) from the quality study's records.

    python -m benchmarks.si_table        # prints it and writes benchmarks/results/si_gains.md

Reads benchmarks/studies/quality/results.json (`python -m benchmarks.runner quality`).
"""

from __future__ import annotations

import json
import os

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
QUALITY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "studies", "quality", "results.json")
# SI's targets (SI / no-SI perplexity, lower is better) and the paper's own ratios on LLaMA-7B (si-method.md Table 1).
TARGETS = {("magnitude", "50%"): 0.5, ("magnitude", "2:4"): 0.5, ("wanda", "50%"): 0.95, ("wanda", "2:4"): 0.90,
           ("sparsegpt", "50%"): 0.97, ("sparsegpt", "2:4"): 0.97}
PAPER_LLAMA7B = {("magnitude", "50%"): 12.08 / 17.28, ("magnitude", "2:4"): 18.55 / 42.54,
                 ("magnitude", "4:8"): 13.97 / 16.83, ("wanda", "50%"): 7.04 / 7.26, ("wanda", "2:4"): 10.51 / 11.53,
                 ("wanda", "4:8"): 8.15 / 8.58, ("sparsegpt", "50%"): 7.13 / 7.17, ("sparsegpt", "2:4"): 10.65 / 11.00,
                 ("sparsegpt", "4:8"): 8.35 / 8.56}


def main() -> str:
    with open(QUALITY, encoding="utf-8") as handle:
        records = json.load(handle)
    rows = ["| method | pattern | PPL | PPL with SI | ratio | target | met | paper's ratio (LLaMA-7B) |",
            "|---|---|---:|---:|---:|---:|---|---:|"]
    for method in ("magnitude", "wanda", "sparsegpt"):
        for pattern in ("50%", "2:4", "4:8"):
            base = next((r for r in records if (r["method"], r["pattern"], r["induction"]) == (method, pattern, False)), None)
            si = next((r for r in records if (r["method"], r["pattern"], r["induction"]) == (method, pattern, True)), None)
            if base is None:
                continue
            target = TARGETS.get((method, pattern))
            if si is None:
                rows.append(f"| {method} | {pattern} | {base['ppl']:.2f} | not measured | | "
                            f"{'≤ %.2f' % target if target else '–'} | | {PAPER_LLAMA7B[(method, pattern)]:.3f} |")
                continue
            ratio = si["ppl"] / base["ppl"]
            met = "–" if target is None else ("yes" if ratio <= target else "**missed**")
            rows.append(f"| {method} | {pattern} | {base['ppl']:.2f} | {si['ppl']:.2f} | {ratio:.3f} | "
                        f"{'≤ %.2f' % target if target else '–'} | {met} | {PAPER_LLAMA7B[(method, pattern)]:.3f} |")
    text = "\n".join(rows) + "\n"
    with open(os.path.join(RESULTS_DIR, "si_gains.md"), "w", encoding="utf-8") as handle:
        handle.write(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
