"""Copy the current benchmark tables into the project's documents between their markers.

    python -m benchmarks.update_readme                          # README.md and every docs/*.md
    python -m benchmarks.update_readme docs/results.md          # only the files named

A marker pair `<!-- NAME -->` ... `<!-- /NAME -->` is filled with the table of NAME: a study's results.md
(benchmarks/studies/), another benchmark's Markdown (benchmarks/results/), the cross-domain grid of the default SI
variant, the README's one summary table (`results-summary`, from the quality study's records) or the best
reconstructed row per pattern against its target (`reconstruction-best`, from the reconstruction study's records). The full tables
live in docs/results.md. Markers a file does not have are left alone. `python -m benchmarks.runner <study> --render`
runs this after rewriting the study's results.md.
"""

from __future__ import annotations

import glob
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLES = {
    "quality-table": "benchmarks/studies/quality/results.md",
    "methods-table": "benchmarks/studies/methods_grid/results.md",
    "si-table": "benchmarks/results/si_gains.md",
    "speed-table": "benchmarks/results/speed.md",
    "refresh-table": "benchmarks/results/refresh_cost.md",
    "ablation-table": "benchmarks/results/ablation.md",
    "streaming-table": "benchmarks/results/streaming_memory.md",
    "cloze-table": "benchmarks/results/cloze.md",
    "reconstruction-table": "benchmarks/studies/reconstruction/results.md",
}
CROSS_DOMAIN_RESULTS = "benchmarks/studies/cross_domain/results.json"
QUALITY_RESULTS = "benchmarks/studies/quality/results.json"
RECONSTRUCTION_RESULTS = "benchmarks/studies/reconstruction/results.json"


def _table(path: str) -> str:
    source = os.path.join(ROOT, path)
    return open(source, encoding="utf-8").read().strip() if os.path.isfile(source) else "(not measured yet)"


def _rendered(results: str, render) -> str:
    """`render` applied to the records of the results file `results` (relative to the root)."""
    source = os.path.join(ROOT, results)
    if not os.path.isfile(source):
        return "(not measured yet)"
    with open(source, encoding="utf-8") as handle:
        return render(json.load(handle)).strip()


def _cross_domain_grid() -> str:
    from benchmarks.studies.cross_domain.render import readme_grid

    return _rendered(CROSS_DOMAIN_RESULTS, readme_grid)


def _summary() -> str:
    from benchmarks.studies.quality.render import summary

    return _rendered(QUALITY_RESULTS, summary)


def _reconstruction_best() -> str:
    from benchmarks.studies.reconstruction.render import readme_targets

    return _rendered(RECONSTRUCTION_RESULTS, readme_targets)


def bodies() -> dict[str, str]:
    """Marker name -> the text that goes between its markers."""
    return {**{marker: _table(path) for marker, path in TABLES.items()}, "cross-domain-grid": _cross_domain_grid(),
            "results-summary": _summary(), "reconstruction-best": _reconstruction_best()}


def documents() -> list[str]:
    """The files filled by default: README.md and every docs/*.md (relative to the repository)."""
    return ["README.md", *sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))]


def fill(text: str, tables: dict[str, str]) -> str:
    """`text` with the body of every marker pair it has replaced by its table."""
    for marker, body in tables.items():
        text = re.sub(rf"(<!-- {marker} -->\n).*?(<!-- /{marker} -->)", lambda m: m.group(1) + body + "\n" + m.group(2),
                      text, flags=re.S)
    return text


def main(argv: list[str] | None = None) -> list[str]:
    """Fill the markers of the files named (default: `documents()`); returns the files whose text changed."""
    paths = (sys.argv[1:] if argv is None else argv) or documents()
    tables = bodies()
    changed = []
    for name in paths:
        path = os.path.join(ROOT, name)
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        filled = fill(text, tables)
        if filled != text:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(filled)
            changed.append(name)
    return changed


if __name__ == "__main__":
    main()
