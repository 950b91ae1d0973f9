import json
import logging
import math
import os
import re
import sys

import pytest

from optimum_si import SIPruner, plots
from optimum_si.cli import main
from optimum_si.plots import (
    HISTOGRAM_PLOT,
    SPARSITY_PLOT,
    importance_histograms,
    load_report,
    render_plots,
    sparsity_series,
)
from optimum_si.report import REPORT_NAME

from .conftest import tiny_model, token_ids

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LLAMA_TYPES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _pruned(**kwargs):
    model = tiny_model("llama")
    pruner = SIPruner(**{"method": "wanda", "num_samples": 4, "seqlen": 32, "show_progress": False, **kwargs})
    pruner.prune(model, dataset=token_ids(4, 32))
    return model, pruner


def _histogram(shift: float, bins: int = 20, lo: float = -4.0, hi: float = 1.0) -> dict:
    edges = [lo + (hi - lo) * i / bins for i in range(bins + 1)]
    centres = [(a + b) / 2 for a, b in zip(edges, edges[1:])]
    before = [int(1000 * math.exp(-((c + 1.5) / 0.7) ** 2)) for c in centres]
    after = [int(500 * math.exp(-((c + 3 + shift) / 0.3) ** 2) + 500 * math.exp(-((c + 0.5) / 0.4) ** 2))
             for c in centres]
    return {"edges": edges, "before": before, "after": after}


def _add_histograms(report, blocks=None):
    """What Sparsity Induction records per block (summed over the block's pruned Linears)."""
    for record in report.blocks:
        if blocks is None or record.index in blocks:
            record.induction = {**(record.induction or {}), "importance_histogram": _histogram(0.1 * record.index)}


def _assert_png(path):
    from PIL import Image

    with open(path, "rb") as handle:
        assert handle.read(8) == PNG_MAGIC
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 200 and image.size[1] > 200


def _card_images(folder) -> set[str]:
    text = open(os.path.join(folder, "README.md"), encoding="utf-8").read()
    return set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text))


def _assert_complete_card(folder):
    from huggingface_hub import ModelCard

    card = ModelCard.load(os.path.join(folder, "README.md"))
    assert {"sparse", "pruned", "optimum-si"} <= set(card.data.tags)
    for heading in ("## How to load", "## Recipe", "## Measured sparsity", "## Versions", "## Citations"):
        assert heading in card.text
    links = _card_images(folder)
    assert all(not os.path.isabs(link) and "/" not in link for link in links)  # relative, next to the card
    pngs = {name for name in os.listdir(folder) if name.endswith(".png")}
    assert links == pngs, "the card links exactly the charts that exist"
    return card, links


# ---- data preparation ------------------------------------------------------------------------------------------


def test_sparsity_series_matches_the_report(tmp_path):
    model, pruner = _pruned(mask_structure="unstructured", sparsity=0.6)
    report = pruner.report
    series = sparsity_series(report)
    assert list(series) == LLAMA_TYPES
    for kind, points in series.items():
        assert [p.block for p in points] == [0, 1]
        for point in points:
            assert point.name.endswith(kind) and point.sparsity == report.layers[point.name].sparsity
    assert sum(len(points) for points in series.values()) == len(report.layers) == 14
    # The same data from the saved si_report.json (folder or file) and from its dict form.
    pruner.save(model, tmp_path, plots=False)
    assert sparsity_series(tmp_path) == series
    assert sparsity_series(tmp_path / REPORT_NAME) == series
    assert sparsity_series(json.loads((tmp_path / REPORT_NAME).read_text())) == series


def test_opt_names_and_missing_block_index():
    data = {"layers": {"model.decoder.layers.3.fc1": {"numel": 10, "zeros": 4},
                       "model.decoder.layers.1.fc1": {"numel": 10, "zeros": 6, "sparsity": 0.6},
                       "extra.proj": {"numel": 4, "zeros": 1}}}
    series = sparsity_series(data)
    assert [(p.block, p.sparsity) for p in series["fc1"]] == [(1, 0.6), (3, 0.4)]
    assert [(p.block, p.sparsity) for p in series["proj"]] == [(None, 0.25)]


