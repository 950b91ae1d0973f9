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


# --one MODE -> (induction, induction_precision)
MODES = {"plain": (False, "float32"), "si": (True, "float32"), "si-bf16": (True, "bfloat16")}


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

        SIPruner(method=method, induction=induction, induction_precision=precision, num_samples=protocol.CALIB_SAMPLES, seqlen=protocol.CALIB_SEQLEN,
                 show_progress=False).prune(model, dataset=calib)
    seconds = time.perf_counter() - started
    return {"impl": impl, "method": method, "induction": induction, "induction_precision": precision, "prune_s": seconds,
            "peak_rss_mb": protocol.peak_rss_mb(), "rss_after_load_mb": rss_before, **protocol.machine()}


def markdown(records: list[dict]) -> str:
    lines = ["| method | implementation | prune s | peak RSS MB |", "|---|---|---:|---:|"]
    for r in records:
        name = r["impl"] + (" + SI" if r["induction"] else "")
        if r["induction"] and r.get("induction_precision") == "bfloat16":
            name += " (bf16 training)"
        lines.append(f"| {r['method']} 50% | {name} | {r['prune_s']:.1f} | {r['peak_rss_mb']:.0f} |")
    lines.append("")
    for method in sorted({r["method"] for r in records}):
        ref = [r["prune_s"] for r in records if r["method"] == method and r["impl"] == "reference"]
        ours = [r["prune_s"] for r in records if r["method"] == method and r["impl"] == "optimum-si" and not r["induction"]]
        if ref and ours:
            lines.append(f"- {method}: optimum-si is {sum(ref) / len(ref) / (sum(ours) / len(ours)):.2f}x faster than the "
                         f"reference-structured loop (mean of {len(ours)} run(s) each, alternating).")
        for precision, label in (("float32", ""), ("bfloat16", " with bf16 training")):
            si = [r["prune_s"] for r in records if r["method"] == method and r["induction"]
                  and r.get("induction_precision", "float32") == precision]
            if si and ours:
                lines.append(f"- {method}: SI{label} + {method} takes {sum(si) / len(si) / (sum(ours) / len(ours)):.2f}x "
                             f"the time of plain {method} (mean of {len(si)} run(s)).")
    first = records[0] if records else {}
    lines.append("")
    lines.append(f"SmolLM2-135M-Instruct fp32, 32 x 512 calibration tokens, torch {first.get('torch')}, "
                 f"{first.get('threads')} threads, {first.get('cores')} cores; one process per row.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["wanda", "sparsegpt"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--induction", action="store_true",
                        help="also time SI + method, with float32 and with bfloat16 training (induction_precision)")
    parser.add_argument("--name", default="speed")
    parser.add_argument("--update", action="store_true",
                        help="keep the other methods' rows of an existing results file (this run's methods are replaced)")
    parser.add_argument("--one", nargs=3, metavar=("IMPL", "METHOD", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
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
