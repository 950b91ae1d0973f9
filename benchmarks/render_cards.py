"""Render the model cards of the SmolLM2-135M checkpoints the project publishes, from benchmark records.

    python -m benchmarks.render_cards        # writes model_cards/SmolLM2-135M-Instruct-<recipe>.md

The figures come from `benchmarks/results/quality.json` (same protocol as the README table): achieved sparsity over
the 210 pruned Linears, and dense and pruned perplexity on the first 40 x 512 Jargon File tokens. The weights behind
them are the dequantised Q4_1 GGUF of `benchmarks/assets.py`, and each card says so.
"""

from __future__ import annotations

import json
import os

from benchmarks import assets
from optimum_si import SIConfig
from optimum_si.model_card import build_model_card

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PUBLISHED = [("wanda", "50%"), ("wanda", "2:4")]
BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"


def main() -> list[str]:
    with open(os.path.join(ROOT, "benchmarks", "results", "quality.json"), encoding="utf-8") as handle:
        records = json.load(handle)
    dense = next(r["ppl"] for r in records if r["method"] == "dense")
    written = []
    for record in records:
        if (record["method"], record["pattern"]) not in PUBLISHED or "config" not in record:
            continue
        config = SIConfig.from_dict(record["config"])
        tag = f"{record['method']}{'-si' if config.induction else ''}-{record['pattern'].replace('%', '').replace(':', 'of')}"
        name = f"SmolLM2-135M-Instruct-{tag}"
        card = build_model_card(
            None, config, None, base_model=BASE, model_name=name, license="apache-2.0",
            pruned_layers=210, achieved_sparsity=record["sparsity"], weights_source=assets.smollm2_weights_source(),
            calibration="Python 3.11 documentation (Debian python3.11-doc), first 4,000,000 characters",
            perplexity={"dense (Jargon File, 40 x 512)": dense, "pruned (Jargon File, 40 x 512)": record["ppl"]},
        )
        path = os.path.join(ROOT, "model_cards", f"{name}.md")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        card.save(path)
        written.append(path)
    print("\n".join(written))
    return written


if __name__ == "__main__":
    main()