def test_importance_histograms_aggregate_and_per_block():
    blocks = [
        {"index": 0, "seconds": 1.0, "induction": {"importance_histogram": _histogram(0.0), "steps": 3}},
        {"index": 1, "seconds": 1.0, "induction": {"steps": 3}},  # no histogram: left out
        {"index": 2, "seconds": 1.0, "induction": None},
        {"index": 3, "seconds": 1.0, "induction": {"importance_histogram": _histogram(0.2)}},
        {"index": 4, "seconds": 1.0, "induction": {"importance_histogram": {"edges": [0, 1], "before": [1, 2],
                                                                              "after": [1]}}},  # malformed
    ]
    data = importance_histograms({"layers": {}, "blocks": blocks})
    assert sorted(data.blocks) == [0, 3]
    h0, h3 = _histogram(0.0), _histogram(0.2)
    assert list(data.aggregate.edges) == h0["edges"]
    assert list(data.aggregate.before) == [a + b for a, b in zip(h0["before"], h3["before"])]
    assert list(data.aggregate.after) == [a + b for a, b in zip(h0["after"], h3["after"])]
    assert list(data.blocks[3].after) == h3["after"]
    assert data.panel_blocks() == [0, 3]
    assert importance_histograms({"layers": {}, "blocks": blocks[1:3]}) is None
    assert importance_histograms({"layers": {}}) is None


def test_histograms_on_different_bins_are_merged_on_one_grid():
    blocks = [{"index": 0, "induction": {"importance_histogram": _histogram(0.0, bins=20, lo=-4, hi=1)}},
              {"index": 1, "induction": {"importance_histogram": _histogram(0.0, bins=10, lo=-6, hi=0)}}]
    data = importance_histograms({"layers": {}, "blocks": blocks})
    assert data.aggregate.edges[0] == -6 and data.aggregate.edges[-1] == 1 and data.aggregate.bins == 20
    total = sum(_histogram(0.0, 20, -4, 1)["before"]) + sum(_histogram(0.0, 10, -6, 0)["before"])
    assert data.aggregate.total_before == pytest.approx(total)


def test_panel_blocks_first_middle_last():
    blocks = [{"index": i, "induction": {"importance_histogram": _histogram(0.0)}} for i in range(30)]
    assert importance_histograms({"layers": {}, "blocks": blocks}).panel_blocks() == [0, 14, 29]


def test_load_report_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=REPORT_NAME):
        load_report(tmp_path)
    (tmp_path / REPORT_NAME).write_text("[1, 2]")
    with pytest.raises(ValueError, match="layers"):
        load_report(tmp_path)


# ---- drawing, save and card ------------------------------------------------------------------------------------


def test_save_writes_both_charts_and_links_them(tmp_path):
    model, pruner = _pruned(mask_structure="2:4")
    _add_histograms(pruner.report)
    pruner.save(model, tmp_path)
    _assert_png(tmp_path / SPARSITY_PLOT)
    _assert_png(tmp_path / HISTOGRAM_PLOT)
    card, links = _assert_complete_card(tmp_path)
    assert links == {SPARSITY_PLOT, HISTOGRAM_PLOT}
    assert "## Sparsity Induction" in card.text
    # The saved report carries the histograms, so the charts can be drawn again from the folder alone.
    assert importance_histograms(tmp_path) == importance_histograms(pruner.report)


def test_without_histograms_only_the_sparsity_chart(tmp_path):
    model, pruner = _pruned()
    _add_histograms(pruner.report, blocks={1})  # blocks may lack the key
    pruner.report.blocks[0].induction = None
    pruner.save(model, tmp_path / "one")
    assert os.path.isfile(tmp_path / "one" / HISTOGRAM_PLOT)
    model, pruner = _pruned()
    pruner.save(model, tmp_path / "none")
    _assert_png(tmp_path / "none" / SPARSITY_PLOT)
    assert not os.path.exists(tmp_path / "none" / HISTOGRAM_PLOT)
    card, links = _assert_complete_card(tmp_path / "none")
    assert links == {SPARSITY_PLOT} and "## Sparsity Induction" not in card.text


