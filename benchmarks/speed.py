"""Pruning time and peak memory of optimum-si against a reference-structured loop, measured in one run.

    python -m benchmarks.speed                      # Wanda and SparseGPT at 50 %, alternating implementations
    python -m benchmarks.speed --methods wanda --repeats 2
    python -m benchmarks.speed --induction --repeats 2   # also SI + method, with float32 and bfloat16 training

Rows run interleaved (reference, optimum-si, SI, SI with bf16 training, then again for each repeat), so a change
in the shared machine's speed during the run hits every implementation alike; the ratios are of the means.

Each run is its own process (SmolLM2-135M, the calibration windows of benchmarks/protocol.py); the time is the
pruning call only (model load excluded), peak RSS is the process maximum. Results go to
benchmarks/results/speed.json and speed.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


# --one MODE -> (induction, the precision of SI's training)
MODES = {"plain": (False, "float32"), "si": (True, "float32"), "si-bf16": (True, "bfloat16")}


def recipe(method: str, mode: str):
    """The SIConfig of `method` at 50 % in `mode`, on the protocol's calibration windows."""
    from benchmarks import protocol
    from optimum_si import InductionConfig, SIConfig

    induction, precision = MODES[mode]
    return SIConfig(method=method, induction=InductionConfig(precision=precision) if induction else False,
                    num_samples=protocol.CALIB_SAMPLES, seqlen=protocol.CALIB_SEQLEN, seed=protocol.SEED)


def run_one(impl: str, method: str, mode: str) -> dict:
    induction, precision = MODES[mode]
    from benchmarks import protocol

    protocol.setup_environment()
    model, tokenizer = protocol.load_model_and_tokenizer()
    calib = protocol.calibration_ids(tokenizer)
    rss_before = protocol.peak_rss_mb()
    started = time.perf_counter()
    if impl == "reference":
        from benchmarks.reference_loop import reference_prune

        reference_prune(model, calib, method)
    else:
        from optimum_si import SIPruner

        SIPruner(recipe(method, mode), show_progress=False).prune(model, dataset=calib)
    seconds = time.perf_counter() - started
    return {"impl": impl, "method": method, "induction": induction, "induction_precision": precision, "prune_s": seconds,
            "peak_rss_mb": protocol.peak_rss_mb(), "rss_after_load_mb": rss_before, **protocol.machine()}


def _label(record: dict) -> str:
    name = record["impl"] + (" + SI" if record["induction"] else "")
    if record["induction"] and record.get("induction_precision") == "bfloat16":
        name += " (bf16 training)"
    return name


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def markdown(records: list[dict]) -> str:
    """One row per method and implementation: mean prune seconds (range) and mean peak RSS over its runs, and the
    ratios against the reference loop and plain pruning (means of the interleaved runs)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["method"], _label(r)), []).append(r)
    lines = ["| method | implementation | runs | prune s (mean) | range | peak RSS MB (mean) |",
             "|---|---|---:|---:|---|---:|"]
    for (method, label), rows in groups.items():
        seconds = [r["prune_s"] for r in rows]
        lines.append(f"| {method} 50% | {label} | {len(rows)} | {_mean(seconds):.1f} | {min(seconds):.1f}-{max(seconds):.1f} "
                     f"| {_mean([r['peak_rss_mb'] for r in rows]):.0f} |")
    lines.append("")
    for method in sorted({r["method"] for r in records}):
        def mean_of(label: str, key: str = "prune_s") -> float | None:
            rows = groups.get((method, label))
            return _mean([r[key] for r in rows]) if rows else None

        ref, ours = mean_of("reference"), mean_of("optimum-si")
        if ref and ours:
            lines.append(f"- {method}: optimum-si is {ref / ours:.2f}x faster than the reference-structured loop.")
        for label in ("optimum-si + SI", "optimum-si + SI (bf16 training)"):
            si = mean_of(label)
            if si and ours:
                lines.append(f"- {method}: {label.removeprefix('optimum-si + ')} + {method} takes {si / ours:.2f}x the "
                             f"time of plain {method}.")
        ref_rss = mean_of("reference", "peak_rss_mb")
        if ref_rss:
            ratios = [f"{label.removeprefix('optimum-si').removeprefix(' + ') or 'plain'} {rss / ref_rss:.2f}x"
                      for label in ("optimum-si", "optimum-si + SI", "optimum-si + SI (bf16 training)")
                      if (rss := mean_of(label, "peak_rss_mb"))]
            lines.append(f"- {method}: peak RSS against the reference loop: {', '.join(ratios)}.")
    first = records[0] if records else {}
    lines.append("")
    lines.append(f"SmolLM2-135M-Instruct fp32, 32 x 512 calibration tokens, torch {first.get('torch')}, "
                 f"{first.get('threads')} threads, {first.get('cores')} cores; one process per run, the implementations "
                 "interleaved in every repeat; ratios of the means.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["wanda", "sparsegpt"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--induction", action="store_true",
                        help="also time SI + method, with float32 and with bfloat16 training (InductionConfig.precision)")
    parser.add_argument("--name", default="speed")
    parser.add_argument("--update", action="store_true",
                        help="keep the other methods' rows of an existing results file (this run's methods are replaced)")
    parser.add_argument("--render", action="store_true", help="only rewrite <name>.md from <name>.json")
    parser.add_argument("--one", nargs=3, metavar=("IMPL", "METHOD", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.render:
        with open(os.path.join(RESULTS_DIR, f"{args.name}.json"), encoding="utf-8") as handle:
            records = json.load(handle)
        with open(os.path.join(RESULTS_DIR, f"{args.name}.md"), "w", encoding="utf-8") as handle:
            handle.write(markdown(records))
        return
    if args.one:
        print(json.dumps(run_one(*args.one)))
        return
    records = []
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"{args.name}.json")
    if args.update and os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            records = [r for r in json.load(handle) if r["method"] not in args.methods]
    for method in args.methods:
        modes = ["plain", "si", "si-bf16"] if args.induction else ["plain"]
        jobs = [("reference", "plain")] + [("optimum-si", mode) for mode in modes]
        jobs *= args.repeats
        for impl, mode in jobs:
            out = subprocess.run([sys.executable, "-m", "benchmarks.speed", "--one", impl, method, mode],
                                 check=True, capture_output=True, text=True)
            record = json.loads(out.stdout.strip().splitlines()[-1])
            records.append(record)
            print(f"{method:10s} {impl:11s} {mode:5s} {record['prune_s']:7.1f}s rss={record['peak_rss_mb']:.0f}MB", flush=True)
            with open(path, "w", encoding="utf-8") as handle:
                json.dump(records, handle, indent=2)
            with open(os.path.join(RESULTS_DIR, f"{args.name}.md"), "w", encoding="utf-8") as handle:
                handle.write(markdown(records))


if __name__ == "__main__":
    main()
