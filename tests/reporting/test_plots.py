import json
import logging
import os
import re
import sys

import pytest

from optimum_si import InductionConfig, SIPruner
from optimum_si.cli import main
from optimum_si.reporting import plots
from optimum_si.reporting.plots import (
    OUTPUT_ERROR_PLOT,
    SPARSITY_PLOT,
    allocation_differs,
    load_report,
    output_error_series,
    render_plots,
    sparsity_series,
)
from optimum_si.reporting.report import REPORT_NAME
from tests.conftest import tiny_model, token_ids

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LLAMA_TYPES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _pruned(**kwargs):
    model = tiny_model("llama")
    pruner = SIPruner(**{"method": "wanda", "num_samples": 4, "seqlen": 32, "show_progress": False, **kwargs})
    pruner.prune(model, dataset=token_ids(4, 32))
    return model, pruner


def _vary_allocation(report):
    """What a non-uniform allocation (OWL-style) looks like in the report: block 1 pruned harder than block 0."""
    for name, record in report.layers.items():
        if ".1." in name:
            record.zeros = min(record.numel, int(record.numel * 0.7))


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


def test_allocation_differs_only_beyond_rounding():
    def series(values):
        return {"fc1": [plots.LayerPoint(i, f"layers.{i}.fc1", v) for i, v in enumerate(values)]}

    assert not allocation_differs(series([0.5, 0.5, 0.5]))
    assert not allocation_differs(series([0.5, 0.5029, 0.4985]))  # a uniform target rounded to whole weights
    assert allocation_differs(series([0.45, 0.5, 0.55]))
    assert not allocation_differs({})


def _owl_like_report(blocks=3, types=LLAMA_TYPES):
    """Every Linear of block b at the same sparsity, the blocks apart: what OWL's per-block allocation gives."""
    layers = {f"model.layers.{b}.{kind}": {"numel": 1000, "zeros": 400 + 50 * b + (1 if kind == "q_proj" else 0)}
              for b in range(blocks) for kind in types}
    return {"layers": layers, "target_sparsity": 0.45, "method": "wanda", "mask_structure": "unstructured"}


def test_block_sparsity_series_has_one_value_per_block():
    points = plots.block_sparsity_series(_owl_like_report())
    assert [p.block for p in points] == [0, 1, 2]
    assert [round(p.sparsity, 4) for p in points] == [0.4001, 0.4501, 0.5001]  # zeros / weights over the block
    assert [(p.low, p.high) for p in points] == [(0.4, 0.401), (0.45, 0.451), (0.5, 0.501)]


def test_the_allocation_chart_plots_one_value_per_block(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(plots, "_save", lambda figure, canvas, path: drawn.append(figure) or path)
    assert render_plots(_owl_like_report(), tmp_path) == {"sparsity": SPARSITY_PLOT}
    (ax,) = drawn[0].axes
    data = [line for line in ax.get_lines() if line.get_label() == "block sparsity"]
    assert len(data) == 1  # one series, not one per module type
    assert list(data[0].get_xdata()) == [0, 1, 2]
    assert [round(v, 4) for v in data[0].get_ydata()] == [0.4001, 0.4501, 0.5001]
    assert not ax.collections  # the Linears of a block agree: no range bars
    # Linears of one block that really differ show their range on that block only.
    report = _owl_like_report()
    report["layers"]["model.layers.1.down_proj"]["zeros"] = 600
    drawn.clear()
    render_plots(report, tmp_path)
    (ax,) = drawn[0].axes
    (bars,) = ax.collections
    (segment,) = bars.get_segments()
    assert segment[0][0] == segment[1][0] == 1 and (segment[0][1], segment[1][1]) == (0.45, 0.6)


def test_output_error_series_from_the_report():
    blocks = [
        {"index": 1, "output_error": 0.2, "induction": {"kept": True, "relative_error_base": 0.3,
                                                          "relative_error_induced": 0.25}},
        {"index": 0, "output_error": 0.1, "induction": {"kept": False, "relative_error_base": 0.12,
                                                          "relative_error_induced": 0.15}},
        {"index": 2, "output_error": None, "induction": None},  # no figure at all: left out
        {"index": 3, "output_error": "nan"},
    ]
    data = output_error_series({"layers": {}, "blocks": blocks})
    assert data.blocks == (0, 1)
    assert data.measured == (0.1, 0.2)
    assert data.base == (0.12, 0.3)
    assert data.with_si == (0.12, 0.25)  # a reverted block ships the base pruner's weights
    plain = output_error_series({"layers": {}, "blocks": [{"index": 0, "output_error": 0.1}]})
    assert plain.measured == (0.1,) and plain.base is None and plain.with_si is None
    assert output_error_series({"layers": {}, "blocks": blocks[2:]}) is None
    assert output_error_series({"layers": {}}) is None


def test_load_report_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=REPORT_NAME):
        load_report(tmp_path)
    (tmp_path / REPORT_NAME).write_text("[1, 2]")
    with pytest.raises(ValueError, match="layers"):
        load_report(tmp_path)
    for damage in (b'{"layers": {', b"\xff\xfe{}", b"[" * 100_000 + b"]" * 100_000):
        (tmp_path / REPORT_NAME).write_bytes(damage)
        with pytest.raises(ValueError, match=f"{REPORT_NAME} is not valid JSON .* truncated or corrupted"):
            load_report(tmp_path)


