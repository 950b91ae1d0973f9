"""The quality table: one line per row in record order, with the reference implementations' perplexities and
whether the row lands within ±2 % of them (`benchmarks.protocol.REFERENCE_PPL`)."""

from __future__ import annotations

import re

from benchmarks import protocol

TOLERANCE = 0.02


def within_reference(record: dict) -> bool | None:
    """The ±2 % verdict; None where it does not apply: SI rows, other evaluation windows than the reference's, or
    corpora that are not the reference texts."""
    comparable = (not record["induction"] and record.get("corpora_match_reference", True)
                  and record["eval"] == f"jargon first {protocol.EVAL_WINDOWS} x {protocol.EVAL_SEQLEN}")
    if not comparable:
        return None
    return protocol.within_reference(record["method"], record["pattern"], record["ppl"], TOLERANCE)


def _line(record: dict) -> str:
    refs = None if record["induction"] else protocol.REFERENCE_PPL.get((record["method"], record["pattern"]))
    ref = " / ".join(f"{v:.2f}" for v in refs) if refs else "–"
    ok = {True: "yes", False: "**no**", None: "–"}[within_reference(record)]
    return (f"| {record['method']} | {record['pattern']} | {'yes' if record['induction'] else 'no'} | "
            f"{record['ppl']:.2f} | {ref} | {ok} | {record.get('prune_s', 0.0):.1f} | {record['eval_s']:.1f} | "
            f"{record['peak_rss_mb']:.0f} |")


def render(study, records: list[dict]) -> str:
    lines = ["| method | pattern | SI | PPL | reference PPL | within ±2 % | prune s | eval s | peak RSS MB |",
             "|---|---|---|---:|---:|---|---:|---:|---:|"]
    lines += [_line(r) for r in records]
    first = records[0] if records else {}
    lines += ["", f"SmolLM2-135M-Instruct (fp32), calibration {first.get('samples')} x {first.get('seqlen')} "
                  f"Python-docs tokens (seed {first.get('seed')}), evaluation {first.get('eval')} Jargon tokens; torch "
                  f"{first.get('torch')}, {first.get('threads')} threads, one process per row. Reference: runs of the "
                  "reference implementations on the same protocol (`benchmarks/protocol.py`, `REFERENCE_PPL`)."]
    return "\n".join(lines) + "\n"


SUMMARY_PATTERNS = ("50%", "2:4")


def summary(records: list[dict]) -> str:
    """The README's one table: dense, and each base method at 50 % and 2:4 without and with Sparsity Induction
    (only measured rows), with the protocol and the command that made it."""
    ppl = {(r["method"], r["pattern"], bool(r["induction"])): r["ppl"] for r in records}
    lines = ["| model | pattern | perplexity | with Sparsity Induction | SI / no SI |", "|---|---|---:|---:|---:|"]
    dense = ppl.get(("dense", "-", False))
    if dense is not None:
        lines.append(f"| dense | – | {dense:.2f} | – | – |")
    methods = list(dict.fromkeys(r["method"] for r in records if r["method"] != "dense"))
    for method in methods:
        for pattern in SUMMARY_PATTERNS:
            base, si = ppl.get((method, pattern, False)), ppl.get((method, pattern, True))
            if base is None:
                continue
            with_si = f"{si:.2f}" if si is not None else "not measured"
            ratio = f"{si / base:.2f}" if si is not None else "–"
            lines.append(f"| {method} | {pattern} | {base:.2f} | {with_si} | {ratio} |")
    first = records[0] if records else {}
    windows = re.search(r"\d+ x \d+$", first.get("eval", ""))
    lines += ["", f"Perplexity (lower is better) of SmolLM2-135M-Instruct (fp32) on the first "
                  f"{windows.group(0) if windows else '?'} Jargon File tokens, pruned with {first.get('samples')} x {first.get('seqlen')} Python-docs "
                  f"calibration tokens (seed {first.get('seed')}); torch {first.get('torch')}, CPU. Made by "
                  "`python -m benchmarks.runner quality`; every row, 4:8 and timings: docs/results.md."]
    return "\n".join(lines) + "\n"
