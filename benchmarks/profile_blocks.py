"""Where a pruning run's seconds go, block by block: forward passes counted and every second given to one phase.

    python -m benchmarks.profile_blocks --blocks 3 --methods wanda sparsegpt --induction
    python -m benchmarks.profile_blocks --blocks 3 --methods wanda sparsegpt --reference   # and the reference loop

SmolLM2-135M cut to its first `--blocks` decoder blocks (the last of them is not propagated, as in a full run), the
calibration windows of benchmarks/protocol.py. Functions of the block walker and of SI are wrapped, not changed: each
second between two events goes to the innermost phase open at the time (its own time, children excluded), and each
call of a decoder block counts its windows towards the phase that made it. A "pass" is one forward of the block
over every calibration window. Results go to benchmarks/results/<name>.json and <name>.md.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
import time
from collections import defaultdict
from typing import Any

import torch

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
TOP = "walker loop, other"  # time inside prune() that no narrower phase claims
DENSE_PASS = "dense pass (SI: statistics and dense outputs)"  # the walker's pass for a stage that needs dense outputs


class Profile:
    """Exclusive seconds and forward windows per (block, phase); fed by the wrappers that `instrument` installs."""

    def __init__(self) -> None:
        self.block: str = "setup"
        self.stack: list[str] = []
        self.last = time.perf_counter()
        self.seconds: dict[tuple[str, str], float] = defaultdict(float)
        self.windows: dict[tuple[str, str], int] = defaultdict(int)
        self.partial: dict[tuple[str, str], int] = defaultdict(int)
        self.calls: dict[tuple[str, str], int] = defaultdict(int)

    def _flush(self) -> None:
        now = time.perf_counter()
        self.seconds[(self.block, self.stack[-1] if self.stack else "outside any phase")] += now - self.last
        self.last = now

    @contextlib.contextmanager
    def phase(self, name: str):
        self._flush()
        self.stack.append(name)
        self.calls[(self.block, name)] += 1
        try:
            yield
        finally:
            self._flush()
            self.stack.pop()

    def set_block(self, index: int) -> None:
        self._flush()
        self.block = str(index)

    def parent(self) -> str:
        return self.stack[-1] if self.stack else "outside any phase"


def _wrap(owner: Any, attr: str, profile: Profile, name, restore: list) -> None:
    """Replace `owner.attr` with a wrapper that runs it inside phase `name` (a string, or a function of the call's
    arguments giving one, or None: no phase of its own for this call)."""
    original = getattr(owner, attr)
    restore.append((owner, attr, original))

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        label = name(*args, **kwargs) if callable(name) else name
        if label is None:
            return original(*args, **kwargs)
        with profile.phase(label):
            return original(*args, **kwargs)

    setattr(owner, attr, wrapper)


def _unwrap(restore: list, blocks) -> None:
    for owner, attr, original in reversed(restore):
        setattr(owner, attr, original)
    for block in blocks:
        del block.forward


def _wrap_where_imported(function: Any, profile: Profile, name, restore: list) -> None:
    """Wrap `function` in every optimum_si module that holds it under its own name (`from ... import function`)."""
    for module in [m for n, m in sys.modules.items() if n.startswith("optimum_si") and m is not None]:
        if getattr(module, function.__name__, None) is function:
            _wrap(module, function.__name__, profile, name, restore)


@contextlib.contextmanager
def instrument(profile: Profile, blocks):
    from optimum_si import optim
    from optimum_si.induction import inducer, stage
    from optimum_si.modeling import capture
    from optimum_si.observers.output_error import OutputErrorProbe
    from optimum_si.observers.stats import InputStats
    from optimum_si.pipeline import walker
    from optimum_si.pipeline.sources.in_memory import InMemoryBlocks
    from optimum_si.pipeline.statistics import StatisticsPass

    restore: list = []
    _wrap_where_imported(capture.capture_block_inputs, profile, "capture block-0 inputs", restore)
    _wrap(StatisticsPass, "collect", profile,
          lambda *a, **k: "statistics + dense outputs pass" if k.get("keep_outputs") else "statistics pass", restore)
    _wrap(walker, "prune_group", profile, "prune / solve", restore)
    _wrap(walker.BlockWalker, "_dense_pass", profile, DENSE_PASS, restore)
    _wrap(stage.InductionStage, "before_prune", profile, "SI set-up (dense copies)", restore)
    _wrap(stage.InductionStage, "conclude", profile, "SI verdict", restore)
    # run_block straight from the walker loop is the propagation; inside the dense pass of the global SI target it
    # is the teacher pass.
    _wrap(walker, "run_block", profile, lambda *a, **k: {TOP: "propagate", DENSE_PASS: "teacher pass"}.get(
        profile.parent()), restore)
    _wrap(OutputErrorProbe, "__init__", profile, "error probe (dense outputs)", restore)
    _wrap(OutputErrorProbe, "measure", profile, "error probe (measure)", restore)
    _wrap(InputStats, "add", profile, "statistics accumulation (hooks)", restore)
    _wrap(stage, "fold_distribution_level", profile, "SI distribution fold", restore)
    _wrap(inducer.BlockInducer, "run", profile, "SI other (wrappers, histograms, fold)", restore)
    _wrap(inducer.BlockInducer, "_forward", profile,
          lambda *a, **k: "SI train forward" if (len(a) > 2 and a[2]) or k.get("grad") else "SI probe forward", restore)
    _wrap(inducer.BlockInducer, "_refresh", profile, "SI mask refresh", restore)
    _wrap(torch.Tensor, "backward", profile, "SI backward", restore)
    _wrap(optim.DampedAdam, "step", profile, "SI optimiser step", restore)
    _wrap(torch.optim.Adam, "step", profile, "SI optimiser step", restore)
    load = InMemoryBlocks.load
    restore.append((InMemoryBlocks, "load", load))

    def loading(self, index):
        profile.set_block(index)
        return load(self, index)

    InMemoryBlocks.load = loading
    for block in blocks:
        forward = block.forward

        def counted(*args, _forward=forward, **kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            key = (profile.block, profile.parent())
            profile.windows[key] += hidden.shape[0]
            try:
                with profile.phase(f"{key[1]} [block forward]"):
                    return _forward(*args, **kwargs)
            except capture.StopForward:
                profile.partial[key] += 1
                raise

        block.forward = counted
    try:
        yield
    finally:
        _unwrap(restore, blocks)


@contextlib.contextmanager
def instrument_reference(profile: Profile, blocks, windows_per_pass: int):
    """The reference loop (benchmarks/reference_loop.py) has no walker functions to wrap: a block's first
    `windows_per_pass` forwards are its statistics pass, the next ones its propagation."""
    from benchmarks import reference_loop

    restore: list = []
    _wrap(reference_loop._LayerStats, "add_batch", profile, "statistics accumulation (hooks)", restore)
    _wrap(reference_loop, "_prune_layer", profile, "prune / solve", restore)
    for index, block in enumerate(blocks):
        forward, calls = block.forward, [0]

        def counted(*args, _forward=forward, _index=index, _calls=calls, **kwargs):
            if _calls[0] == 0:
                profile.set_block(_index)
            phase = "statistics pass" if _calls[0] < windows_per_pass else "propagate"
            _calls[0] += 1
            profile.windows[(profile.block, phase)] += (args[0] if args else kwargs["hidden_states"]).shape[0]
            with profile.phase(f"{phase} [block forward]"):
                return _forward(*args, **kwargs)

        block.forward = counted
    try:
        yield
    finally:
        _unwrap(restore, blocks)


def run_one(method: str, mode: str, blocks: int) -> dict:
    """Profile `method` in `mode` ("reference": the reference loop, else a mode of benchmarks.speed: "plain", "si",
    "si-bf16") on the first `blocks` decoder blocks, in this process."""
    from benchmarks import protocol
    from benchmarks.speed import MODES, recipe
    from optimum_si import SIPruner

    protocol.setup_environment()
    model, tokenizer = protocol.load_model_and_tokenizer()
    calib = protocol.calibration_ids(tokenizer)
    layers = model.model.layers
    del layers[blocks:]
    model.config.num_hidden_layers = blocks
    profile = Profile()
    reference = mode == "reference"
    if reference:  # the reference loop propagates its last block too; the table only reads the blocks before it
        from benchmarks.reference_loop import reference_prune

        context = instrument_reference(profile, list(layers), protocol.CALIB_SAMPLES)
        prune = functools.partial(reference_prune, model, calib, method)
    else:
        pruner = SIPruner(recipe(method, mode), show_progress=False)
        context = instrument(profile, list(layers))
        prune = functools.partial(pruner.prune, model, dataset=calib)
    with context:
        started = time.perf_counter()
        profile.last = started
        with profile.phase(TOP):
            prune()
        total = time.perf_counter() - started
    rows = []
    for (block, phase), seconds in profile.seconds.items():
        key = (block, phase.removesuffix(" [block forward]"))
        forward = phase.endswith(" [block forward]")
        rows.append({"block": block, "phase": phase, "seconds": seconds,
                     "windows": profile.windows.get(key, 0) if forward else 0,
                     "partial_windows": profile.partial.get(key, 0) if forward else 0,
                     "calls": profile.calls.get((block, phase), 0)})
    induction, precision = MODES.get(mode, (False, "float32"))
    record = {"method": method, "induction": induction, "induction_precision": precision, "reference": reference,
              "blocks": blocks, "total_s": total,
              "windows_per_pass": protocol.CALIB_SAMPLES, "rows": rows, "peak_rss_mb": protocol.peak_rss_mb(),
              **protocol.machine()}
    if not reference:
        record["engine_block_seconds"] = [b.seconds for b in pruner.report.blocks]
        record["induction_steps"] = [b.induction.steps if b.induction is not None else None
                                     for b in pruner.report.blocks]
    return record


def markdown(records: list[dict]) -> str:
    out = []
    for r in records:
        name = ("SI + " if r["induction"] else "") + r["method"] + (" (reference loop)" if r.get("reference") else "")
        if r["induction"] and r.get("induction_precision") == "bfloat16":
            name += " (bf16 training)"
        propagated = [str(i) for i in range(r["blocks"] - 1)]  # the last block is not propagated
        per_block: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for row in r["rows"]:
            if row["block"] in propagated:
                per_block[row["phase"]]["seconds"] += row["seconds"] / len(propagated)
                per_block[row["phase"]]["passes"] += row["windows"] / r["windows_per_pass"] / len(propagated)
                per_block[row["phase"]]["partial"] += row["partial_windows"] / r["windows_per_pass"] / len(propagated)
        total = sum(v["seconds"] for v in per_block.values())
        passes = sum(v["passes"] for v in per_block.values())
        out.append(f"**{name}** (mean of blocks {', '.join(propagated)}; {total:.2f} s and {passes:.2f} passes per "
                   f"block; run total {r['total_s']:.1f} s for {r['blocks']} blocks, peak RSS {r['peak_rss_mb']:.0f} MB)")
        out.append("")
        out.append("| phase | s / block | share | block passes (of which stopped early) |")
        out.append("|---|---:|---:|---:|")
        for phase, v in sorted(per_block.items(), key=lambda kv: -kv[1]["seconds"]):
            if v["seconds"] < 0.005 and not v["passes"]:
                continue
            count = f"{v['passes']:.3f}" + (f" ({v['partial']:.3f})" if v["partial"] else "") if v["passes"] else ""
            out.append(f"| {phase} | {v['seconds']:.2f} | {v['seconds'] / total:.0%} | {count} |")
        setup = sum(row["seconds"] for row in r["rows"] if row["block"] == "setup")
        out.append(f"Before block 0 (capture of its inputs, set-up): {setup:.2f} s.")
        out.append("")
    first = records[0] if records else {}
    out.append(f"SmolLM2-135M-Instruct fp32 cut to {first.get('blocks')} blocks, 32 x 512 calibration tokens, torch "
               f"{first.get('torch')}, {first.get('threads')} thread(s); one process per method.")
    return "\n".join(out) + "\n"


def main() -> None:
    import subprocess

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["wanda", "sparsegpt"])
    parser.add_argument("--induction", action="store_true",
                        help="also profile SI + method, with float32 and with bfloat16 training")
    parser.add_argument("--reference", action="store_true",
                        help="also profile benchmarks/reference_loop.py on the same blocks")
    parser.add_argument("--blocks", type=int, default=3)
    parser.add_argument("--name", default="profile_blocks")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], args.one[1], int(args.one[2]))))
        return
    os.makedirs(RESULTS_DIR, exist_ok=True)
    records = []
    for method in args.methods:
        for mode in (["reference"] if args.reference else []) + ["plain"] + (["si", "si-bf16"] if args.induction else []):
            out = subprocess.run([sys.executable, "-m", "benchmarks.profile_blocks", "--one", method, mode,
                                  str(args.blocks)], check=True, capture_output=True, text=True)
            records.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"{method:10s} {mode:5s} {records[-1]['total_s']:7.1f}s", flush=True)
            with open(os.path.join(RESULTS_DIR, f"{args.name}.json"), "w", encoding="utf-8") as handle:
                json.dump(records, handle, indent=2)
            with open(os.path.join(RESULTS_DIR, f"{args.name}.md"), "w", encoding="utf-8") as handle:
                handle.write(markdown(records))


if __name__ == "__main__":
    main()
