"""The tuning table: perplexity and the reconstruction's cost per variant, one line per row in record order."""

from __future__ import annotations


def _line(record: dict) -> str:
    kept = record.get("reconstruction_blocks_kept")
    seconds = record.get("reconstruction_seconds")
    return (f"| {record['method']} | {record['pattern']} | {record['variant']} | {record['ppl']:.2f} | "
            f"{'–' if kept is None else kept} | {'–' if seconds is None else f'{seconds:.0f}'} | "
            f"{record.get('prune_s', 0.0):.0f} |")


def render(study, records: list[dict]) -> str:
    lines = ["| method | pattern | reconstruction | PPL | blocks kept | refit s | prune s |",
             "|---|---|---|---:|---:|---:|---:|"]
    lines += [_line(r) for r in records]
    first = records[0] if records else {}
    lines += ["", f"SmolLM2-135M-Instruct (fp32), calibration {first.get('samples')} x {first.get('seqlen')} "
                  f"Python-docs tokens (seed {first.get('seed')}), evaluation {first.get('eval')} Jargon tokens; torch "
                  f"{first.get('torch')}, {first.get('threads')} threads, one process per row, on {first.get('cpu')}."]
    return "\n".join(lines) + "\n"
