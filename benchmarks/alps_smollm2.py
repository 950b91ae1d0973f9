"""ALPS against SparseGPT on SmolLM2-135M, on the project's protocol (benchmarks/protocol.py), with issue 12's targets.

    python -m benchmarks.alps_smollm2                                  # ALPS and SparseGPT at 50 % and 70 %
    python -m benchmarks.alps_smollm2 --patterns 50% 60% 70% 80% 2:4 --induction both
    python -m benchmarks.alps_smollm2 --dry-run                        # the jobs and their commands, nothing run

Each configuration runs in its own process (clean peak RSS and timings) and writes one record; the table is
written to benchmarks/results/<name>.json and <name>.md after every row, so an interrupted run keeps what it
finished, and `--update` reruns only the rows asked for. The targets checked (issue 12): ALPS at 50 % no worse than
SparseGPT at 50 %; ALPS at 70 % at most 0.85 x SparseGPT at 70 %; SI + ALPS at 70 % no worse than ALPS at 70 %.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# pattern label -> (SIConfig sparsity, mask_structure)
PATTERNS: dict[str, tuple[float | None, str]] = {
    "50%": (0.5, "unstructured"), "60%": (0.6, "unstructured"), "70%": (0.7, "unstructured"),
    "80%": (0.8, "unstructured"), "2:4": (None, "2:4"), "4:8": (None, "4:8"),
}
METHODS = ("alps", "sparsegpt")
# (description, numerator row, denominator row, largest allowed ratio); a row is (method, pattern, induction).
TARGETS = (
    ("ALPS 50 % <= SparseGPT 50 %", ("alps", "50%", False), ("sparsegpt", "50%", False), 1.0),
    ("ALPS 70 % <= 0.85 x SparseGPT 70 %", ("alps", "70%", False), ("sparsegpt", "70%", False), 0.85),
    ("SI + ALPS 70 % <= ALPS 70 %", ("alps", "70%", True), ("alps", "70%", False), 1.0),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--patterns", nargs="+", default=["50%", "70%"], choices=list(PATTERNS))
    parser.add_argument("--induction", choices=["no", "yes", "both"], default="no")
    parser.add_argument("--name", default="alps_smollm2", help="results file stem under benchmarks/results/")
    parser.add_argument("--eval-windows", type=int, default=None,
                        help="fewer evaluation windows (quick probes only; the protocol scores 40)")
    parser.add_argument("--update", action="store_true", help="keep the other rows of an existing results file")
    parser.add_argument("--dry-run", action="store_true", help="print the jobs and their commands, run nothing")
    parser.add_argument("--one", nargs=3, metavar=("METHOD", "PATTERN", "INDUCTION"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.eval_windows is not None and args.eval_windows < 1:
        parser.error(f"--eval-windows must be >= 1, got {args.eval_windows}")
    if args.one is not None:
        method, pattern, induction = args.one
        if method not in METHODS or pattern not in PATTERNS or induction not in ("0", "1"):
            parser.error(f"--one takes METHOD in {METHODS}, PATTERN in {tuple(PATTERNS)} and INDUCTION 0 or 1")
    return args


def jobs(args: argparse.Namespace) -> list[tuple[str, str, bool]]:
    """(method, pattern, induction) rows in run order: for each pattern, every method, plain before SI."""
    inductions = {"no": [False], "yes": [True], "both": [False, True]}[args.induction]
    return [(method, pattern, induction) for pattern in args.patterns for method in args.methods
            for induction in inductions]


def command(method: str, pattern: str, induction: bool, eval_windows: int | None) -> list[str]:
    cmd = [sys.executable, "-m", "benchmarks.alps_smollm2", "--one", method, pattern, str(int(induction))]
    return cmd + (["--eval-windows", str(eval_windows)] if eval_windows else [])


def run_one(method: str, pattern: str, induction: bool, eval_windows: int | None = None) -> dict:
    """Prune and evaluate one configuration in this process (the protocol's model, windows and seed)."""
    from benchmarks import assets, protocol
    from optimum_si import SIConfig, SIPruner
    from optimum_si.evaluation import perplexity

    protocol.setup_environment()
    started = time.perf_counter()
    model, tokenizer = protocol.load_model_and_tokenizer()
    calib, evaluation = protocol.calibration_ids(tokenizer), protocol.eval_ids(tokenizer)
    sparsity, structure = PATTERNS[pattern]
    config = SIConfig(method=method, sparsity=sparsity, mask_structure=structure, induction=induction,
                      num_samples=protocol.CALIB_SAMPLES, seqlen=protocol.CALIB_SEQLEN, seed=protocol.SEED,
                      show_progress=False)
    pruner = SIPruner(config)
    pruner.prune(model, tokenizer=tokenizer, dataset=calib)
    windows = eval_windows or protocol.EVAL_WINDOWS
    t0 = time.perf_counter()
    ppl = perplexity(model, evaluation, seqlen=protocol.EVAL_SEQLEN, max_windows=windows)
    record = {
        "method": method, "pattern": pattern, "induction": induction, "ppl": ppl,
        "sparsity": pruner.report.sparsity, "prune_s": pruner.report.total_seconds,
        "eval_s": time.perf_counter() - t0, "wall_s": time.perf_counter() - started,
        "peak_rss_mb": protocol.peak_rss_mb(), "calibration": "pydocs-4M", "samples": protocol.CALIB_SAMPLES,
        "seqlen": protocol.CALIB_SEQLEN, "seed": protocol.SEED, "eval": f"jargon first {windows} x {protocol.EVAL_SEQLEN}",
        "corpora_match_reference": assets.corpora_match_reference(),
        "config": {k: v for k, v in config.to_dict().items() if k != "meta"}, **protocol.machine(),
    }
    if induction:
        record["induction_kept_blocks"] = sum(1 for b in pruner.report.blocks if b.induction and b.induction.get("kept"))
    return record


def targets(records: list[dict]) -> list[dict]:
    """Issue 12's ALPS targets on the rows present: ratio, limit and verdict (None when a row is missing)."""
    by_key = {(r["method"], r["pattern"], r["induction"]): r for r in records}
    out = []
    for text, top, bottom, limit in TARGETS:
        if top in by_key and bottom in by_key:
            ratio = by_key[top]["ppl"] / by_key[bottom]["ppl"]
            out.append({"target": text, "ratio": ratio, "limit": limit, "met": ratio <= limit})
        else:
            out.append({"target": text, "ratio": None, "limit": limit, "met": None})
    return out


def markdown(records: list[dict]) -> str:
    lines = ["| method | pattern | SI | PPL | sparsity | prune s | eval s | peak RSS MB |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in records:
        lines.append(f"| {r['method']} | {r['pattern']} | {'yes' if r['induction'] else 'no'} | {r['ppl']:.2f} | "
                     f"{r['sparsity']:.4f} | {r['prune_s']:.1f} | {r['eval_s']:.1f} | {r['peak_rss_mb']:.0f} |")
    lines += ["", "| issue 12 target | ratio | limit | met |", "|---|---:|---:|---|"]
    for t in targets(records):
        ratio = "–" if t["ratio"] is None else f"{t['ratio']:.3f}"
        met = {True: "yes", False: "**no**", None: "not run"}[t["met"]]
        lines.append(f"| {t['target']} | {ratio} | {t['limit']:.2f} | {met} |")
    first = records[0] if records else {}
    lines += ["", f"SmolLM2-135M-Instruct (fp32), calibration {first.get('samples')} x {first.get('seqlen')} "
                  f"Python-docs tokens (seed {first.get('seed')}), evaluation {first.get('eval')} Jargon tokens; "
                  f"torch {first.get('torch')}, {first.get('threads')} threads, one process per row. ALPS with the "
                  "authors' defaults (docs/methods.md). Made by `python -m benchmarks.alps_smollm2`."]
    return "\n".join(lines) + "\n"


def write(records: list[dict], name: str) -> None:
    os.makedirs(RESULTS_DIR, exist_ok=True)
    with open(os.path.join(RESULTS_DIR, f"{name}.json"), "w", encoding="utf-8") as handle:
        json.dump({"records": records, "targets": targets(records)}, handle, indent=2)
    with open(os.path.join(RESULTS_DIR, f"{name}.md"), "w", encoding="utf-8") as handle:
        handle.write(markdown(records))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.one:
        method, pattern, induction = args.one
        print(json.dumps(run_one(method, pattern, induction == "1", args.eval_windows)))
        return
    planned = jobs(args)
    if args.dry_run:
        for job in planned:
            print(" ".join(command(*job, args.eval_windows)))
        return
    records: list[dict] = []
    path = os.path.join(RESULTS_DIR, f"{args.name}.json")
    if args.update and os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            records = json.load(handle)["records"]
    for method, pattern, induction in planned:
        out = subprocess.run(command(method, pattern, induction, args.eval_windows), check=True, capture_output=True,
                             text=True)
        record = json.loads(out.stdout.strip().splitlines()[-1])
        key = (method, pattern, induction)
        records = [r for r in records if (r["method"], r["pattern"], r["induction"]) != key] + [record]
        print(f"{method:9s} {pattern:4s} SI={induction!s:5s} ppl={record['ppl']:9.3f} prune={record['prune_s']:7.1f}s "
              f"rss={record['peak_rss_mb']:.0f}MB", flush=True)
        write(records, args.name)


if __name__ == "__main__":
    main()
