"""Section `llama8b`: a checkpoint with Llama-3-8B's exact shapes (random bf16 weights, a few blocks) streamed
through the GPU with Wanda, SparseGPT and SI + Wanda: seconds and peak device memory of every block, against the
memory model of docs/memory.md, and the whole 8B (32 blocks) and 70B (80 blocks) runs projected from them
(`projection.py`).

The checkpoint is written to the machine's disk by `benchmarks.streaming_memory.build_checkpoint` (weights drawn on
the GPU, one tensor in memory at a time) and reused by a rerun in the same work folder. Calibration: random token
ids, 128 windows of 2048 by default (the Wanda and SparseGPT papers' set, which the memory model's projections
assume). Each block's device peak is taken from its load to its release (the block source's own calls, wrapped),
so the capture of the first block's inputs is a phase of its own.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

from benchmarks.gpu_check import projection
from benchmarks.gpu_check.child import ChildContext, SectionSkipped
from benchmarks.gpu_check.measure import MB, DevicePeak, peak_rss_mb, synchronize

# (run, base method, SI), in the order they run.
RUNS = [("wanda", "wanda", False), ("sparsegpt", "sparsegpt", False), ("si-wanda", "wanda", True)]
GPU_DEFAULTS = {"shape": "llama3-8b", "blocks": 2, "samples": 128, "seqlen": 2048}
CPU_DEFAULTS = {"shape": "tiny-gqa", "blocks": 2, "samples": 4, "seqlen": 32}
# A run that would start with less than this left is recorded as not run.
MIN_RUN_S = {"gpu": 20.0, "cpu": 2.0}


@contextlib.contextmanager
def block_peaks(device: str):
    """Yields a list that gets, for every block the streaming source loads, its index and its device peak from
    load to release; phase 0 ("before the first block": set-up and capture) is measured too."""
    from optimum_si.pipeline.sources.streamed import StreamingSource

    load, release = StreamingSource.load, StreamingSource.release
    phases: list[dict[str, Any]] = []
    peak = DevicePeak(device)
    peak.start()
    first = {"pending": True}

    def measured_load(self, index):
        if first.pop("pending", False):
            phases.append({"phase": "set-up and capture", **peak.read()})
        peak.start()
        return load(self, index)

    def measured_release(self, index, block):
        result = release(self, index, block)
        phases.append({"phase": "block", "index": index, **peak.read()})
        return result

    StreamingSource.load, StreamingSource.release = measured_load, measured_release  # type: ignore[method-assign]
    try:
        yield phases
    finally:
        StreamingSource.load, StreamingSource.release = load, release  # type: ignore[method-assign]


def _settings(ctx: ChildContext) -> dict[str, Any]:
    defaults = CPU_DEFAULTS if ctx.cpu else GPU_DEFAULTS
    return {k: ctx.options.get(k) or v for k, v in defaults.items()}


def _memory_model(run: str, shape: projection.BlockShape, seqlen: int, measured_mb: float | None) -> dict:
    model = projection.block_peak_bytes(run, shape, seqlen) + projection.device_activation_bytes(shape, seqlen)
    return {"formula": projection.MEMORY_FORMULAS[run] + " + 2 B L h b", "predicted_mb": model / MB,
            "measured_mb": measured_mb, "measured_over_predicted": measured_mb / (model / MB) if measured_mb else None}


def _projections(run: str, blocks: list[dict], outside_s: float, shape: projection.BlockShape, seqlen: int,
                 ratio: float | None) -> dict:
    solves = run == "sparsegpt"
    result = {}
    for name, target in (("llama3-8b", projection.LLAMA3_8B), ("llama3-70b", projection.LLAMA3_70B)):
        entry = projection.project_run(blocks, outside_s, shape, target, seqlen, solves)
        model = (projection.block_peak_bytes(run, target, seqlen) +
                 projection.device_activation_bytes(target, seqlen)) / MB
        # The memory model's figure for the target, and the same corrected by how far the measured shape was off.
        entry.update(peak_device_mb_model=model, peak_device_mb_corrected=model * ratio if ratio else None)
        result[name] = entry
    return result


def _prune(ctx: ChildContext, folder: Path, run: str, method: str, induction: bool, settings: dict) -> dict:
    import torch

    from benchmarks.streaming_memory import remove_output
    from optimum_si import SIConfig, SIPruner
    from optimum_si.checkpoint.progress import is_complete

    config = json.loads((folder / "config.json").read_text())
    ids = torch.randint(0, config["vocab_size"], (settings["samples"], settings["seqlen"]),
                        generator=torch.Generator().manual_seed(0))
    save_dir = Path(ctx.work) / f"llama8b-out-{run}"
    remove_output(save_dir)
    if not ctx.cpu:
        torch.cuda.empty_cache()  # each run's reserved peak from its own allocations, not the last run's cache
    pruner = SIPruner(SIConfig(method=method, sparsity=0.5, induction=induction, num_samples=settings["samples"],
                               seqlen=settings["seqlen"]), device=ctx.device, show_progress=False)
    try:
        with block_peaks(ctx.device) as phases:
            started = time.perf_counter()
            pruner.prune(str(folder), save_dir=str(save_dir), dataset=ids)
            synchronize(ctx.device)
            wall = time.perf_counter() - started
        complete = is_complete(str(save_dir))
    finally:
        remove_output(save_dir)  # a few GB per run on the machine's disk
    report = pruner.report
    memory = {p["index"]: p for p in phases if p["phase"] == "block"}
    blocks = []
    for b in report.blocks:
        entry = {"index": b.index, "seconds": b.seconds, "stats_s": b.stats_seconds, "prune_s": b.prune_seconds,
                 "propagate_s": b.propagate_seconds,
                 "induction_s": (b.induction.seconds if b.induction is not None else None)}
        entry.update({k: v for k, v in memory.get(b.index, {}).items() if k not in ("phase", "index")})
        blocks.append(entry)
    return {"wall_s": wall, "capture_s": report.capture_seconds, "library_total_s": report.total_seconds,
            "outside_blocks_s": wall - sum(b["seconds"] for b in blocks), "blocks": blocks,
            "capture_phase": next((p for p in phases if p["phase"] != "block"), None), "sparsity": report.sparsity,
            "output_complete": complete, "peak_rss_mb_so_far": peak_rss_mb()}


def run(ctx: ChildContext) -> None:
    import torch

    from benchmarks import streaming_memory

    if not ctx.cpu and not torch.cuda.is_available():
        raise SectionSkipped("no CUDA device", ["a CUDA device"])
    settings = _settings(ctx)
    started = time.perf_counter()
    folder = streaming_memory.build_checkpoint(settings["shape"], int(settings["blocks"]), ctx.work, log=ctx.note,
                                               device=ctx.device)
    config = json.loads((folder / "config.json").read_text())
    shape = projection.shape_of(config)
    ctx.emit({"kind": "checkpoint", "shape_name": settings["shape"], "shape": shape.as_dict(), "path": str(folder),
              "bytes": streaming_memory.checkpoint_bytes(folder), "build_s": time.perf_counter() - started,
              **{k: settings[k] for k in ("samples", "seqlen")}},
             f"{settings['shape']} checkpoint, {settings['blocks']} blocks "
             f"({streaming_memory.checkpoint_bytes(folder) / 1e9:.2f} GB) ready in {time.perf_counter() - started:.0f} s")
    for run_name, method, induction in RUNS:
        record: dict[str, Any] = {"kind": "streamed", "run": run_name, "method": method, "induction": induction,
                                  "samples": settings["samples"], "seqlen": settings["seqlen"]}
        if ctx.seconds_left() < MIN_RUN_S[ctx.mode]:
            ctx.emit({**record, "error": "not run: the section's budget was spent"}, f"{run_name}: not run (budget)")
            continue
        try:
            record.update(_prune(ctx, folder, run_name, method, induction, settings))
        except Exception as err:  # noqa: BLE001 - one run's failure is that run's result
            ctx.emit({**record, "error": f"{type(err).__name__}: {err}"}, f"{run_name}: FAILED {err}")
            if not ctx.cpu:
                torch.cuda.empty_cache()
            continue
        peaks = [b.get("peak_device_mb") for b in record["blocks"] if b.get("peak_device_mb") is not None]
        measured = max(peaks) if peaks else None
        record["memory_model"] = _memory_model(run_name, shape, settings["seqlen"], measured)
        record["projection"] = _projections(run_name, record["blocks"], record["outside_blocks_s"], shape,
                                            settings["seqlen"], record["memory_model"]["measured_over_predicted"])
        per_block = [b["seconds"] for b in record["blocks"]]
        ctx.emit(record, f"{run_name}: {', '.join(f'{s:.1f}' for s in per_block)} s per block, peak "
                         + (f"{measured / 1024:.2f} GB (model {record['memory_model']['predicted_mb'] / 1024:.2f})"
                            if measured is not None else "n/a on CPU")
                         + f"; 8B projected {record['projection']['llama3-8b']['total_s'] / 60:.1f} min, 70B "
                         f"{record['projection']['llama3-70b']['total_s'] / 60:.1f} min")