def test_sparsity_induction_run_charts_follow_the_recorded_data(tmp_path):
    """A real SI prune: the histogram chart is there exactly when the engine recorded histograms."""
    model, pruner = _pruned(induction=True, num_samples=2, seqlen=16, induction_epochs=1)
    pruner.save(model, tmp_path)
    recorded = any((b.induction or {}).get("importance_histogram") for b in pruner.report.blocks)
    assert os.path.isfile(tmp_path / HISTOGRAM_PLOT) == recorded
    _assert_png(tmp_path / SPARSITY_PLOT)
    _assert_complete_card(tmp_path)


def test_without_matplotlib_the_card_is_complete_and_old_charts_go(tmp_path, monkeypatch, caplog):
    model, pruner = _pruned()
    _add_histograms(pruner.report)
    pruner.save(model, tmp_path)
    assert os.path.isfile(tmp_path / SPARSITY_PLOT) and os.path.isfile(tmp_path / HISTOGRAM_PLOT)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    assert not plots.matplotlib_available()
    with caplog.at_level(logging.INFO, logger="optimum_si.checkpoint"):
        pruner.save(model, tmp_path)
    assert "matplotlib is not installed" in caplog.text
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".png")]  # no picture of an earlier save
    card, links = _assert_complete_card(tmp_path)
    assert links == set() and ".png" not in card.text and "0.5000" in card.text
    with pytest.raises(plots.PlotUnavailable):
        render_plots(pruner.report, tmp_path)


def test_a_failing_chart_never_fails_the_save(tmp_path, monkeypatch, caplog):
    model, pruner = _pruned()
    _add_histograms(pruner.report)

    def broken(*args, **kwargs):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(plots, "draw_importance_histograms", broken)
    with caplog.at_level(logging.WARNING):
        pruner.save(model, tmp_path)
    assert "no fonts" in caplog.text
    assert os.path.isfile(tmp_path / "si_config.json") and not os.path.exists(tmp_path / HISTOGRAM_PLOT)
    _, links = _assert_complete_card(tmp_path)
    assert links == {SPARSITY_PLOT}


def test_plots_false_and_drawing_leaves_global_state_alone(tmp_path):
    import matplotlib

    model, pruner = _pruned()
    backend, params = matplotlib.get_backend(), dict(matplotlib.rcParams)
    had_pyplot = "matplotlib.pyplot" in sys.modules
    pruner.save(model, tmp_path / "off", plots=False)
    assert not [n for n in os.listdir(tmp_path / "off") if n.endswith(".png")]
    assert _card_images(tmp_path / "off") == set()
    _add_histograms(pruner.report)
    assert render_plots(pruner.report, tmp_path) == {"sparsity": SPARSITY_PLOT, "importance": HISTOGRAM_PLOT}
    assert matplotlib.get_backend() == backend and dict(matplotlib.rcParams) == params
    assert ("matplotlib.pyplot" in sys.modules) == had_pyplot


def test_cli_report_redraws_from_si_report_json(tmp_path, capsys):
    model, pruner = _pruned()
    _add_histograms(pruner.report)
    pruner.save(model, tmp_path / "ckpt", plots=False)
    out = tmp_path / "charts"
    out.mkdir()
    assert main(["report", str(tmp_path / "ckpt"), "--plots", str(out)]) == 0
    assert f"wrote {out / SPARSITY_PLOT}" in capsys.readouterr().out
    _assert_png(out / SPARSITY_PLOT)
    _assert_png(out / HISTOGRAM_PLOT)
    assert main(["report", str(tmp_path / "ckpt"), "--plots", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "is not a folder" in err and len(err.strip().splitlines()) == 1
