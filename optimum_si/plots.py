"""Charts of a prune run for the model card: per-layer sparsity and, after Sparsity Induction, importance histograms.

Needs matplotlib, an optional extra (`pip install optimum-si[plots]`). The data preparation (`sparsity_series`,
`importance_histograms`) is pure Python over the report, so it is testable and usable without matplotlib; the drawing
uses matplotlib's object API (`Figure` on an Agg canvas), so it changes no global state: no `pyplot`, no backend
switch, no rcParams.

The report can be a `PruneReport`, its `to_dict()` form, a saved `si_report.json` or the checkpoint folder that holds
one, so a finished checkpoint can be re-rendered later (`optimum-si report out/ --plots`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .report import REPORT_NAME, PruneReport

__all__ = [
    "SPARSITY_PLOT",
    "HISTOGRAM_PLOT",
    "PLOT_FILES",
    "PlotUnavailable",
    "LayerPoint",
    "Histogram",
    "ImportanceHistograms",
    "load_report",
    "module_type",
    "block_index",
    "sparsity_series",
    "importance_histograms",
    "draw_sparsity_per_layer",
    "draw_importance_histograms",
    "render_plots",
    "matplotlib_available",
]

logger = logging.getLogger(__name__)

SPARSITY_PLOT = "sparsity_per_layer.png"
HISTOGRAM_PLOT = "importance_histograms.png"
PLOT_FILES = (SPARSITY_PLOT, HISTOGRAM_PLOT)
HISTOGRAM_KEY = "importance_histogram"
# Per-block panels drawn under the aggregate histogram (first, middle and last block that has data).
MAX_BLOCK_PANELS = 3
_DPI = 110
_BLOCK_INDEX = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


class PlotUnavailable(ImportError):
    """matplotlib is not installed (install the `plots` extra)."""


# ---- data preparation (pure) ------------------------------------------------------------------------------------


def load_report(source: PruneReport | Mapping[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """The report as a plain dict (the `si_report.json` format): from a `PruneReport`, a dict, a `si_report.json` file
    or a checkpoint folder holding one."""
    if isinstance(source, PruneReport):
        return source.to_dict()
    if isinstance(source, Mapping):
        return dict(source)
    path = os.fspath(source)
    if os.path.isdir(path):
        path = os.path.join(path, REPORT_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No {REPORT_NAME} at {os.fspath(source)!r}; it is written by SIPruner.save.")
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, dict) or not isinstance(data.get("layers"), dict):
        raise ValueError(f"{path} is not a {REPORT_NAME} (no `layers` table).")
    return data


@dataclass(frozen=True)
class LayerPoint:
    """One pruned Linear: its block index (None when the name has none), full name and achieved sparsity."""

    block: int | None
    name: str
    sparsity: float


def module_type(name: str) -> str:
    """The kind of a Linear from its name: `model.layers.3.self_attn.q_proj` -> `q_proj`, OPT's `fc1` -> `fc1`."""
    return name.rsplit(".", 1)[-1]


def block_index(name: str) -> int | None:
    """The first integer component of a module name (the decoder block), or None."""
    match = _BLOCK_INDEX.search(name)
    return int(match.group(1)) if match else None


def _layer_sparsity(entry: Mapping[str, Any]) -> float:
    if "sparsity" in entry:
        return float(entry["sparsity"])
    numel = int(entry.get("numel") or 0)
    return int(entry.get("zeros") or 0) / numel if numel else 0.0


def sparsity_series(report: Any) -> dict[str, list[LayerPoint]]:
    """Achieved sparsity of every pruned Linear, grouped by module type (in the report's order of first appearance:
    q, k, v, o, gate, up, down for Llama-style blocks), each group sorted by block index."""
    data = load_report(report)
    series: dict[str, list[LayerPoint]] = {}
    for name, entry in data["layers"].items():
        series.setdefault(module_type(name), []).append(LayerPoint(block_index(name), name, _layer_sparsity(entry)))
    for points in series.values():
        points.sort(key=lambda p: (-1 if p.block is None else p.block, p.name))
    return series


@dataclass(frozen=True)
class Histogram:
    """Counts of weights per log10-importance bin, before and after Sparsity Induction."""

    edges: tuple[float, ...]
    before: tuple[float, ...]
    after: tuple[float, ...]

    @property
    def bins(self) -> int:
        return len(self.before)

    @property
    def total_before(self) -> float:
        return float(sum(self.before))

    @property
    def total_after(self) -> float:
        return float(sum(self.after))


@dataclass(frozen=True)
class ImportanceHistograms:
    """The aggregate over all blocks with data, and each such block's own histogram."""

    aggregate: Histogram
    blocks: dict[int, Histogram] = field(default_factory=dict)

    def panel_blocks(self, limit: int = MAX_BLOCK_PANELS) -> list[int]:
        """Which blocks get their own panel: first, middle and last (all of them when there are few)."""
        indices = sorted(self.blocks)
        if len(indices) <= limit:
            return indices
        if limit <= 1:
            return indices[:limit]
        return sorted({indices[round(i * (len(indices) - 1) / (limit - 1))] for i in range(limit)})


