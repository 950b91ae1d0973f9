"""The published model cards (model_cards/) are generated from the committed study records, and stay so."""

from __future__ import annotations

import json
import os

import pytest

from benchmarks import render_cards

COMMITTED = os.path.join(render_cards.ROOT, "model_cards")


def test_the_committed_cards_are_what_the_generator_writes(tmp_path):
    written = render_cards.main(["--output", str(tmp_path)])
    names = sorted(os.path.basename(path) for path in written)
    assert names == sorted(n for n in os.listdir(COMMITTED) if n.endswith(".md"))
    for name in names:
        with open(os.path.join(COMMITTED, name), encoding="utf-8") as handle:
            committed = handle.read()
        assert (tmp_path / name).read_text(encoding="utf-8") == committed, (
            f"model_cards/{name} differs from benchmarks/studies/quality/results.json: run "
            "`python -m benchmarks.render_cards` and commit the cards")
    images = {n for n in os.listdir(tmp_path) if not n.endswith(".md")}
    assert images == {n for n in os.listdir(COMMITTED) if not n.endswith(".md")}  # the charts the cards link


def test_an_si_card_leads_with_the_measured_perplexities():
    records = json.loads(open(render_cards.RESULTS, encoding="utf-8").read())
    ppl = {(r["method"], r["pattern"], bool(r.get("induction"))): r["ppl"] for r in records if "pattern" in r}
    with open(os.path.join(COMMITTED, "SmolLM2-135M-Instruct-wanda-si-50.md"), encoding="utf-8") as handle:
        text = " ".join(handle.read().split())
    assert (f"Perplexity on the Jargon File, 40 x 512 tokens: **{ppl[('wanda', '50%', False)]:.2f}** with wanda alone, "
            f"**{ppl[('wanda', '50%', True)]:.2f}** with Sparsity Induction.") in text
    assert f"| pruned (Jargon File, 40 x 512) | {ppl[('wanda', '50%', True)]:.2f} |" in text


def test_records_with_block_figures_give_the_card_its_chart_and_si_blocks(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    records = json.loads(open(render_cards.RESULTS, encoding="utf-8").read())
    for record in records:
        if record.get("induction"):
            record["block_records"] = [
                {"index": i, "output_error": 0.2 + i / 100,
                 "induction": {"kept": i != 1, "validation_loss_base": 1.0 + i, "validation_loss_induced": 0.5 + i,
                               "relative_error_base": 0.3, "relative_error_induced": 0.25}} for i in range(3)]
    results = tmp_path / "results.json"
    results.write_text(json.dumps(records))
    monkeypatch.setattr(render_cards, "RESULTS", str(results))
    render_cards.main(["--output", str(tmp_path / "cards")])
    name = "SmolLM2-135M-Instruct-wanda-si-50"
    text = (tmp_path / "cards" / f"{name}.md").read_text()
    assert f"![Relative output error of each decoder block against the dense block]({name}.output_error.png)" in text
    assert (tmp_path / "cards" / f"{name}.output_error.png").read_bytes().startswith(b"\x89PNG")
    flat = " ".join(text.split())
    assert "Induction was kept in 2 of 3 blocks" in flat and "held-out windows of the calibration text" in flat
    assert flat.index("with Sparsity Induction.") < flat.index("Induction was kept")  # perplexity leads
    assert "| 1 | no | 2 | 1.5 |" in text
