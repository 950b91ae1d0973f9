"""Copy the current benchmark tables (benchmarks/results/*.md) into the README between their markers.

    python -m benchmarks.update_readme
"""

from __future__ import annotations

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLES = {"quality-table": "quality.md", "si-table": "si_gains.md", "speed-table": "speed.md",
          "refresh-table": "refresh_cost.md", "ablation-table": "ablation.md", "streaming-table": "streaming_memory.md",
          "cloze-table": "cloze.md",
          "methods-table": "methods_grid.md"}


def main() -> None:
    path = os.path.join(ROOT, "README.md")
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    for marker, name in TABLES.items():
        source = os.path.join(ROOT, "benchmarks", "results", name)
        body = open(source, encoding="utf-8").read().strip() if os.path.isfile(source) else "(not measured yet)"
        text = re.sub(rf"(<!-- {marker} -->\n).*?(<!-- /{marker} -->)", lambda m: m.group(1) + body + "\n" + m.group(2),
                      text, flags=re.S)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


if __name__ == "__main__":
    main()
