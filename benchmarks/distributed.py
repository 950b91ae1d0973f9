"""Data-parallel pruning of SmolLM2-135M with 1 and 2 processes, on the project's protocol.

    python -m benchmarks.distributed                          # wanda, sparsegpt, si-wanda x 1 and 2 processes
    python -m benchmarks.distributed --methods wanda --procs 1 2 3
    python -m benchmarks.distributed --dry-run                # the torchrun commands, nothing run

Each row is one `torchrun --standalone --nproc_per_node N` launch (gloo on CPU) of this module with `--one`; every
rank prunes with the public API (same model, same full calibration set) and writes, per block, its compute time
(statistics, prune, propagation, induction: the block walker's own timers) and the payload bytes of the collectives it took
part in (`DataParallel.bytes_communicated`, sampled at each block's start); rank 0 also measures the perplexity, which must
match the 1-process row (docs/distributed.md: reduction order changes the last bits only). Threads: the machine's
cores are shared, `--threads` per process (default cores // N), so rows compare the same hardware. Results:
benchmarks/results/distributed.json and .md after every row.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
METHODS = {"wanda": ("wanda", False), "sparsegpt": ("sparsegpt", False), "si-wanda": ("wanda", True)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--procs", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process (default cores // N)")
    parser.add_argument("--eval-windows", type=int, default=None, help="fewer evaluation windows (quick probes)")
    parser.add_argument("--name", default="distributed", help="results file stem under benchmarks/results/")
    parser.add_argument("--dry-run", action="store_true", help="print the launches, run nothing")
    parser.add_argument("--one", choices=list(METHODS), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.procs):
        parser.error("--procs takes process counts >= 1")
    return args


def threads_for(procs: int, threads: int | None) -> int:
    return threads or max(1, (os.cpu_count() or 1) // procs)


def command(method: str, procs: int, threads: int, out: str, eval_windows: int | None) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
           "-m", "benchmarks.distributed", "--one", method, "--out", out, "--threads", str(threads)]
    return cmd + (["--eval-windows", str(eval_windows)] if eval_windows else [])


def run_rank(method: str, out: str, threads: int, eval_windows: int | None) -> None:
    """One rank of a launch: prune, record per-block timings and bytes, (rank 0) evaluate; writes rank<r>.json."""
    import torch

    from benchmarks import protocol
    from optimum_si import SIConfig, SIPruner, distributed
    from optimum_si.evaluation import perplexity
    from optimum_si.pipeline.sources.in_memory import InMemoryBlocks

    torch.set_num_threads(threads)
    protocol.setup_environment()
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    model, tokenizer = protocol.load_model_and_tokenizer()
    calib, evaluation = protocol.calibration_ids(tokenizer), protocol.eval_ids(tokenizer)
    base, induction = METHODS[method]
    config = SIConfig(method=base, sparsity=0.5, induction=induction, num_samples=protocol.CALIB_SAMPLES,
                      seqlen=protocol.CALIB_SEQLEN, seed=protocol.SEED)
    marks: list[int] = []  # bytes sent so far, at each block's start
    groups: list = []
    load = InMemoryBlocks.load

    def counting_load(self, index):  # the benchmark's probe only: the library keeps one running total
        group = distributed.active()
        if group is not None and not groups:
            groups.append(group)
        marks.append(group.bytes_communicated if group is not None else 0)
        return load(self, index)

    InMemoryBlocks.load = counting_load  # type: ignore[method-assign]
    pruner = SIPruner(config, show_progress=False)
    started = time.perf_counter()
    try:
        pruner.prune(model, tokenizer=tokenizer, dataset=calib)
    finally:
        InMemoryBlocks.load = load  # type: ignore[method-assign]
    prune_s = time.perf_counter() - started
    total = groups[0].bytes_communicated if groups else 0
    sent = [b - a for a, b in zip(marks, [*marks[1:], total])]
    record = {
        "method": method, "procs": world, "rank": rank, "threads": threads, "prune_s": prune_s,
        "capture_s": pruner.report.capture_seconds, "bytes_total": total,
        "blocks": [{"index": b.index, "seconds": b.seconds, "stats_s": b.stats_seconds, "prune_s": b.prune_seconds,
                    "propagate_s": b.propagate_seconds,
                    "induction_s": b.induction.seconds if b.induction is not None else 0.0, "bytes": sent[i]}
                   for i, b in enumerate(pruner.report.blocks)],
        "sparsity": pruner.report.sparsity, **protocol.machine(),
    }
    if rank == 0:
        windows = eval_windows or protocol.EVAL_WINDOWS
        record["ppl"] = perplexity(model, evaluation, seqlen=protocol.EVAL_SEQLEN, max_windows=windows)
        record["eval"] = f"jargon first {windows} x {protocol.EVAL_SEQLEN}"
    with open(os.path.join(out, f"rank{rank}.json"), "w", encoding="utf-8") as handle:
        json.dump(record, handle)


def summarise(ranks: list[dict]) -> dict:
    """One row from the ranks' records: the slowest rank's time, the per-block compute time of each rank and the
    collective payload bytes of each rank."""
    main = next(r for r in ranks if r["rank"] == 0)
    return {
        "method": main["method"], "procs": main["procs"], "threads": main["threads"], "ppl": main["ppl"],
        "sparsity": main["sparsity"], "prune_s": max(r["prune_s"] for r in ranks),
        "block_seconds": [[b["seconds"] for b in r["blocks"]] for r in sorted(ranks, key=lambda r: r["rank"])],
        "block_bytes": [[b["bytes"] for b in r["blocks"]] for r in sorted(ranks, key=lambda r: r["rank"])],
        "bytes_per_rank": [r["bytes_total"] for r in sorted(ranks, key=lambda r: r["rank"])],
        "eval": main["eval"], "torch": main.get("torch"),
    }


def markdown(rows: list[dict]) -> str:
    lines = ["| method | processes | threads each | prune s (slowest rank) | speed-up | PPL | PPL vs 1 process | "
             "mean block s per rank | collective MB per rank per block |",
             "|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    single = {r["method"]: r for r in rows if r["procs"] == 1}
    for r in rows:
        one = single.get(r["method"])
        speedup = f"{one['prune_s'] / r['prune_s']:.2f}x" if one else "–"
        ratio = f"{r['ppl'] / one['ppl']:.5f}" if one else "–"
        per_rank = " / ".join(f"{sum(s) / len(s):.2f}" for s in r["block_seconds"])
        blocks = max(len(b) for b in r["block_bytes"])
        mb = max(r["bytes_per_rank"]) / max(blocks, 1) / 1e6
        lines.append(f"| {r['method']} | {r['procs']} | {r['threads']} | {r['prune_s']:.1f} | {speedup} | "
                     f"{r['ppl']:.3f} | {ratio} | {per_rank} | {mb:.2f} |")
    torch_version = rows[0].get("torch") if rows else None
    lines += ["", "SmolLM2-135M-Instruct fp32, 50 % unstructured, calibration 32 x 512 Python-docs tokens (seed 0), "
                  f"evaluation {rows[0]['eval'] if rows else '–'} Jargon tokens; gloo on CPU, torch {torch_version}. "
                  "Made by `python -m benchmarks.distributed`."]
    return "\n".join(lines) + "\n"


def write(rows: list[dict], name: str) -> None:
    os.makedirs(RESULTS_DIR, exist_ok=True)
    with open(os.path.join(RESULTS_DIR, f"{name}.json"), "w", encoding="utf-8") as handle:
        json.dump({"rows": rows}, handle, indent=2)
    with open(os.path.join(RESULTS_DIR, f"{name}.md"), "w", encoding="utf-8") as handle:
        handle.write(markdown(rows))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.one:
        run_rank(args.one, args.out, threads_for(int(os.environ.get("WORLD_SIZE", "1")), args.threads),
                 args.eval_windows)
        return
    planned = [(method, procs) for method in args.methods for procs in args.procs]
    if args.dry_run:
        for method, procs in planned:
            print(" ".join(command(method, procs, threads_for(procs, args.threads), "<tmp>", args.eval_windows)))
        return
    rows: list[dict] = []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # torch threads are set per rank (--threads)
    for method, procs in planned:
        with tempfile.TemporaryDirectory() as out:
            subprocess.run(command(method, procs, threads_for(procs, args.threads), out, args.eval_windows),
                           check=True, env=env)
            ranks = []
            for rank in range(procs):
                with open(os.path.join(out, f"rank{rank}.json"), encoding="utf-8") as handle:
                    ranks.append(json.load(handle))
        rows.append(summarise(ranks))
        print(f"{method:9s} procs={procs} prune={rows[-1]['prune_s']:.1f}s ppl={rows[-1]['ppl']:.3f}", flush=True)
        write(rows, args.name)


if __name__ == "__main__":
    main()