def _parse_histogram(raw: Any) -> Histogram | None:
    if not isinstance(raw, Mapping):
        return None
    try:
        edges = tuple(float(e) for e in raw["edges"])
        before = tuple(float(c) for c in raw["before"])
        after = tuple(float(c) for c in raw["after"])
    except (KeyError, TypeError, ValueError):
        return None
    if (not before or len(edges) != len(before) + 1 or len(after) != len(before)
            or not all(math.isfinite(e) for e in edges) or any(b <= a for a, b in zip(edges, edges[1:]))
            or any(c < 0 or not math.isfinite(c) for c in before + after)):
        return None
    return Histogram(edges, before, after)


def _rebin(hist: Histogram, edges: tuple[float, ...]) -> tuple[list[float], list[float]]:
    """Counts of `hist` on other bin edges, spreading each source bin uniformly over its width."""
    before, after = [0.0] * (len(edges) - 1), [0.0] * (len(edges) - 1)
    for lo, hi, cb, ca in zip(hist.edges, hist.edges[1:], hist.before, hist.after):
        width = hi - lo
        for j, (tlo, thi) in enumerate(zip(edges, edges[1:])):
            overlap = min(hi, thi) - max(lo, tlo)
            if overlap > 0:
                before[j] += cb * overlap / width
                after[j] += ca * overlap / width
    return before, after


def _aggregate(histograms: list[Histogram]) -> Histogram:
    edges = histograms[0].edges
    if all(h.edges == edges for h in histograms):
        return Histogram(edges, tuple(map(sum, zip(*(h.before for h in histograms)))),
                         tuple(map(sum, zip(*(h.after for h in histograms)))))
    # Blocks binned on different ranges: one uniform grid over their union, as fine as the finest block.
    lo, hi = min(h.edges[0] for h in histograms), max(h.edges[-1] for h in histograms)
    bins = max(h.bins for h in histograms)
    edges = tuple(lo + (hi - lo) * i / bins for i in range(bins + 1))
    before, after = [0.0] * bins, [0.0] * bins
    for h in histograms:
        b, a = _rebin(h, edges)
        before = [x + y for x, y in zip(before, b)]
        after = [x + y for x, y in zip(after, a)]
    return Histogram(edges, tuple(before), tuple(after))


def importance_histograms(report: Any) -> ImportanceHistograms | None:
    """The importance-score histograms recorded by Sparsity Induction (`blocks[i].induction["importance_histogram"]`:
    log10 bin edges and per-bin counts before and after induction), or None when no block has one. Blocks without
    the key, and malformed entries, are left out."""
    data = load_report(report)
    blocks: dict[int, Histogram] = {}
    for position, block in enumerate(data.get("blocks") or []):
        induction = block.get("induction") if isinstance(block, Mapping) else None
        raw = induction.get(HISTOGRAM_KEY) if isinstance(induction, Mapping) else None
        if raw is None:
            continue
        hist = _parse_histogram(raw)
        if hist is None:
            logger.warning("Block %s: malformed %s in the report; left out of the chart.", block.get("index"),
                           HISTOGRAM_KEY)
            continue
        blocks[int(block.get("index", position))] = hist
    if not blocks:
        return None
    return ImportanceHistograms(_aggregate([blocks[i] for i in sorted(blocks)]), blocks)


# ---- drawing (matplotlib, object API only) ------------------------------------------------------------------------


def matplotlib_available() -> bool:
    try:
        _matplotlib()
    except PlotUnavailable:
        return False
    return True


def _matplotlib():
    """(Figure, FigureCanvasAgg, colormaps); raises PlotUnavailable without matplotlib."""
    try:
        import matplotlib  # noqa: F401  (top-level first: a blocked `matplotlib` must fail here)
        from matplotlib import colormaps
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise PlotUnavailable("Plots need matplotlib: pip install 'optimum-si[plots]'.") from err
    return Figure, FigureCanvasAgg, colormaps


