"""The cross-domain grids: for each SI variant, SI / no-SI perplexity per calibration -> evaluation corpus pair,
and each row's worst off-diagonal cell against the bar (SI at most 0.98 x its base method on text it was not
calibrated on). `readme_grid` is the default variant's grid that the README and docs/si-design.md show."""

from __future__ import annotations

import json
from collections.abc import Callable

from benchmarks import protocol
from benchmarks.studies.patterns import pattern_order

BAR = 0.98
BASE = "none"  # the variant of the runs without SI


def _base(records: list[dict], method: str, pattern: str, calibration: str) -> dict | None:
    """The no-SI run a cell compares with: same method, pattern and calibration, or the data-free run ("-")."""
    for record in records:
        if (record["method"], record["pattern"], record["variant"]) == (method, pattern, BASE) and \
                record["calibration"] in (calibration, "-"):
            return record
    return None


def _variant_settings(record: dict) -> dict:
    """What a variant changes: the SIConfig overrides the earlier cross-domain script recorded (`extra`), else the
    `induction` settings of the row's recipe."""
    if "extra" in record:
        return record["extra"]
    induction = (record.get("recipe") or {}).get("induction")
    return induction if isinstance(induction, dict) else {}


PAIRS = [(c, e) for c in protocol.DOMAINS for e in protocol.DOMAINS]


def pair_header(leading: list[str]) -> list[str]:
    """The header and rule of a grid whose rows start with the columns `leading`, then one column per calibration ->
    evaluation pair and the worst off-diagonal ratio."""
    pairs = [f"{c} → {e}{' (in-domain)' if c == e else ''}" for c, e in PAIRS]
    return ["| " + " | ".join([*leading, *pairs, "worst off-diagonal"]) + " |",
            "|" + "---|" * len(leading) + "---:|" * (len(PAIRS) + 1)]


def pair_cells(run_of: Callable[[str], dict | None], base_of: Callable[[str], dict | None]) -> tuple[list[str], str,
                                                                                                      float | None]:
    """One grid row: per calibration -> evaluation pair, the ratio of the run calibrated there (`run_of(corpus)`) to
    the run it is compared with (`base_of(corpus)`); then the worst off-diagonal ratio against the bar, as text and
    as a number (None when no off-diagonal cell is measured). A row with some off-diagonal cells still missing and
    none over the bar is marked partial, with no verdict: its worst cell may be among the missing ones."""
    texts, worst, measured = [], None, 0
    off_diagonal = sum(calibration != evaluation for calibration, evaluation in PAIRS)
    for calibration, evaluation in PAIRS:
        run, base = run_of(calibration), base_of(calibration)
        if run is None or base is None:
            texts.append("–")
            continue
        ratio = run["ppl"][evaluation] / base["ppl"][evaluation]
        texts.append(f"{ratio:.3f} ({base['ppl'][evaluation]:.1f} → {run['ppl'][evaluation]:.1f})")
        if calibration != evaluation:
            worst = ratio if worst is None else max(worst, ratio)
            measured += 1
    if worst is None:
        mark = "–"
    elif worst > BAR:  # one cell over the bar settles it
        cells = "" if measured == off_diagonal else f"; {measured} of {off_diagonal} cells"
        mark = f"{worst:.3f} (misses ≤ {BAR}{cells})"
    elif measured < off_diagonal:
        mark = f"{worst:.3f} (partial: {measured} of {off_diagonal} cells)"
    else:
        mark = f"{worst:.3f} (meets ≤ {BAR})"
    return texts, mark, worst


def grid(records: list[dict], variant: str) -> tuple[str, dict]:
    """Markdown grid of SI/no-SI ratios for `variant`, and a summary (worst off-diagonal ratio per row)."""
    lines = pair_header(["method", "pattern"])
    runs = {(r["method"], r["pattern"], r["calibration"], r["variant"]): r for r in records}
    summary = {}
    cells = sorted({(r["method"], r["pattern"]) for r in records if r["variant"] == variant},
                   key=lambda k: (k[0], pattern_order(k[1])))
    for method, pattern in cells:
        texts, mark, summary[f"{method} {pattern}"] = pair_cells(
            lambda corpus: runs.get((method, pattern, corpus, variant)),
            lambda corpus: _base(records, method, pattern, corpus))
        lines.append(f"| {method} | {pattern} | " + " | ".join(texts) + f" | {mark} |")
    return "\n".join(lines) + "\n", summary


def protocol_note(records: list[dict]) -> str:
    first = records[0] if records else {}
    corpora = "the reference texts." if all(r.get("corpora_match_reference", True) for r in records) else \
        "**not the reference texts** (a Debian build changed): not comparable with other tables."
    return (f"SmolLM2-135M-Instruct fp32; calibration {first.get('samples')} x {first.get('seqlen')} tokens (seed "
            f"{first.get('seed')}) from the calibration region of each corpus; evaluation on the first "
            f"{first.get('eval_windows')} x {first.get('eval_seqlen')} tokens of each evaluation region (disjoint from "
            f"every calibration region); one process per run. Corpora: {corpora}")


def render(study, records: list[dict]) -> str:
    parts = []
    for variant in sorted({r["variant"] for r in records if r["variant"] != BASE}):
        settings = next((_variant_settings(r) for r in records if r["variant"] == variant), {})
        table, _summary = grid(records, variant)
        parts.append(f"**SI variant `{variant}`** ({json.dumps(settings) if settings else 'defaults'}): SI / no-SI "
                     f"perplexity, (no SI → SI)\n\n{table}")
    parts.append(protocol_note(records))
    return "\n\n".join(parts) + "\n"


def readme_grid(records: list[dict], variant: str = "default") -> str:
    """The grid of `variant` and the protocol note of its runs, as the README and docs/si-design.md embed them."""
    table, _summary = grid(records, variant)
    return table + "\n" + protocol_note([r for r in records if r["variant"] in (BASE, variant)])
