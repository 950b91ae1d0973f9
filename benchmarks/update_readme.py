"""Copy the current benchmark tables into the README (and any other Markdown file named) between their markers.

    python -m benchmarks.update_readme                          # README.md
    python -m benchmarks.update_readme README.md docs/si-design.md

A marker pair `<!-- NAME -->` ... `<!-- /NAME -->` is filled with the table of NAME: a study's results.md
(benchmarks/studies/), another benchmark's Markdown (benchmarks/results/), or the cross-domain grid of the default SI
variant. Markers a file does not have are left alone.
"""

from __future__ import annotations

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
}
CROSS_DOMAIN_RESULTS = "benchmarks/studies/cross_domain/results.json"


def _table(path: str) -> str:
    source = os.path.join(ROOT, path)
    return open(source, encoding="utf-8").read().strip() if os.path.isfile(source) else "(not measured yet)"


def _cross_domain_grid() -> str:
    from benchmarks.studies.cross_domain.render import readme_grid

    source = os.path.join(ROOT, CROSS_DOMAIN_RESULTS)
    if not os.path.isfile(source):
        return "(not measured yet)"
    with open(source, encoding="utf-8") as handle:
        return readme_grid(json.load(handle)).strip()


def bodies() -> dict[str, str]:
    """Marker name -> the text that goes between its markers."""
    return {**{marker: _table(path) for marker, path in TABLES.items()}, "cross-domain-grid": _cross_domain_grid()}


def fill(text: str, tables: dict[str, str]) -> str:
    """`text` with the body of every marker pair it has replaced by its table."""
    for marker, body in tables.items():
        text = re.sub(rf"(<!-- {marker} -->\n).*?(<!-- /{marker} -->)", lambda m: m.group(1) + body + "\n" + m.group(2),
                      text, flags=re.S)
    return text


def main(argv: list[str] | None = None) -> None:
    paths = (sys.argv[1:] if argv is None else argv) or ["README.md"]
    tables = bodies()
    for name in paths:
        path = os.path.join(ROOT, name)
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(fill(text, tables))


if __name__ == "__main__":
    main()