def _save(figure: Any, canvas_cls: Any, path: str) -> str:
    canvas_cls(figure)  # attaches an Agg canvas to this figure only
    tmp = path + ".tmp.png"
    try:
        figure.savefig(tmp, format="png", dpi=_DPI, metadata={"Software": None})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def draw_sparsity_per_layer(series: Mapping[str, list[LayerPoint]], path: str | os.PathLike,
                            target: float | None = None, title: str | None = None) -> str:
    """Achieved sparsity of each pruned Linear against its block index, one colour per module type."""
    Figure, Canvas, colormaps = _matplotlib()
    path = os.fspath(path)
    blocks = sorted({p.block for points in series.values() for p in points if p.block is not None})
    figure = Figure(figsize=(min(max(6.5, 4.0 + 0.28 * len(blocks)), 16.0), 4.2), layout="constrained")
    ax = figure.add_subplot()
    cmap = colormaps["tab10"]
    kinds = list(series)
    dodge = 0.6 / max(len(kinds), 1)  # spread the types inside a block so equal values stay visible
    values = []
    for i, kind in enumerate(kinds):
        points = series[kind]
        x = [(p.block if p.block is not None else -1) + (i - (len(kinds) - 1) / 2) * dodge for p in points]
        y = [p.sparsity for p in points]
        values += y
        label = kind[:-5] if kind.endswith("_proj") else kind
        ax.plot(x, y, marker="o", markersize=4, linewidth=0.8, color=cmap(i % cmap.N), label=label)
    if target is not None:
        ax.axhline(target, color="0.3", linestyle="--", linewidth=1, label=f"target {target:.2f}")
        values.append(target)
    if values:
        lo, hi = min(values), max(values)
        pad = max(0.02, 0.1 * (hi - lo))
        ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad))
    if blocks and len(blocks) <= 40:
        ax.set_xticks(blocks)
    ax.set_xlabel("decoder block")
    ax.set_ylabel("achieved sparsity")
    ax.set_title(title or "Sparsity of each pruned Linear")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small", frameon=False)
    return _save(figure, Canvas, path)


def _draw_histogram(ax: Any, hist: Histogram, title: str, legend: bool) -> None:
    ax.stairs(hist.before, hist.edges, fill=True, alpha=0.35, color="tab:gray", label="before induction")
    ax.stairs(hist.after, hist.edges, linewidth=1.4, color="tab:red", label="after induction")
    ax.set_title(title, fontsize="medium")
    ax.set_xlabel("log10 importance  |W| * ||x||")
    ax.grid(True, alpha=0.3)
    if legend:
        ax.legend(fontsize="small", frameon=False)


def draw_importance_histograms(data: ImportanceHistograms, path: str | os.PathLike, title: str | None = None) -> str:
    """The aggregate histogram (all blocks) on top and a few per-block panels below."""
    Figure, Canvas, _ = _matplotlib()
    path = os.fspath(path)
    panels = data.panel_blocks()
    show_panels = len(data.blocks) > 1 and panels
    figure = Figure(figsize=(10.0, 7.0 if show_panels else 4.2), layout="constrained")
    grid = figure.add_gridspec(2 if show_panels else 1, max(len(panels), 1) if show_panels else 1,
                               height_ratios=[1.4, 1] if show_panels else None)
    top = figure.add_subplot(grid[0, :])
    _draw_histogram(top, data.aggregate, f"All {len(data.blocks)} block(s)", legend=True)
    top.set_ylabel("weights")
    if show_panels:
        for j, index in enumerate(panels):
            ax = figure.add_subplot(grid[1, j])
            _draw_histogram(ax, data.blocks[index], f"block {index}", legend=False)
            if j == 0:
                ax.set_ylabel("weights")
    figure.suptitle(title or "Importance scores before and after Sparsity Induction")
    return _save(figure, Canvas, path)


def render_plots(report: Any, folder: str | os.PathLike, strict: bool = True) -> dict[str, str]:
    """Write the charts a report supports into `folder`: `{"sparsity": SPARSITY_PLOT}` and, when Sparsity Induction
    recorded histograms, `{"importance": HISTOGRAM_PLOT}` (file names, relative to `folder`).

    Raises `PlotUnavailable` without matplotlib. With `strict=False` a chart that fails to draw is logged and left
    out instead of raising; either way every name returned is a complete file (charts are written to a temporary
    name and moved in).
    """
    _matplotlib()
    folder = os.fspath(folder)
    data = load_report(report)
    charts = []
    series = sparsity_series(data)
    if series:
        target = data.get("target_sparsity")
        heading = " ".join(str(data[k]) for k in ("method", "mask_structure") if data.get(k))
        title = f"{heading}: sparsity of each pruned Linear" if heading else None
        charts.append(("sparsity", SPARSITY_PLOT, lambda path: draw_sparsity_per_layer(
            series, path, target=float(target) if target is not None else None, title=title)))
    histograms = importance_histograms(data)
    if histograms is not None:
        charts.append(("importance", HISTOGRAM_PLOT, lambda path: draw_importance_histograms(histograms, path)))
    written: dict[str, str] = {}
    for key, name, draw in charts:
        try:
            draw(os.path.join(folder, name))
        except Exception as err:  # noqa: BLE001 - a chart is never worth failing a save for
            if strict:
                raise
            logger.warning("Could not draw %s (%s: %s); the model card leaves it out.", name, type(err).__name__, err)
            continue
        written[key] = name
    return written
