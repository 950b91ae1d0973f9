"""Charts of a prune run for the model card: how far each block's output moved from the dense model, and the
sparsity allocation when the pruned Linears got different sparsities.

Needs matplotlib (the optional `plots` extra). The data preparation (`output_error_series`,
`sparsity_series`, `block_sparsity_series`) is pure Python over the report, so it is testable and usable without
matplotlib; the drawing uses matplotlib's object API (`Figure` on an Agg canvas), so it changes no global state: no
`pyplot`, no backend switch, no rcParams.

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
from dataclasses import dataclass
from typing import Any

from ..checkpoint.files import OUTPUT_ERROR_PLOT, PLOT_FILES, REPORT_NAME, SPARSITY_PLOT
from .report import PruneReport

__all__ = [
    "OUTPUT_ERROR_PLOT",
    "SPARSITY_PLOT",
    "PLOT_FILES",
    "PlotUnavailable",
    "LayerPoint",
    "OutputErrors",
    "load_report",
    "module_type",
    "block_index",
    "sparsity_series",
    "allocation_differs",
    "output_error_series",
    "BlockSparsity",
    "block_sparsity_series",
    "draw_sparsity_per_block",
    "draw_output_error",
    "render_plots",
    "matplotlib_available",
]

logger = logging.getLogger(__name__)

# A uniform target still gives slightly different achieved sparsities (whole weights per row or matrix).
ALLOCATION_TOLERANCE = 0.005
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
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (ValueError, RecursionError) as err:  # JSON and UTF-8 errors are ValueErrors
        raise ValueError(f"{path} is not valid JSON ({err}); the file is truncated or corrupted.") from None
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


def allocation_differs(series: Mapping[str, list[LayerPoint]], tolerance: float = ALLOCATION_TOLERANCE) -> bool:
    """Whether the pruned Linears got different sparsities (a non-uniform allocation such as OWL's), beyond the
    rounding of a uniform target to whole weights per row or matrix."""
    values = [p.sparsity for points in series.values() for p in points]
    return bool(values) and max(values) - min(values) > tolerance


@dataclass(frozen=True)
class BlockSparsity:
    """One decoder block's achieved sparsity over its pruned Linears (zeros / weights), and the lowest and highest
    sparsity among them."""

    block: int
    sparsity: float
    low: float
    high: float


def block_sparsity_series(report: Any) -> list[BlockSparsity]:
    """The achieved sparsity of each decoder block, in block order (Linears without a block index are left out)."""
    data = load_report(report)
    totals: dict[int, list[float]] = {}
    for name, entry in data["layers"].items():
        block = block_index(name)
        if block is None:
            continue
        numel = int(entry.get("numel") or 0)
        zeros = _layer_sparsity(entry) * numel
        bucket = totals.setdefault(block, [0.0, 0.0])
        bucket[0] += zeros
        bucket[1] += numel
    ranges: dict[int, list[float]] = {}
    for points in sparsity_series(data).values():
        for point in points:
            if point.block is not None:
                ranges.setdefault(point.block, []).append(point.sparsity)
    return [BlockSparsity(block, zeros / numel if numel else min(ranges[block]), min(ranges[block]),
                          max(ranges[block])) for block, (zeros, numel) in sorted(totals.items())]


@dataclass(frozen=True)
class OutputErrors:
    """Relative output error per decoder block, ||pruned block(x) - dense block(x)|| / ||dense block(x)||.

    `measured`: what the walker recorded for the blocks as saved (`blocks[i].output_error`). After Sparsity
    Induction, `base` and `with_si` come from the induction records, on the windows its keep/revert verdict is
    judged on: the base pruner's block alone, and the block as saved (induced where kept, the base pruner's where
    reverted). Entries are None where a block has no figure."""

    blocks: tuple[int, ...]
    measured: tuple[float | None, ...]
    base: tuple[float | None, ...] | None = None
    with_si: tuple[float | None, ...] | None = None


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number >= 0 else None


def output_error_series(report: Any) -> OutputErrors | None:
    """The per-block relative output errors of a report, or None when no block recorded any."""
    data = load_report(report)
    rows = []
    for position, block in enumerate(data.get("blocks") or []):
        if not isinstance(block, Mapping):
            continue
        induction = block.get("induction") if isinstance(block.get("induction"), Mapping) else {}
        base = _finite(induction.get("relative_error_base"))
        induced = _finite(induction.get("relative_error_induced"))
        with_si = (induced if induction.get("kept") else base) if base is not None and induced is not None else None
        rows.append((int(block.get("index", position)), _finite(block.get("output_error")), base, with_si))
    rows = [row for row in rows if any(value is not None for value in row[1:])]
    if not rows:
        return None
    rows.sort(key=lambda row: row[0])
    si = any(row[3] is not None for row in rows)
    return OutputErrors(tuple(r[0] for r in rows), tuple(r[1] for r in rows),
                        tuple(r[2] for r in rows) if si else None, tuple(r[3] for r in rows) if si else None)


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
        raise PlotUnavailable("Plots need matplotlib (the `plots` extra): pip install matplotlib.") from err
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


def draw_sparsity_per_block(points: list[BlockSparsity], path: str | os.PathLike, target: float | None = None,
                            title: str | None = None) -> str:
    """The sparsity of each decoder block (one value per block: an allocation such as OWL's is per block), with the
    spread of its Linears as a vertical bar where they differ beyond rounding."""
    Figure, Canvas, _ = _matplotlib()
    path = os.fspath(path)
    blocks = [p.block for p in points]
    figure = Figure(figsize=(min(max(6.5, 4.0 + 0.28 * len(blocks)), 16.0), 4.2), layout="constrained")
    ax = figure.add_subplot()
    ax.plot(blocks, [p.sparsity for p in points], marker="o", markersize=4, linewidth=1.4, color="tab:blue",
            label="block sparsity")
    spread = [p for p in points if p.high - p.low > ALLOCATION_TOLERANCE]
    if spread:
        ax.vlines([p.block for p in spread], [p.low for p in spread], [p.high for p in spread], color="tab:blue",
                  alpha=0.4, linewidth=3, label="range of its Linears")
    values = [v for p in points for v in (p.low, p.high)]
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
    ax.set_title(title or "Sparsity of each decoder block")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", frameon=False)
    return _save(figure, Canvas, path)


def _line(ax: Any, blocks: tuple[int, ...], values: tuple[float | None, ...] | None, **style: Any) -> list[float]:
    points = [(b, v) for b, v in zip(blocks, values or ()) if v is not None]
    if points:
        ax.plot([b for b, _ in points], [v for _, v in points], marker="o", markersize=4, **style)
    return [v for _, v in points]


def draw_output_error(data: OutputErrors, path: str | os.PathLike, method: str | None = None,
                      title: str | None = None) -> str:
    """The relative output error of each block against its block index: one line for a plain run; after Sparsity
    Induction, the base pruner alone against the block with SI (as saved)."""
    Figure, Canvas, _ = _matplotlib()
    path = os.fspath(path)
    figure = Figure(figsize=(min(max(6.5, 4.0 + 0.28 * len(data.blocks)), 16.0), 4.2), layout="constrained")
    ax = figure.add_subplot()
    label = method or "pruned"
    if data.with_si is not None:
        values = _line(ax, data.blocks, data.base, color="tab:gray", linewidth=1.2, label=f"{label} alone")
        values += _line(ax, data.blocks, data.with_si, color="tab:red", linewidth=1.6, label=f"{label} + SI (saved)")
    else:
        values = _line(ax, data.blocks, data.measured, color="tab:blue", linewidth=1.4, label=label)
    ax.set_ylim(0.0, max(values, default=1.0) * 1.12 or 1.0)
    if len(data.blocks) <= 40:
        ax.set_xticks(list(data.blocks))
    ax.set_xlabel("decoder block")
    ax.set_ylabel("||pruned - dense|| / ||dense||")
    ax.set_title(title or "Relative output error of each block (same inputs for the dense and the pruned block)",
                 fontsize="medium")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", frameon=False)
    return _save(figure, Canvas, path)


def render_plots(report: Any, folder: str | os.PathLike, strict: bool = True) -> dict[str, str]:
    """Write the charts a report supports into `folder`, as `{kind: file name}` (names relative to `folder`):
    `"output_error"` (OUTPUT_ERROR_PLOT) when blocks recorded their relative output error, and `"sparsity"`
    (SPARSITY_PLOT) only when the pruned Linears got different sparsities (for a uniform target that chart would be
    a flat line).

    Raises `PlotUnavailable` without matplotlib. With `strict=False` a chart that fails to draw is logged and left
    out instead of raising; either way every name returned is a complete file (charts are written to a temporary
    name and moved in).
    """
    _matplotlib()
    folder = os.fspath(folder)
    data = load_report(report)
    heading = " ".join(str(data[k]) for k in ("method", "mask_structure") if data.get(k))
    charts = []
    errors = output_error_series(data)
    if errors is not None:
        title = f"{heading}: relative output error of each block" if heading else None
        charts.append(("output_error", OUTPUT_ERROR_PLOT, lambda path: draw_output_error(
            errors, path, method=data.get("method"), title=title)))
    series = sparsity_series(data)
    if allocation_differs(series):
        target = data.get("target_sparsity")
        title = f"{heading}: sparsity allocated to each block" if heading else None
        blocks = block_sparsity_series(data)
        charts.append(("sparsity", SPARSITY_PLOT, lambda path: draw_sparsity_per_block(
            blocks, path, target=float(target) if target is not None else None, title=title)))
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
