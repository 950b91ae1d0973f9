"""The methods grid's tables: perplexity (prune seconds) per method x pattern without and with SI, the SI / no-SI
ratios, and the targets of the study (`spec.TARGETS`) with their verdicts."""

from __future__ import annotations

from benchmarks.studies.methods_grid.spec import METHODS, TARGETS
from benchmarks.studies.patterns import PATTERNS


def _cells(records: list[dict]) -> dict[tuple, dict]:
    return {(r["method"], r["pattern"], r["induction"]): r for r in records}


def targets(records: list[dict]) -> list[dict]:
    """Each target on the rows present: ratio, limit and verdict (None when a row is missing)."""
    by_cell = _cells(records)
    out = []
    for text, top, bottom, limit in TARGETS:
        if top in by_cell and bottom in by_cell:
            ratio = by_cell[top]["ppl"] / by_cell[bottom]["ppl"]
            out.append({"target": text, "ratio": ratio, "limit": limit, "met": ratio <= limit})
        else:
            out.append({"target": text, "ratio": None, "limit": limit, "met": None})
    return out


def _cell(record: dict | None) -> str:
    return "–" if record is None else f"{record['ppl']:.2f} ({record['prune_s']:.0f} s)"


def _perplexities(by_cell: dict, methods: list[str], patterns: list[str]) -> list[str]:
    lines = ["| method | SI | " + " | ".join(patterns) + " | peak RSS MB |", "|---|---|" + "---:|" * (len(patterns) + 1)]
    for method in methods:
        for induction in (False, True):
            rows = [by_cell.get((method, p, induction)) for p in patterns]
            if not any(rows):
                continue
            rss = max(r["peak_rss_mb"] for r in rows if r)
            lines.append(f"| {method} | {'yes' if induction else 'no'} | " + " | ".join(map(_cell, rows))
                         + f" | {rss:.0f} |")
    return lines


def _ratios(by_cell: dict, methods: list[str], patterns: list[str]) -> list[str]:
    lines = ["SI / no-SI perplexity ratio (below 1: SI helped):", "",
             "| method | " + " | ".join(patterns) + " |", "|---|" + "---:|" * len(patterns)]
    for method in methods:
        cells = []
        for p in patterns:
            plain, si = by_cell.get((method, p, False)), by_cell.get((method, p, True))
            cells.append("–" if plain is None or si is None else f"{si['ppl'] / plain['ppl']:.3f}")
        if any(c != "–" for c in cells):
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def _targets(records: list[dict]) -> list[str]:
    lines = ["| target | ratio | limit | met |", "|---|---:|---:|---|"]
    for t in targets(records):
        ratio = "–" if t["ratio"] is None else f"{t['ratio']:.3f}"
        met = {True: "yes", False: "**no**", None: "not run"}[t["met"]]
        lines.append(f"| {t['target']} | {ratio} | {t['limit']:.2f} | {met} |")
    return lines


def render(study, records: list[dict]) -> str:
    by_cell = _cells(records)
    patterns = [p for p in PATTERNS if any(r["pattern"] == p for r in records)]
    methods = [m for m in METHODS if any(r["method"] == m for r in records)]
    first = records[0] if records else {}
    footer = (f"SmolLM2-135M-Instruct (fp32), calibration {first.get('samples')} x {first.get('seqlen')} Python-docs "
              f"tokens (seed {first.get('seed')}), evaluation {first.get('eval')} Jargon tokens; torch "
              f"{first.get('torch')}, {first.get('threads')} thread(s), one process per row; cells are perplexity "
              "(prune seconds). Every method with its authors' defaults (docs/methods.md); owl-wanda is Wanda with "
              "OWL's allocation (no N:M form). Made by `python -m benchmarks.runner methods_grid`.")
    lines = [*_perplexities(by_cell, methods, patterns), "", *_ratios(by_cell, methods, patterns), "",
             *_targets(records), "", footer]
    return "\n".join(lines) + "\n"
