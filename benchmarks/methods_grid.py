"""Every base method x {50, 60, 70, 80 %, 2:4, 4:8}, with and without SI, on SmolLM2-135M (issue 12's table).

    python -m benchmarks.methods_grid                         # the whole grid (see the README for how long it took)
    python -m benchmarks.methods_grid --methods alps sparsegpt --patterns 50% 70% --induction no
    python -m benchmarks.methods_grid --dry-run               # the jobs and their commands, nothing run

Protocol: benchmarks/protocol.py (32 x 512 Python-docs calibration tokens, seed 0), scored on the first
`--eval-windows` x 512 Jargon File tokens (20 by default, the same windows for every row). "owl-wanda" is Wanda with
the OWL per-block allocation (`sparsity_profile="owl"`); OWL has no N:M form (docs/methods.md), so its N:M cells are
not run. Each configuration runs in its own process (clean peak RSS and timings) and writes one record; the tables
are written to benchmarks/results/<name>.json and <name>.md after every row, so an interrupted run keeps what it
finished, and `--update` reruns only the rows asked for. Jobs run in `priority` order: the rows issue 12's targets
compare come first.
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
# grid label -> SIConfig fields that select it
METHODS: dict[str, dict[str, str]] = {
    "magnitude": {"method": "magnitude"}, "wanda": {"method": "wanda"}, "sparsegpt": {"method": "sparsegpt"},
    "ria": {"method": "ria"}, "zpruner": {"method": "zpruner"}, "alps": {"method": "alps"},
    "owl-wanda": {"method": "wanda", "sparsity_profile": "owl"},
}
NO_NM = {"owl-wanda"}  # methods without an N:M form
# (description, numerator row, denominator row, largest allowed ratio); a row is (method, pattern, induction).
TARGETS = (
    ("RIA 50 % <= 1.10 x Wanda 50 %", ("ria", "50%", False), ("wanda", "50%", False), 1.10),
    ("RIA 2:4 <= 1.10 x Wanda 2:4", ("ria", "2:4", False), ("wanda", "2:4", False), 1.10),
    ("Z-Pruner 50 % <= 1.10 x Wanda 50 %", ("zpruner", "50%", False), ("wanda", "50%", False), 1.10),
    ("Z-Pruner 2:4 <= 1.10 x Wanda 2:4", ("zpruner", "2:4", False), ("wanda", "2:4", False), 1.10),
    ("ALPS 50 % <= SparseGPT 50 %", ("alps", "50%", False), ("sparsegpt", "50%", False), 1.0),
    ("ALPS 70 % <= 0.85 x SparseGPT 70 %", ("alps", "70%", False), ("sparsegpt", "70%", False), 0.85),
    ("OWL + Wanda 70 % <= 0.90 x Wanda 70 %", ("owl-wanda", "70%", False), ("wanda", "70%", False), 0.90),
    ("SI + ALPS 70 % <= ALPS 70 %", ("alps", "70%", True), ("alps", "70%", False), 1.0),
    ("SI + OWL + Wanda 70 % <= OWL + Wanda 70 %", ("owl-wanda", "70%", True), ("owl-wanda", "70%", False), 1.0),
)
DEFAULT_EVAL_WINDOWS = 20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--patterns", nargs="+", default=list(PATTERNS), choices=list(PATTERNS))
    parser.add_argument("--induction", choices=["no", "yes", "both"], default="both")
    parser.add_argument("--name", default="methods_grid", help="results file stem under benchmarks/results/")
    parser.add_argument("--eval-windows", type=int, default=DEFAULT_EVAL_WINDOWS,
                        help=f"evaluation windows of 512 tokens (default {DEFAULT_EVAL_WINDOWS}, the same for every row)")
    parser.add_argument("--update", action="store_true", help="keep the other rows of an existing results file")
    parser.add_argument("--skip-done", action="store_true", help="with --update: run only rows not in the file yet")
    parser.add_argument("--dry-run", action="store_true", help="print the jobs and their commands, run nothing")
    parser.add_argument("--one", nargs=3, metavar=("METHOD", "PATTERN", "INDUCTION"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.eval_windows < 1:
        parser.error(f"--eval-windows must be >= 1, got {args.eval_windows}")
    if args.one is not None:
        method, pattern, induction = args.one
        if method not in METHODS or pattern not in PATTERNS or induction not in ("0", "1"):
            parser.error(f"--one takes METHOD in {tuple(METHODS)}, PATTERN in {tuple(PATTERNS)} and INDUCTION 0 or 1")
    return args


def runnable(method: str, pattern: str) -> bool:
    return not (method in NO_NM and PATTERNS[pattern][0] is None)


def priority(job: tuple[str, str, bool]) -> int:
    """Run order: the rows a target compares (plain, then SI); then every method plain and with SI at 50 % and 70 %
    (an SI/no-SI ratio for each method at the sparsities that matter most); then the rest, plain before SI."""
    method, pattern, induction = job
    if any(job in (top, bottom) for _, top, bottom, _ in TARGETS):
        return int(induction)
    if pattern in ("50%", "70%"):
        return 2
    return 3 + int(induction)


def jobs(args: argparse.Namespace) -> list[tuple[str, str, bool]]:
    """(method, pattern, induction) rows in run order; combinations a method does not define are left out."""
    inductions = {"no": [False], "yes": [True], "both": [False, True]}[args.induction]
    planned = [(method, pattern, induction) for induction in inductions for pattern in args.patterns
               for method in args.methods if runnable(method, pattern)]
    return sorted(planned, key=priority)  # stable: table order within each priority


def command(method: str, pattern: str, induction: bool, eval_windows: int) -> list[str]:
    return [sys.executable, "-m", "benchmarks.methods_grid", "--one", method, pattern, str(int(induction)),
            "--eval-windows", str(eval_windows)]


def run_one(method: str, pattern: str, induction: bool, eval_windows: int = DEFAULT_EVAL_WINDOWS) -> dict:
    """Prune and evaluate one configuration in this process (the protocol's model, windows and seed)."""
    from benchmarks import assets, protocol
    from optimum_si import SIConfig, SIPruner
    from optimum_si.evaluation import perplexity

    protocol.setup_environment()
    started = time.perf_counter()
    model, tokenizer = protocol.load_model_and_tokenizer()
    calib, evaluation = protocol.calibration_ids(tokenizer), protocol.eval_ids(tokenizer)
    sparsity, structure = PATTERNS[pattern]
    config = SIConfig(**METHODS[method], sparsity=sparsity, mask_structure=structure, induction=induction,
                      num_samples=protocol.CALIB_SAMPLES, seqlen=protocol.CALIB_SEQLEN, seed=protocol.SEED,
                      show_progress=False)
    pruner = SIPruner(config)
    pruner.prune(model, tokenizer=tokenizer, dataset=calib)
    t0 = time.perf_counter()
    ppl = perplexity(model, evaluation, seqlen=protocol.EVAL_SEQLEN, max_windows=eval_windows)
    record = {
        "method": method, "pattern": pattern, "induction": induction, "ppl": ppl,
        "sparsity": pruner.report.sparsity, "prune_s": pruner.report.total_seconds,
        "eval_s": time.perf_counter() - t0, "wall_s": time.perf_counter() - started,
        "peak_rss_mb": protocol.peak_rss_mb(), "calibration": "pydocs-4M", "samples": protocol.CALIB_SAMPLES,
        "seqlen": protocol.CALIB_SEQLEN, "seed": protocol.SEED,
        "eval": f"jargon first {eval_windows} x {protocol.EVAL_SEQLEN}",
        "corpora_match_reference": assets.corpora_match_reference(),
        "config": {k: v for k, v in config.to_dict().items() if k != "meta"}, **protocol.machine(),
    }
    if induction:
        record["induction_kept_blocks"] = sum(1 for b in pruner.report.blocks if b.induction and b.induction.kept)
    return record


def targets(records: list[dict]) -> list[dict]:
    """Issue 12's targets on the rows present: ratio, limit and verdict (None when a row is missing)."""
    by_key = {(r["method"], r["pattern"], r["induction"]): r for r in records}
    out = []
    for text, top, bottom, limit in TARGETS:
        if top in by_key and bottom in by_key:
            ratio = by_key[top]["ppl"] / by_key[bottom]["ppl"]
            out.append({"target": text, "ratio": ratio, "limit": limit, "met": ratio <= limit})
        else:
            out.append({"target": text, "ratio": None, "limit": limit, "met": None})
    return out


def _cell(record: dict | None) -> str:
    return "–" if record is None else f"{record['ppl']:.2f} ({record['prune_s']:.0f} s)"


def markdown(records: list[dict]) -> str:
    """Perplexity (prune seconds) per method x pattern, plain and with SI; the SI/no-SI ratios; the targets."""
    by_key = {(r["method"], r["pattern"], r["induction"]): r for r in records}
    patterns = [p for p in PATTERNS if any(r["pattern"] == p for r in records)]
    methods = [m for m in METHODS if any(r["method"] == m for r in records)]
    head = "| method | SI | " + " | ".join(patterns) + " | peak RSS MB |"
    lines = [head, "|---|---|" + "---:|" * (len(patterns) + 1)]
    for method in methods:
        for induction in (False, True):
            rows = [by_key.get((method, p, induction)) for p in patterns]
            if not any(rows):
                continue
            rss = max(r["peak_rss_mb"] for r in rows if r)
            lines.append(f"| {method} | {'yes' if induction else 'no'} | " + " | ".join(map(_cell, rows))
                         + f" | {rss:.0f} |")
    lines += ["", "SI / no-SI perplexity ratio (below 1: SI helped):", "",
              "| method | " + " | ".join(patterns) + " |", "|---|" + "---:|" * len(patterns)]
    for method in methods:
        cells = []
        for p in patterns:
            plain, si = by_key.get((method, p, False)), by_key.get((method, p, True))
            cells.append("–" if plain is None or si is None else f"{si['ppl'] / plain['ppl']:.3f}")
        if any(c != "–" for c in cells):
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "| issue 12 target | ratio | limit | met |", "|---|---:|---:|---|"]
    for t in targets(records):
        ratio = "–" if t["ratio"] is None else f"{t['ratio']:.3f}"
        met = {True: "yes", False: "**no**", None: "not run"}[t["met"]]
        lines.append(f"| {t['target']} | {ratio} | {t['limit']:.2f} | {met} |")
    first = records[0] if records else {}
    lines += ["", f"SmolLM2-135M-Instruct (fp32), calibration {first.get('samples')} x {first.get('seqlen')} "
                  f"Python-docs tokens (seed {first.get('seed')}), evaluation {first.get('eval')} Jargon tokens; "
                  f"torch {first.get('torch')}, {first.get('threads')} thread(s), one process per row; cells are "
                  "perplexity (prune seconds). Every method with its authors' defaults (docs/methods.md); owl-wanda is "
                  "Wanda with OWL's allocation (no N:M form). Made by `python -m benchmarks.methods_grid`."]
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
    records: list[dict] = []
    path = os.path.join(RESULTS_DIR, f"{args.name}.json")
    if args.update and os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            records = json.load(handle)["records"]
    if args.skip_done:
        done = {(r["method"], r["pattern"], r["induction"]) for r in records}
        planned = [job for job in planned if job not in done]
    if args.dry_run:  # after --skip-done, so that it lists what a real run would do
        for job in planned:
            print(" ".join(command(*job, args.eval_windows)))
        return
    for method, pattern, induction in planned:
        out = subprocess.run(command(method, pattern, induction, args.eval_windows), capture_output=True, text=True)
        if out.returncode != 0:  # one failed row (e.g. a combination a method refuses) must not lose the others
            tail = (out.stderr or "").strip().splitlines()[-1:] or ["no error text"]
            print(f"{method:9s} {pattern:4s} SI={induction!s:5s} FAILED: {tail[0]}", flush=True)
            continue
        record = json.loads(out.stdout.strip().splitlines()[-1])
        key = (method, pattern, induction)
        records = [r for r in records if (r["method"], r["pattern"], r["induction"]) != key] + [record]
        print(f"{method:9s} {pattern:4s} SI={induction!s:5s} ppl={record['ppl']:9.3f} prune={record['prune_s']:7.1f}s "
              f"rss={record['peak_rss_mb']:.0f}MB", flush=True)
        write(records, args.name)


if __name__ == "__main__":
    main()
