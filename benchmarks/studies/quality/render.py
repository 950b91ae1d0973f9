"""The quality table: one line per row in record order, with the reference implementations' perplexities and
whether the row lands within ±2 % of them (`benchmarks.protocol.REFERENCE_PPL`)."""

from __future__ import annotations

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
