"""Render the model cards of the SmolLM2-135M checkpoints the project publishes, from the quality study's records.

    python -m benchmarks.render_cards                    # writes model_cards/SmolLM2-135M-Instruct-<recipe>.md
    python -m benchmarks.render_cards --output /tmp/cards

The figures come from `benchmarks/studies/quality/results.json` (same protocol as the README table): achieved
sparsity over the 210 pruned Linears, and dense and pruned perplexity on the first 40 x 512 Jargon File tokens. The
weights behind them are the dequantised Q4_1 GGUF of `tests/assets.py`, and each card says so.
"""

from __future__ import annotations

import argparse
import json
import os

from optimum_si import SIConfig
from optimum_si.export.card import build_model_card
from tests import assets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "studies", "quality", "results.json")
PUBLISHED = [("wanda", "50%"), ("wanda", "2:4")]
BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"


def card_name(record: dict, config: SIConfig) -> str:
    pattern = record["pattern"].replace("%", "").replace(":", "of")
    return f"SmolLM2-135M-Instruct-{record['method']}{'-si' if config.induction else ''}-{pattern}"


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=os.path.join(ROOT, "model_cards"), help="folder of the cards")
    args = parser.parse_args(argv)
    with open(RESULTS, encoding="utf-8") as handle:
        records = json.load(handle)
    dense = next(r["ppl"] for r in records if r["method"] == "dense")
    written = []
    for record in records:
        if (record["method"], record["pattern"]) not in PUBLISHED or "config" not in record:
            continue
        # strict=False: a record keeps the recipe as it was written (older records: format 1, with run options).
        config = SIConfig.from_dict(record["config"], strict=False)
        name = card_name(record, config)
        card = build_model_card(
            None, config, None, base_model=BASE, model_name=name, license="apache-2.0",
            pruned_layers=210, achieved_sparsity=record["sparsity"], weights_source=assets.smollm2_weights_source(),
            calibration="Python 3.11 documentation (Debian python3.11-doc), first 4,000,000 characters",
            perplexity={"dense (Jargon File, 40 x 512)": dense, "pruned (Jargon File, 40 x 512)": record["ppl"]},
        )
        path = os.path.join(args.output, f"{name}.md")
        os.makedirs(args.output, exist_ok=True)
        card.save(path)
        written.append(path)
    print("\n".join(written))
    return written


if __name__ == "__main__":
    main()
