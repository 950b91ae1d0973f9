"""Does SI's gain survive text it was not calibrated on? Calibrate on each corpus, evaluate on every corpus.

    python -m benchmarks.cross_domain                                  # the grid with the default SI (~3 h on 2 cores)
    python -m benchmarks.cross_domain --methods wanda --patterns 50% --calibration kjv \\
        --variant lr3e-3 --json-extra '{"induction_lr": 3e-3}'       # one SI variant on a few cells

Corpora (benchmarks/protocol.py `DOMAINS`): the Python 3.11 docs, the Jargon File and the King James Bible, each
with a calibration region and a disjoint evaluation region, so even an in-domain cell never evaluates on text a
calibration window came from. Every run prunes SmolLM2-135M-Instruct with 32 x 512 calibration tokens (seed 0) and
scores the first `--eval-windows` x 512 tokens of every evaluation region. Each configuration runs in its own
process and appends one record to benchmarks/results/<name>.json; the Markdown grid (SI / no-SI perplexity ratio
per calibration -> evaluation pair) goes to <name>.md. Plain magnitude needs no data, so its no-SI run is shared by
every calibration corpus.
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
BAR = 0.98  # the default SI must be at most this times its base method in every off-diagonal cell


def run_one(method: str, pattern: str, calibration: str, variant: str, extra: dict, eval_windows: int) -> dict:
    """Prune (unless dense) with calibration text from `calibration` and evaluate on every domain, in this process."""
    from benchmarks import assets, protocol

    protocol.setup_environment()
    started = time.perf_counter()
    model, tokenizer = protocol.load_model_and_tokenizer()
    induction = variant != "none"
    record = {"method": method, "pattern": pattern, "calibration": calibration, "variant": variant,
              "induction": induction, "extra": extra, "samples": protocol.CALIB_SAMPLES, "seqlen": protocol.CALIB_SEQLEN,
              "seed": protocol.SEED, "eval_windows": eval_windows, "eval_seqlen": protocol.EVAL_SEQLEN,
              "corpora_match_reference": assets.corpora_match_reference(), **protocol.machine()}
    if method != "dense":
        from optimum_si import SIConfig, SIPruner

        config = SIConfig(method=method, mask_structure=PATTERNS[pattern], induction=induction,
                          num_samples=protocol.CALIB_SAMPLES, seqlen=protocol.CALIB_SEQLEN, seed=protocol.SEED,
                          show_progress=False, **(extra if induction else {}))
        calib = protocol.domain_calibration_ids(tokenizer, calibration) if calibration != "-" else None
        if induction:  # the resolved SI options, so a 'default' record stays readable after the defaults change
            record["si_options"] = {k: v for k, v in config.to_dict().items() if k.startswith("induction_")}
        pruner = SIPruner(config)
        pruner.prune(model, tokenizer=tokenizer, dataset=calib)
        record.update(prune_s=pruner.report.total_seconds, sparsity=pruner.report.sparsity)
        if induction:
            blocks = [b.induction for b in pruner.report.blocks if b.induction]
            record["blocks_kept"] = sum(1 for b in blocks if b.get("kept"))
            record["blocks"] = len(blocks)
            validation = [(b.get("validation_loss_base"), b.get("validation_loss_induced")) for b in blocks]
            if validation and all(v[0] is not None for v in validation):
                record["validation_loss_base"] = sum(v[0] for v in validation)
                record["validation_loss_induced"] = sum(v[1] for v in validation)
    from optimum_si.evaluation import perplexity

    t0 = time.perf_counter()
    record["ppl"] = {domain: perplexity(model, protocol.domain_eval_ids(tokenizer, domain), seqlen=protocol.EVAL_SEQLEN,
                                        max_windows=eval_windows)
                     for domain in protocol.DOMAINS}
    record["eval_s"] = time.perf_counter() - t0
    record["wall_s"] = time.perf_counter() - started
    record["peak_rss_mb"] = protocol.peak_rss_mb()
    return record


def _key(record: dict) -> tuple:
    return record["method"], record["pattern"], record["calibration"], record["variant"]


def _base(records: list[dict], method: str, pattern: str, calibration: str) -> dict | None:
    for record in records:
        if (record["method"], record["pattern"], record["variant"]) == (method, pattern, "none") and \
                record["calibration"] in (calibration, "-"):
            return record
    return None


def grid(records: list[dict], variant: str) -> tuple[str, dict]:
    """Markdown grid of SI/no-SI ratios for `variant`, and a summary (worst off-diagonal ratio per row)."""
    from benchmarks import protocol

    pairs = [(c, e) for c in protocol.DOMAINS for e in protocol.DOMAINS]
    header = "| method | pattern | " + " | ".join(f"{c} → {e}{' (in-domain)' if c == e else ''}" for c, e in pairs) + \
        " | worst off-diagonal |"
    lines = [header, "|---|---|" + "---:|" * (len(pairs) + 1)]
    summary = {}
    rows = sorted({(r["method"], r["pattern"]) for r in records if r["variant"] == variant},
                  key=lambda k: (k[0], list(PATTERNS).index(k[1])))
    for method, pattern in rows:
        cells, worst = [], None
        for calibration, evaluation in pairs:
            si = next((r for r in records if _key(r) == (method, pattern, calibration, variant)), None)
            base = _base(records, method, pattern, calibration)
            if si is None or base is None:
                cells.append("–")
                continue
            ratio = si["ppl"][evaluation] / base["ppl"][evaluation]
            cells.append(f"{ratio:.3f} ({base['ppl'][evaluation]:.1f} → {si['ppl'][evaluation]:.1f})")
            if calibration != evaluation:
                worst = ratio if worst is None else max(worst, ratio)
        summary[f"{method} {pattern}"] = worst
        mark = "–" if worst is None else f"{worst:.3f} ({'meets' if worst <= BAR else 'misses'} ≤ {BAR})"
        lines.append(f"| {method} | {pattern} | " + " | ".join(cells) + f" | {mark} |")
    return "\n".join(lines) + "\n", summary


def markdown(records: list[dict]) -> str:
    variants = sorted({r["variant"] for r in records if r["variant"] != "none"})
    first = records[0] if records else {}
    parts = []
    for variant in variants:
        extra = next((r["extra"] for r in records if r["variant"] == variant), {})
        table, _summary = grid(records, variant)
        parts.append(f"**SI variant `{variant}`** ({json.dumps(extra) if extra else 'defaults'}): SI / no-SI perplexity, "
                     f"(no SI → SI)\n\n{table}")
    parts.append(
        f"SmolLM2-135M-Instruct fp32; calibration {first.get('samples')} x {first.get('seqlen')} tokens (seed "
        f"{first.get('seed')}) from the calibration region of each corpus; evaluation on the first "
        f"{first.get('eval_windows')} x {first.get('eval_seqlen')} tokens of each evaluation region (disjoint from "
        "every calibration region); one process per run. Corpora: "
        + ("the reference texts." if all(r.get("corpora_match_reference", True) for r in records) else
           "**not the reference texts** (a Debian build changed): not comparable with other tables."))
    return "\n\n".join(parts) + "\n"


def _subprocess_record(method: str, pattern: str, calibration: str, variant: str, extra: dict,
                       eval_windows: int) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.cross_domain", "--one", method, pattern, calibration, variant,
           "--json-extra", json.dumps(extra), "--eval-windows", str(eval_windows)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from benchmarks import protocol

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["wanda", "sparsegpt", "magnitude"])
    parser.add_argument("--patterns", nargs="+", default=["50%", "2:4"], choices=list(PATTERNS))
    parser.add_argument("--calibration", nargs="+", default=list(protocol.DOMAINS), choices=list(protocol.DOMAINS))
    parser.add_argument("--variant", default="default", help="name of the SI variant ('none': base methods only)")
    parser.add_argument("--json-extra", default="{}", help="SIConfig fields of the SI variant, as JSON")
    parser.add_argument("--no-base", action="store_true", help="skip the base-method runs (already in the results)")
    parser.add_argument("--eval-windows", type=int, default=40)
    parser.add_argument("--name", default="cross_domain", help="results file stem under benchmarks/results/")
    parser.add_argument("--rerun", action="store_true", help="rerun SI runs already in the results file")
    parser.add_argument("--dense", action="store_true", help="also evaluate the dense model")
    parser.add_argument("--merge", nargs="+", metavar="NAME",
                        help="merge these results files (stems, e.g. from runs in parallel) into --name and exit")
    parser.add_argument("--embed", nargs="+", metavar="FILE",
                        help="write the grid of --variant from <name>.json between the '<!-- cross-domain-grid -->' "
                             "markers of these files (README.md, docs/si-design.md) and exit")
    parser.add_argument("--one", nargs=4, metavar=("METHOD", "PATTERN", "CALIBRATION", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    extra = json.loads(args.json_extra)
    if args.one:
        print(json.dumps(run_one(*args.one, extra, args.eval_windows)))
        return

    if args.embed:
        with open(os.path.join(RESULTS_DIR, f"{args.name}.json"), encoding="utf-8") as handle:
            records = json.load(handle)
        for path in args.embed:
            embed(path, records, args.variant)
        return

    if args.merge:
        merged: dict[tuple, dict] = {}
        for stem in args.merge:
            with open(os.path.join(RESULTS_DIR, f"{stem}.json"), encoding="utf-8") as handle:
                merged.update({_key(r): r for r in json.load(handle)})
        _write(args.name, list(merged.values()))
        return

    jobs = [("dense", "-", "-", "none")] if args.dense else []
    for method in args.methods:
        for pattern in args.patterns:
            if not args.no_base:
                calibrations = ["-"] if method == "magnitude" else args.calibration
                jobs += [(method, pattern, c, "none") for c in calibrations]
            if args.variant != "none":
                jobs += [(method, pattern, c, args.variant) for c in args.calibration]
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"{args.name}.json")
    records = []
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            records = json.load(handle)
    for job in jobs:
        if any(_key(r) == job for r in records) and (job[3] == "none" or not args.rerun):
            continue  # finished earlier (a rerun resumes); base runs do not change with the SI variant
        record = _subprocess_record(*job, extra if job[3] != "none" else {}, args.eval_windows)
        records = [r for r in records if _key(r) != job] + [record]
        print(f"{job[0]:9s} {job[1]:4s} calib={job[2]:6s} {job[3]:12s} "
              + " ".join(f"{d}={v:8.2f}" for d, v in record["ppl"].items())
              + f" prune={record.get('prune_s', 0):6.1f}s", flush=True)
        _write(args.name, records)


def embed(path: str, records: list[dict], variant: str) -> None:
    """Replace the text between the grid markers of `path` with the grid of `variant` and its protocol line."""
    start, end = "<!-- cross-domain-grid -->", "<!-- /cross-domain-grid -->"
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    if start not in text or end not in text:
        raise SystemExit(f"{path} has no {start} ... {end} markers.")
    table, _summary = grid(records, variant)
    protocol_line = markdown([r for r in records if r["variant"] in ("none", variant)]).rsplit("\n\n", 1)[-1]
    head, rest = text.split(start, 1)
    text = head + start + "\n" + table + "\n" + protocol_line + end + rest.split(end, 1)[1]
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def _write(name: str, records: list[dict]) -> None:
    with open(os.path.join(RESULTS_DIR, f"{name}.json"), "w", encoding="utf-8") as handle:
        json.dump(records, handle, indent=2)
    with open(os.path.join(RESULTS_DIR, f"{name}.md"), "w", encoding="utf-8") as handle:
        handle.write(markdown(records))


if __name__ == "__main__":
    main()