# ---- drawing, save and card ------------------------------------------------------------------------------------


def test_uniform_run_gets_the_error_chart_and_no_flat_sparsity_line(tmp_path):
    model, pruner = _pruned(mask_structure="2:4")
    pruner.save(model, tmp_path)
    _assert_png(tmp_path / OUTPUT_ERROR_PLOT)
    assert not os.path.exists(tmp_path / SPARSITY_PLOT)
    card, links = _assert_complete_card(tmp_path)
    assert links == {OUTPUT_ERROR_PLOT}
    assert "## How far each block moved from the dense model" in card.text
    summary = pruner.report.output_error_summary()
    assert f"**{summary['mean']:.4f}** on average over 2" in card.text
    # The saved report carries the figures, so the chart can be drawn again from the folder alone.
    assert output_error_series(tmp_path) == output_error_series(pruner.report)


def test_differing_sparsities_add_the_allocation_chart(tmp_path):
    model, pruner = _pruned()
    _vary_allocation(pruner.report)
    pruner.save(model, tmp_path)
    _assert_png(tmp_path / SPARSITY_PLOT)
    _, links = _assert_complete_card(tmp_path)
    assert links == {OUTPUT_ERROR_PLOT, SPARSITY_PLOT}


def test_sparsity_induction_chart_compares_base_and_si(tmp_path):
    model, pruner = _pruned(induction=InductionConfig(epochs=1), num_samples=4, seqlen=16)
    pruner.save(model, tmp_path)
    data = output_error_series(tmp_path)
    assert data.base is not None and all(v is not None and v > 0 for v in data.base + data.with_si)
    _assert_png(tmp_path / OUTPUT_ERROR_PLOT)
    card, links = _assert_complete_card(tmp_path)
    assert links == {OUTPUT_ERROR_PLOT}
    text = " ".join(card.text.split())
    summary = pruner.report.output_error_summary()
    assert f"{summary['base_mean']:.4f} with wanda alone and {summary['induced_mean']:.4f} with Sparsity Induction" \
        in text


def test_charts_of_an_earlier_version_are_removed_when_redrawn(tmp_path):
    from optimum_si.export.save import write_plots

    _, pruner = _pruned()
    (tmp_path / "importance_histograms.png").write_bytes(PNG_MAGIC)  # what earlier versions drew
    (tmp_path / SPARSITY_PLOT).write_bytes(PNG_MAGIC)  # a flat line for this uniform run: not drawn any more
    assert write_plots(str(tmp_path), pruner.report) == {"output_error": OUTPUT_ERROR_PLOT}
    assert sorted(os.listdir(tmp_path)) == [OUTPUT_ERROR_PLOT]


def test_without_matplotlib_the_card_is_complete_and_old_charts_go(tmp_path, monkeypatch, caplog):
    model, pruner = _pruned()
    _vary_allocation(pruner.report)
    pruner.save(model, tmp_path)
    assert os.path.isfile(tmp_path / SPARSITY_PLOT) and os.path.isfile(tmp_path / OUTPUT_ERROR_PLOT)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    assert not plots.matplotlib_available()
    with caplog.at_level(logging.INFO, logger="optimum_si.export.save"):
        pruner.save(model, tmp_path, overwrite=True)
    assert "matplotlib is not installed" in caplog.text
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".png")]  # no picture of an earlier save
    card, links = _assert_complete_card(tmp_path)
    assert links == set() and ".png" not in card.text and "0.5000" in card.text
    with pytest.raises(plots.PlotUnavailable):
        render_plots(pruner.report, tmp_path)


def test_a_failing_chart_never_fails_the_save(tmp_path, monkeypatch, caplog):
    model, pruner = _pruned()
    _vary_allocation(pruner.report)

    def broken(*args, **kwargs):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(plots, "draw_output_error", broken)
    with caplog.at_level(logging.WARNING):
        pruner.save(model, tmp_path)
    assert "no fonts" in caplog.text
    assert os.path.isfile(tmp_path / "si_config.json") and not os.path.exists(tmp_path / OUTPUT_ERROR_PLOT)
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
    _vary_allocation(pruner.report)
    assert render_plots(pruner.report, tmp_path) == {"output_error": OUTPUT_ERROR_PLOT, "sparsity": SPARSITY_PLOT}
    assert matplotlib.get_backend() == backend and dict(matplotlib.rcParams) == params
    assert ("matplotlib.pyplot" in sys.modules) == had_pyplot


def test_cli_report_redraws_from_si_report_json(tmp_path, capsys):
    model, pruner = _pruned()
    pruner.save(model, tmp_path / "ckpt", plots=False)
    out = tmp_path / "charts"
    out.mkdir()
    assert main(["report", str(tmp_path / "ckpt"), "--plots", str(out)]) == 0
    assert f"wrote {out / OUTPUT_ERROR_PLOT}" in capsys.readouterr().out
    _assert_png(out / OUTPUT_ERROR_PLOT)
    assert not os.path.exists(out / SPARSITY_PLOT)
    assert main(["report", str(tmp_path / "ckpt"), "--plots", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "is not a folder" in err and len(err.strip().splitlines()) == 1
