"""The reconstruction's tables: every measured row with its cost, and the grid (method x pattern x SI) with the
perplexity without reconstruction (this study's row, else the methods grid's), in closed form and by gradient."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.studies.reconstruction.spec import GRID_METHODS, GRID_PATTERNS, GRID_VARIANTS

METHODS_GRID = Path(__file__).resolve().parent.parent / "methods_grid" / "results.json"


def _line(record: dict) -> str:
    kept = record.get("reconstruction_blocks_kept")
    seconds = record.get("reconstruction_seconds")
    blocks = record.get("blocks") or len(record.get("block_records") or [])
    per_block = "–" if seconds is None or not blocks else f"{seconds / blocks:.1f}"
    return (f"| {record['method']} | {record['pattern']} | {'yes' if record.get('induction') else 'no'} | "
            f"{record['variant']} | {record['ppl']:.2f} | {'–' if kept is None else kept} | "
            f"{'–' if seconds is None else f'{seconds:.0f}'} | {per_block} | {record.get('prune_s', 0.0):.0f} |")


def _plain(records: list[dict]) -> dict[tuple, tuple[float, str]]:
    """(method, pattern, SI) -> the perplexity without reconstruction and where it comes from."""
    found: dict[tuple, tuple[float, str]] = {}
    if METHODS_GRID.is_file():
        for r in json.loads(METHODS_GRID.read_text(encoding="utf-8")):
            found[(r["method"], r["pattern"], bool(r["induction"]))] = (r["ppl"], "†")
    for r in records:
        if r["variant"] == "none":
            found[(r["method"], r["pattern"], bool(r.get("induction")))] = (r["ppl"], "")
    return found


def grid(records: list[dict]) -> list[str]:
    plain = _plain(records)
    refit = {(r["method"], r["pattern"], bool(r.get("induction")), r["variant"]): r for r in records}
    head = ["method", "pattern", "SI", "none"] + [f"{v} (ratio)" for v in GRID_VARIANTS]
    lines = ["| " + " | ".join(head) + " |", "|---|---|---|" + "---:|" * (len(head) - 3)]
    for method in GRID_METHODS:
        for pattern in GRID_PATTERNS:
            for induction in (False, True):
                base = plain.get((method, pattern, induction))
                cells = ["–" if base is None else f"{base[0]:.2f}{base[1]}"]
                for variant in GRID_VARIANTS:
                    r = refit.get((method, pattern, induction, variant))
                    if r is None:
                        cells.append("–")
                    else:
                        ratio = f" ({r['ppl'] / base[0]:.3f})" if base is not None else ""
                        cells.append(f"{r['ppl']:.2f}{ratio}")
                lines.append(f"| {method} | {pattern} | {'yes' if induction else 'no'} | " + " | ".join(cells) + " |")
    return lines


def render(study, records: list[dict]) -> str:
    lines = ["| method | pattern | SI | reconstruction | PPL | blocks kept | refit s | refit s per block | prune s |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
    lines += [_line(r) for r in records]
    first = records[0] if records else {}
    lines += ["", f"SmolLM2-135M-Instruct (fp32), calibration {first.get('samples')} x {first.get('seqlen')} "
                  f"Python-docs tokens (seed {first.get('seed')}), evaluation {first.get('eval')} Jargon tokens; torch "
                  f"{first.get('torch')}, {first.get('threads')} threads, one process per row, on {first.get('cpu')}. "
                  "refit s: the reconstruction's own seconds (the verdict's passes included), in the prune s.", "",
              "The grid (perplexity; ratio to the same row without reconstruction; below 1: it helped; – : not "
              "measured yet):", ""]
    lines += grid(records)
    lines += ["", "† from the methods grid (same protocol, one thread, an earlier machine): Wanda 50 % without SI gave "
                  "the same perplexity to the last digit here at two threads; rows with SI move in the last digits "
                  "between machines (SI's float32 training)."]
    return "\n".join(lines) + "\n"
