"""Perplexity of SmolLM2-135M pruned with each method and pattern, against the reference table.

    python -m benchmarks.quality                       # the full matrix (about 15-20 minutes on 2 cores)
    python -m benchmarks.quality --methods wanda --patterns 50% 2:4 --induction both

Each configuration runs in its own process (clean peak RSS and timings) and writes one JSON record; the matrix
is written to benchmarks/results/quality.json and quality.md. Protocol: benchmarks/protocol.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
PATTERNS = {"50%": "unstructured", "2:4": "2:4", "4:8": "4:8"}


def run_one(method: str, pattern: str, induction: bool, extra: dict, eval_windows: int | None = None) -> dict:
    """Prune (unless dense) and evaluate one configuration in this process."""
    from benchmarks import protocol

    protocol.setup_environment()
    started = time.perf_counter()
    model, tokenizer = protocol.load_model_and_tokenizer()
    calib = protocol.calibration_ids(tokenizer)
    evaluation = protocol.eval_ids(tokenizer)
    record = {"method": method, "pattern": pattern, "induction": induction, "calibration": "pydocs-4M",
              "samples": protocol.CALIB_SAMPLES, "seqlen": protocol.CALIB_SEQLEN, "seed": protocol.SEED,
              "eval": f"jargon first {protocol.EVAL_WINDOWS} x {protocol.EVAL_SEQLEN}", **protocol.machine()}
    if method != "dense":
        from optimum_si import SIConfig, SIPruner

        config = SIConfig(method=method, mask_structure=PATTERNS[pattern], induction=induction,
                          num_samples=protocol.CALIB_SAMPLES, seqlen=protocol.CALIB_SEQLEN, seed=protocol.SEED,
                          show_progress=False, **extra)
        pruner = SIPruner(config)
        pruner.prune(model, tokenizer=tokenizer, dataset=calib)
        record.update(prune_s=pruner.report.total_seconds, sparsity=pruner.report.sparsity,
                      config={k: v for k, v in config.to_dict().items() if k != "meta"})
        if induction and pruner.report.blocks and pruner.report.blocks[0].induction is not None:
            record["induction_seconds"] = sum(b.induction.get("seconds", 0.0) for b in pruner.report.blocks if b.induction)
    from optimum_si.evaluation import perplexity

    t0 = time.perf_counter()
    windows = eval_windows or protocol.EVAL_WINDOWS
    record["eval"] = f"jargon first {windows} x {protocol.EVAL_SEQLEN}"
    record["ppl"] = perplexity(model, evaluation, seqlen=protocol.EVAL_SEQLEN, max_windows=windows)
    record["eval_s"] = time.perf_counter() - t0
    record["wall_s"] = time.perf_counter() - started
    record["peak_rss_mb"] = protocol.peak_rss_mb()
    from benchmarks import assets

    # A fresh set-up may have had to use another Debian build of a corpus: then the numbers are not the reference's.
    record["corpora_match_reference"] = assets.corpora_match_reference()
    comparable = not induction and windows == protocol.EVAL_WINDOWS and record["corpora_match_reference"]
    record["within_2pct_of_reference"] = protocol.within_reference(method, pattern, record["ppl"]) if comparable else None
    return record


def _subprocess_record(method: str, pattern: str, induction: bool, extra: dict, eval_windows: int | None) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.quality", "--one", method, pattern, "--json-extra", json.dumps(extra)]
    if eval_windows:
        cmd += ["--eval-windows", str(eval_windows)]
    if induction:
        cmd.append("--one-induction")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown(records: list[dict]) -> str:
    from benchmarks import protocol

    lines = [
        "| method | pattern | SI | PPL | reference PPL | within ±2 % | prune s | eval s | peak RSS MB |",
        "|---|---|---|---:|---:|---|---:|---:|---:|",
    ]
    for r in records:
        refs = None if r["induction"] else protocol.REFERENCE_PPL.get((r["method"], r["pattern"]))
        ref = " / ".join(f"{v:.2f}" for v in refs) if refs else "–"
        ok = {True: "yes", False: "**no**", None: "–"}[r.get("within_2pct_of_reference")]
        lines.append(
            f"| {r['method']} | {r['pattern']} | {'yes' if r['induction'] else 'no'} | {r['ppl']:.2f} | {ref} | {ok} | "
            f"{r.get('prune_s', 0.0):.1f} | {r['eval_s']:.1f} | {r['peak_rss_mb']:.0f} |"
        )
    first = records[0] if records else {}
    lines.append("")
    lines.append(
        f"SmolLM2-135M-Instruct (fp32), calibration {first.get('samples')} x {first.get('seqlen')} Python-docs tokens "
        f"(seed {first.get('seed')}), evaluation {first.get('eval')} Jargon tokens; torch {first.get('torch')}, "
        f"{first.get('threads')} threads, one process per row. Reference: runs of the reference implementations on the "
        "same protocol (`benchmarks/protocol.py`, `REFERENCE_PPL`)."
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["dense", "magnitude", "wanda", "sparsegpt"])
    parser.add_argument("--patterns", nargs="+", default=list(PATTERNS), choices=list(PATTERNS))
    parser.add_argument("--induction", choices=["no", "yes", "both"], default="no")
    parser.add_argument("--name", default="quality", help="results file stem under benchmarks/results/")
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "PATTERN"), help=argparse.SUPPRESS)
    parser.add_argument("--one-induction", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json-extra", default="{}", help="extra SIConfig fields as JSON")
    parser.add_argument("--eval-windows", type=int, default=None, help="fewer evaluation windows (quick probes only)")
    parser.add_argument("--update", action="store_true", help="replace matching rows of an existing results file")
    args = parser.parse_args()
    extra = json.loads(args.json_extra)
    if args.one:
        print(json.dumps(run_one(args.one[0], args.one[1], args.one_induction, extra, args.eval_windows)))
        return

    inductions = {"no": [False], "yes": [True], "both": [False, True]}[args.induction]
    jobs = []
    for method in args.methods:
        if method == "dense":
            jobs.append(("dense", "-", False))
            continue
        for pattern in args.patterns:
            for induction in inductions:
                jobs.append((method, pattern, induction))
    records = []
    os.makedirs(RESULTS_DIR, exist_ok=True)
    results_path = os.path.join(RESULTS_DIR, f"{args.name}.json")
    if args.update and os.path.isfile(results_path):
        with open(results_path, encoding="utf-8") as handle:
            records = json.load(handle)
    for method, pattern, induction in jobs:
        record = _subprocess_record(method, pattern, induction, extra, args.eval_windows)
        key = (method, pattern, induction)
        position = next((i for i, r in enumerate(records) if (r["method"], r["pattern"], r["induction"]) == key), None)
        if position is None:
            records.append(record)
        else:
            records[position] = record
        print(f"{method:10s} {pattern:4s} SI={induction!s:5s} ppl={record['ppl']:9.3f} "
              f"prune={record.get('prune_s', 0):6.1f}s rss={record['peak_rss_mb']:.0f}MB", flush=True)
        with open(results_path, "w", encoding="utf-8") as handle:
            json.dump(records, handle, indent=2)
        with open(os.path.join(RESULTS_DIR, f"{args.name}.md"), "w", encoding="utf-8") as handle:
            handle.write(markdown(records))


if __name__ == "__main__":
    main()
