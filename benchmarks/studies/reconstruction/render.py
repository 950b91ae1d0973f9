"""The reconstruction's tables: every measured row with its cost; the grid (method x pattern x SI) with the
perplexity without reconstruction (this study's row, else the methods grid's), in closed form and by gradient; the
best refit per pattern on the README's protocol against its target; and the cross-domain grid of the refit against
the cross-domain study's runs without it."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path

from benchmarks.protocol import DOMAINS, SEED
from benchmarks.studies.cross_domain.render import pair_cells, pair_header
from benchmarks.studies.patterns import pattern_order
from benchmarks.studies.reconstruction.spec import GRID_METHODS, GRID_PATTERNS, GRID_VARIANTS, README_WINDOWS

STUDIES = Path(__file__).resolve().parent.parent
METHODS_GRID = STUDIES / "methods_grid" / "results.json"
QUALITY = STUDIES / "quality" / "results.json"
CROSS_DOMAIN = STUDIES / "cross_domain" / "results.json"
# The targets on the README's protocol, as multiples of the dense model's perplexity.
TARGETS = {"50%": 1.6, "2:4": 2.5, "70%": 5.0}


def _read(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []


def _long(record: dict) -> float | None:
    long_eval = record.get("long_eval")
    return long_eval["ppl"] if long_eval and long_eval.get("windows") == README_WINDOWS else None


def _line(record: dict) -> str:
    kept = record.get("reconstruction_blocks_kept")
    seconds = record.get("reconstruction_seconds")
    blocks = record.get("blocks") or len(record.get("block_records") or [])
    per_block = "–" if seconds is None or not blocks else f"{seconds / blocks:.1f}"
    return (f"| {record['method']} | {record['pattern']} | {'yes' if record.get('induction') else 'no'} | "
            f"{record['variant']} | {record['ppl']:.2f} | {'–' if _long(record) is None else f'{_long(record):.2f}'} | "
            f"{'–' if kept is None else kept} | "
            f"{'–' if seconds is None else f'{seconds:.0f}'} | {per_block} | {record.get('prune_s', 0.0):.0f} |")


def _plain(records: list[dict]) -> dict[tuple, tuple[float, str]]:
    """(method, pattern, SI) -> the perplexity without reconstruction and where it comes from."""
    found: dict[tuple, tuple[float, str]] = {}
    if METHODS_GRID.is_file():
        for r in json.loads(METHODS_GRID.read_text(encoding="utf-8")):
            found[(r["method"], r["pattern"], bool(r["induction"]))] = (r["ppl"], "†")
    for r in records:
        if r["variant"] == "none" and not r.get("cross_domain"):
            found[(r["method"], r["pattern"], bool(r.get("induction")))] = (r["ppl"], "")
    return found


def grid(records: list[dict]) -> list[str]:
    plain = _plain(records)
    refit = {(r["method"], r["pattern"], bool(r.get("induction")), r["variant"]): r for r in records
             if not r.get("cross_domain")}
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


def _name(record: dict) -> str:
    return f"{'SI + ' if record.get('induction') else ''}{record['method']}"


def targets(records: list[dict]) -> list[str]:
    """Per pattern: the best refit row on the README's protocol against its target, and the best row without
    reconstruction that the quality study has on that protocol."""
    quality = _read(QUALITY)
    dense = next((r["ppl"] for r in quality if r["key"] == "dense"), None)
    if dense is None:
        return ["(the quality study has no dense row to compare with)"]
    lines = ["| pattern | best with reconstruction | perplexity | x dense | target | verdict | best without "
             "reconstruction |", "|---|---|---:|---:|---:|---|---|"]
    for pattern, factor in TARGETS.items():
        measured = [r for r in records if r["pattern"] == pattern and _long(r) is not None]
        plain = [r for r in quality if r.get("pattern") == pattern]
        best_plain = min(plain, key=lambda r: r["ppl"], default=None)
        plain_text = "not on this protocol" if best_plain is None else \
            f"{_name(best_plain)}: {best_plain['ppl']:.2f}"
        if not measured:
            lines.append(f"| {pattern} | – | – | – | ≤ {factor * dense:.2f} | not measured | {plain_text} |")
            continue
        best = min(measured, key=_long)
        value = _long(best)
        name = f"{_name(best)}, {best['variant']}"
        verdict = "met" if value <= factor * dense else "missed"
        lines.append(f"| {pattern} | {name} | {value:.2f} | {value / dense:.2f} | ≤ {factor * dense:.2f} ({factor}x) | "
                     f"{verdict} | {plain_text} |")
    return lines


def readme_targets(records: list[dict]) -> str:
    """The targets table and how it was measured, as the README shows it."""
    return "\n".join(targets(records)) + (
        f"\n\nPerplexity of SmolLM2-135M-Instruct (fp32) on the first {README_WINDOWS} x 512 Jargon File tokens, pruned "
        "with 32 x 512 Python-docs calibration tokens (seed 0); the best measured row with `reconstruction=True` per "
        "pattern, its multiple of the dense perplexity and the target it is held to, and the best of the quality "
        "study's rows without reconstruction (same protocol; 70 % is not among them). Made by `python -m benchmarks.runner reconstruction`; the grid: "
        "docs/results.md.")


def cross_domain(records: list[dict]) -> list[str]:
    """Refit / not refit perplexity for every calibration -> evaluation pair, against the run of the same method,
    pattern, calibration and seed without reconstruction: this study's own, else the cross-domain study's (its
    default SI for a row with SI). A repeat at another seed is a row of its own, divided by its own run without
    reconstruction; where two or more seeds have every calibration, a last row gives the geometric mean of the seeds'
    ratios per cell, which the bar is judged on (one seed's calibration windows move a cell on unseen text by more
    than the bar's margin)."""
    plain = {(r["method"], r["pattern"], r["calibration"], r["variant"] != "none", r.get("seed", SEED)): r
             for r in _read(CROSS_DOMAIN) if r["variant"] in ("none", "default")}
    runs: dict[tuple, dict[int, dict[str, dict]]] = {}  # (method, pattern, variant, SI) -> seed -> calibration -> run
    for r in records:
        if not r.get("cross_domain"):
            continue
        seed = r.get("seed", SEED)
        if r["variant"] == "none":
            plain[(r["method"], r["pattern"], r["calibration"], bool(r.get("induction")), seed)] = r
        else:
            combination = (r["method"], r["pattern"], r["variant"], bool(r.get("induction")))
            runs.setdefault(combination, {}).setdefault(seed, {})[r["calibration"]] = r
    lines = pair_header(["method", "pattern", "SI", "refit"])
    for combination in sorted(runs, key=lambda k: (k[0], pattern_order(k[1]), k[3], k[2])):
        method, pattern, variant, induction = combination

        def plain_at(seed):
            return lambda corpus: plain.get((method, pattern, corpus, induction, seed))

        head = f"| {method} | {pattern} | {'yes' if induction else 'no'} | "
        for seed, by_corpus in sorted(runs[combination].items()):
            cells, mark, _worst = pair_cells(by_corpus.get, plain_at(seed))
            label = variant if seed == SEED else f"{variant}, seed {seed}"
            lines.append(head + label + " | " + " | ".join(cells) + f" | {mark} |")
        complete = sorted(seed for seed, by_corpus in runs[combination].items()
                          if all(by_corpus.get(c) and plain_at(seed)(c) for c in DOMAINS))
        if len(complete) > 1:
            cells, mark, _worst = pair_cells(_geometric_mean([runs[combination][seed].get for seed in complete]),
                                             _geometric_mean([plain_at(seed) for seed in complete]))
            label = f"{variant}, geometric mean over seeds {', '.join(map(str, complete))}"
            lines.append(head + label + " | " + " | ".join(cells) + f" | {mark} |")
    return lines


def _geometric_mean(record_of_seed: list[Callable[[str], dict]]) -> Callable[[str], dict]:
    """A stand-in record per calibration corpus whose perplexity on each evaluation corpus is the geometric mean over
    the seeds' records, so that a ratio of two of them is the geometric mean of the seeds' own ratios."""
    def record(corpus: str) -> dict:
        records = [of(corpus) for of in record_of_seed]
        return {"ppl": {e: statistics.geometric_mean(r["ppl"][e] for r in records) for e in DOMAINS}}
    return record


def render(study, records: list[dict]) -> str:
    lines = ["| method | pattern | SI | reconstruction | PPL | PPL 40 x 512 | blocks kept | refit s | refit s per block "
             "| prune s |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    lines += [_line(r) for r in records if not r.get("cross_domain")]
    first = records[0] if records else {}
    lines += ["", f"SmolLM2-135M-Instruct (fp32), calibration {first.get('samples')} x {first.get('seqlen')} "
                  f"Python-docs tokens (seed {first.get('seed')}), evaluation {first.get('eval')} Jargon tokens; torch "
                  f"{first.get('torch')}, {_threads(records)}, one process per row, on {first.get('cpu')}. "
                  f"PPL 40 x 512: the same model scored on the first {README_WINDOWS} x 512 Jargon tokens (the README's "
                  "protocol). refit s: the reconstruction's own seconds (the verdict's passes included), in the "
                  "prune s.", "",
              "The grid (perplexity; ratio to the same row without reconstruction; below 1: it helped; – : not "
              "measured yet):", ""]
    lines += grid(records)
    lines += ["", "† from the methods grid (same protocol, one thread, an earlier machine): Wanda 50 % without SI gave "
                  "the same perplexity to the last digit here at two threads; rows with SI move in the last digits "
                  "between machines (SI's float32 training).", "",
              f"The best refit per pattern on the README's protocol (first {README_WINDOWS} x 512 Jargon File tokens; "
              "the target is a multiple of the dense model's perplexity there):", ""]
    lines += targets(records)
    lines += ["", "The cross-domain grid of the refit: perplexity with / without reconstruction (with SI, both with "
                  "SI), for each calibration -> evaluation corpus pair, first 20 x 512 tokens of each evaluation "
                  "region; the runs without reconstruction are the cross-domain study's (one thread, an earlier "
                  "machine), or this study's for ALPS, which that study lacks.", ""]
    lines += cross_domain(records)
    return "\n".join(lines) + "\n"


def _threads(records: list[dict]) -> str:
    counts = sorted({r.get("threads") for r in records if r.get("threads")})
    return " or ".join(str(c) for c in counts) + " threads (each row's in results.json)" if len(counts) > 1 else \
        f"{counts[0] if counts else '?'} threads"
