"""The one runner of the perplexity studies: each row's recipe prunes SmolLM2-135M, the pruned model is scored.

    python -m benchmarks.runner quality                             # every row; results.json started afresh
    python -m benchmarks.runner methods_grid --skip-done            # only the rows results.json does not have yet
    python -m benchmarks.runner methods_grid --only alps-70%-si --update   # rerun one row, keep the others
    python -m benchmarks.runner cross_domain --dry-run              # list what would run, run nothing
    python -m benchmarks.runner reconstruction --skip-done --threads 1   # two such runs can share 2 cores
    python -m benchmarks.runner cross_domain --render               # results.md from results.json, then the
                                                                    # tables of README.md and docs/ (run nothing)
    python -m benchmarks.runner quality --write-spec                # study.json from the study's spec.py

A study is a folder of benchmarks/studies/. Its study.json gives the protocol (calibration corpus, region, samples,
seqlen and seed; evaluation corpora, region, windows and seqlen; torch threads per row) and the rows. A row has a
key (for --only and for its record), a label, tags (its place in the study's tables, copied into its record), a
format-2 recipe (`SIConfig.from_dict`; null for the dense model) and optionally its own calibration corpus (null:
no calibration data), evaluation corpora and `long_windows` (also score the first `long_windows` windows, for
figures quoted on a longer protocol: the record's `ppl` stays the protocol's windows, bit for bit, and `long_eval`
holds the longer score) and its own `seed` (a repeat with other calibration windows, to measure the spread). The
regions are the character ranges of benchmarks/protocol.py
(`CALIBRATION_REGION`, `EVALUATION_REGION`), disjoint for every corpus.

Each row runs in a process of its own (clean timings and peak RSS) with the study's thread count, and returns one
record; `--threads` overrides the study's thread count (each record says what it ran with). After every row,
results.json (one record per row key, written atomically) and results.md (made by the
study's render.py) are rewritten, so an interrupted run keeps what it finished; a failed row is reported and the
run goes on. With --update or --skip-done the file is read again before each write, so two runs of one study
(each with its own rows) keep each other's records. Without --update or --skip-done, a run starts results.json
afresh (the committed file stays in git).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
STUDIES_DIR = Path(__file__).resolve().parent / "studies"
# The child process a row runs in reads {"protocol": ..., "row": ...} on stdin and prints its record last.
CHILD_FLAG = "--run-row"

_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9%:._+-]*")
_ROW_FIELDS = {"key", "label", "tags", "recipe", "calibration", "evaluation", "long_windows", "seed"}
# The protocol owns the calibration windows; a recipe that set them would disagree with the study's own record.
_PROTOCOL_OWNED = ("num_samples", "seqlen", "seed")
# Fields the runner writes into every record; a row's tags must not reuse them.
RECORD_FIELDS = frozenset({
    "key", "label", "calibration", "samples", "seqlen", "seed", "eval", "eval_windows", "eval_seqlen",
    "corpora_match_reference", "python", "torch", "transformers", "threads", "cpu", "cores", "prune_s", "sparsity",
    "recipe", "config", "induction_seconds", "blocks", "blocks_kept", "validation_loss_base",
    "validation_loss_induced", "reconstruction_seconds", "reconstruction_blocks_kept",
    "reconstruction_blocks_kept_at_retry", "reconstruction_loss_before", "reconstruction_loss_after", "ppl",
    "long_eval", "eval_s", "wall_s", "peak_rss_mb", "optimum_si", "weights", "block_records",
})
# What a record keeps of each block's SI verdict (the published cards' SI section and chart come from these).
_BLOCK_INDUCTION_FIELDS = ("kept", "validation_loss_base", "validation_loss_induced", "relative_error_base",
                           "relative_error_induced")


class StudyError(ValueError):
    """A study spec or results file the runner cannot use; the message names the study and the problem."""


class RowFailed(RuntimeError):
    """A row's process exited with an error; the message is the last line it wrote to stderr."""


# --------------------------------------------------------------------------------------------------------------------
# Studies
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Study:
    """A checked study spec and the folder its results go to."""

    name: str
    folder: Path
    spec: dict[str, Any]

    @property
    def protocol(self) -> dict[str, Any]:
        return self.spec["protocol"]

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.spec["rows"]

    @property
    def results_path(self) -> Path:
        return self.folder / "results.json"

    @property
    def markdown_path(self) -> Path:
        return self.folder / "results.md"


def available_studies(studies_dir: Path | None = None) -> list[str]:
    studies_dir = studies_dir or STUDIES_DIR
    return sorted(p.name for p in studies_dir.iterdir() if (p / "study.json").is_file() or (p / "spec.py").is_file())


def load_study(name: str, studies_dir: Path | None = None) -> Study:
    """The study `name`, with its spec checked (every recipe is built once, so a typo fails before any row runs)."""
    studies_dir = studies_dir or STUDIES_DIR
    folder = studies_dir / name
    path = folder / "study.json"
    if not path.is_file():
        known = ", ".join(available_studies(studies_dir)) or "none"
        raise StudyError(f"no study {name!r}: {path} does not exist (studies: {known}).")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise StudyError(f"{path} is not valid JSON: {err}") from None
    check_spec(name, spec)
    return Study(name, folder, spec)


def check_spec(name: str, spec: Any) -> None:
    """Raise StudyError unless `spec` is a runnable study: a protocol, and rows with unique keys and valid recipes."""
    if not isinstance(spec, dict) or not isinstance(spec.get("protocol"), dict) or not isinstance(spec.get("rows"), list):
        raise StudyError(f"study {name!r}: the spec must be an object with a 'protocol' object and a 'rows' list.")
    _check_protocol(name, spec["protocol"])
    if not spec["rows"]:
        raise StudyError(f"study {name!r} has no rows.")
    seen: set[str] = set()
    for row in spec["rows"]:
        _check_row(name, spec["protocol"], row)
        if row["key"] in seen:
            raise StudyError(f"study {name!r}: row key {row['key']!r} is used twice.")
        seen.add(row["key"])


def _check_protocol(name: str, protocol: dict[str, Any]) -> None:
    from benchmarks.protocol import DOMAINS

    def positive(section: str, field: str) -> None:
        value = protocol.get(section, {}).get(field) if section else protocol.get(field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            where = f"{section}.{field}" if section else field
            raise StudyError(f"study {name!r}: protocol {where} must be a positive integer, got {value!r}.")

    for section in ("calibration", "evaluation"):
        if not isinstance(protocol.get(section), dict):
            raise StudyError(f"study {name!r}: the protocol has no '{section}' object.")
        # The one split the token caches know: each section reads its own region of every corpus.
        if protocol[section].get("region") != section:
            raise StudyError(f"study {name!r}: protocol {section}.region must be {section!r} (the "
                             f"{section.upper()}_REGION of benchmarks/protocol.py).")
    for field in ("samples", "seqlen"):
        positive("calibration", field)
    for field in ("windows", "seqlen"):
        positive("evaluation", field)
    positive("", "threads")
    seed = protocol["calibration"].get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise StudyError(f"study {name!r}: protocol calibration.seed must be an integer, got {seed!r}.")
    _check_corpora(name, "protocol calibration.corpus", [protocol["calibration"].get("corpus")], DOMAINS)
    _check_corpora(name, "protocol evaluation.corpora", protocol["evaluation"].get("corpora"), DOMAINS)


def _check_corpora(name: str, where: str, corpora: Any, domains: tuple[str, ...]) -> None:
    if not isinstance(corpora, list) or not corpora or any(c not in domains for c in corpora):
        raise StudyError(f"study {name!r}: {where} must name corpora among {', '.join(domains)}, got {corpora!r}.")


def _check_row(name: str, protocol: dict[str, Any], row: Any) -> None:
    from benchmarks.protocol import DOMAINS

    if not isinstance(row, dict) or not isinstance(row.get("key"), str) or not _KEY.fullmatch(row["key"]):
        raise StudyError(f"study {name!r}: every row needs a key of letters, digits and %:._+- (got {row!r}).")
    where = f"study {name!r}, row {row['key']!r}"
    unknown = sorted(set(row) - _ROW_FIELDS)
    if unknown:
        raise StudyError(f"{where}: unknown field(s) {', '.join(unknown)}; a row has {', '.join(sorted(_ROW_FIELDS))}.")
    if not isinstance(row.get("label"), str) or not row["label"]:
        raise StudyError(f"{where}: the label must be a non-empty string.")
    tags = row.get("tags", {})
    if not isinstance(tags, dict) or set(tags) & RECORD_FIELDS:
        raise StudyError(f"{where}: tags must be an object whose names are not record fields "
                         f"({', '.join(sorted(set(tags) & RECORD_FIELDS)) if isinstance(tags, dict) else tags!r}).")
    if row.get("calibration") is not None:
        _check_corpora(name, f"row {row['key']!r} calibration", [row["calibration"]], DOMAINS)
    if "evaluation" in row:
        _check_corpora(name, f"row {row['key']!r} evaluation", row["evaluation"], DOMAINS)
    if "long_windows" in row:
        long_windows, windows = row["long_windows"], protocol["evaluation"]["windows"]
        if isinstance(long_windows, bool) or not isinstance(long_windows, int) or long_windows <= windows:
            raise StudyError(f"{where}: long_windows must be an integer above the protocol's {windows} evaluation "
                             f"windows, got {long_windows!r}.")
    if "seed" in row and (isinstance(row["seed"], bool) or not isinstance(row["seed"], int)):
        raise StudyError(f"{where}: seed must be an integer (the protocol's calibration.seed if left out), "
                         f"got {row['seed']!r}.")
    if "recipe" not in row:
        raise StudyError(f"{where}: no recipe (null for the dense model).")
    try:
        config = row_config(protocol, row)
    except (TypeError, ValueError) as err:
        raise StudyError(f"{where}: {err}") from None
    if config is not None and config.needs_calibration and calibration_corpus(protocol, row) is None:
        raise StudyError(f"{where}: calibration is null, but the recipe needs calibration data.")


def row_seed(protocol: dict[str, Any], row: dict[str, Any]) -> int:
    """The seed of the row's calibration windows and recipe: its own (a repeat that measures the spread), else the
    protocol's."""
    return row.get("seed", protocol["calibration"]["seed"])


def row_config(protocol: dict[str, Any], row: dict[str, Any]):
    """The SIConfig of `row` (None for the dense model): its recipe with the protocol's calibration windows and the
    row's seed."""
    from optimum_si import SIConfig

    recipe = row["recipe"]
    if recipe is None:
        return None
    if not isinstance(recipe, dict):
        raise ValueError(f"the recipe must be an object of SIConfig fields or null, got {recipe!r}")
    known = {f.name for f in dataclasses.fields(SIConfig)}
    # Format-1 flat knobs (induction_lr, owl_m, ...) would be upgraded silently; a spec must use the nested form.
    unknown = sorted(set(recipe) - known)
    if unknown:
        raise ValueError(f"unknown recipe field(s) {', '.join(unknown)}; use the nested format-2 fields "
                         "(method_args, profile_args, induction)")
    owned = sorted(set(recipe) & set(_PROTOCOL_OWNED))
    if owned:
        raise ValueError(f"the recipe sets {', '.join(owned)}, which the protocol's calibration section owns")
    calibration = protocol["calibration"]
    return SIConfig.from_dict({**recipe, "num_samples": calibration["samples"], "seqlen": calibration["seqlen"],
                               "seed": row_seed(protocol, row)})


def calibration_corpus(protocol: dict[str, Any], row: dict[str, Any]) -> str | None:
    """The corpus the row calibrates on: its own (None: no calibration data), else the protocol's."""
    return row["calibration"] if "calibration" in row else protocol["calibration"]["corpus"]


def evaluation_corpora(protocol: dict[str, Any], row: dict[str, Any]) -> list[str]:
    return list(row.get("evaluation", protocol["evaluation"]["corpora"]))


def write_spec(name: str, studies_dir: Path | None = None) -> Path:
    """Write `study.json` of study `name` from its `spec.py` (`study()`), after checking it."""
    module = importlib.import_module(f"benchmarks.studies.{name}.spec")
    spec = module.study()
    check_spec(name, spec)
    path = (studies_dir or STUDIES_DIR) / name / "study.json"
    write_atomic(path, json.dumps(spec, indent=2) + "\n")
    return path


# --------------------------------------------------------------------------------------------------------------------
# Records and tables
# --------------------------------------------------------------------------------------------------------------------


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a results.json ([] when there is none yet)."""
    if not path.is_file():
        return []
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise StudyError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) and "key" in r for r in records):
        raise StudyError(f"{path} must be a list of records, each with the key of its row.")
    return records


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def upsert(records: list[dict[str, Any]], record: dict[str, Any]) -> list[dict[str, Any]]:
    """`records` with `record` in place of the one of the same key, or appended."""
    keys = [r["key"] for r in records]
    if record["key"] in keys:
        return [record if r["key"] == record["key"] else r for r in records]
    return [*records, record]


def renderer(study: Study) -> Callable[[Study, list[dict[str, Any]]], str]:
    """The study's `render.py` `render(study, records)`, or a plain table for a study without one."""
    package = f"benchmarks.studies.{study.name}"
    try:
        return importlib.import_module(f"{package}.render").render
    except ModuleNotFoundError as err:
        if err.name not in (package, f"{package}.render"):  # a missing import inside render.py is a real error
            raise
        return plain_table


def plain_table(study: Study, records: list[dict[str, Any]]) -> str:
    lines = ["| row | PPL | prune s | peak RSS MB |", "|---|---:|---:|---:|"]
    for r in records:
        lines.append(f"| {r.get('label', r['key'])} | {format_ppl(r['ppl'])} | {r.get('prune_s', 0.0):.1f} | "
                     f"{r['peak_rss_mb']:.0f} |")
    return "\n".join(lines) + "\n"


def format_ppl(ppl: float | dict[str, float]) -> str:
    return " ".join(f"{c}={v:.2f}" for c, v in ppl.items()) if isinstance(ppl, dict) else f"{ppl:.2f}"


def write_results(study: Study, records: list[dict[str, Any]]) -> None:
    write_atomic(study.results_path, json.dumps(records, indent=2) + "\n")
    write_atomic(study.markdown_path, renderer(study)(study, records))


# --------------------------------------------------------------------------------------------------------------------
# One row (in its own process)
# --------------------------------------------------------------------------------------------------------------------


def run_row(protocol: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """Prune (unless the row is the dense model) and evaluate one row in this process; returns its record."""
    import torch

    from benchmarks import protocol as bench
    from optimum_si import __version__
    from optimum_si.evaluation import perplexity
    from tests import assets

    bench.setup_environment()
    torch.set_num_threads(protocol["threads"])
    started = time.perf_counter()
    model, tokenizer = bench.load_model_and_tokenizer()
    calibration, evaluation = protocol["calibration"], protocol["evaluation"]
    corpora = evaluation_corpora(protocol, row)
    record: dict[str, Any] = {
        "key": row["key"], "label": row["label"], **row.get("tags", {}), "calibration": "-",
        "samples": calibration["samples"], "seqlen": calibration["seqlen"], "seed": row_seed(protocol, row),
        "eval": f"{'+'.join(corpora)} first {evaluation['windows']} x {evaluation['seqlen']}",
        "eval_windows": evaluation["windows"], "eval_seqlen": evaluation["seqlen"],
        # A fresh set-up may have had to use another Debian build of a corpus: its numbers are not the reference's.
        "corpora_match_reference": assets.corpora_match_reference(), **bench.machine(),
        "optimum_si": __version__, "weights": assets.smollm2_source_record(),
    }
    config = row_config(protocol, row)
    if config is not None:
        record.update(_prune(model, tokenizer, config, protocol, row))
    t0 = time.perf_counter()
    windows, seqlen, long_windows = evaluation["windows"], evaluation["seqlen"], row.get("long_windows")
    ids = {corpus: bench.domain_eval_ids(tokenizer, corpus) for corpus in corpora}
    scores = {corpus: perplexity(model, ids[corpus], seqlen=seqlen, max_windows=windows, show_progress=False)
              for corpus in corpora}
    record["ppl"] = scores if len(scores) > 1 else scores[corpora[0]]
    if long_windows is not None:
        # Only the windows past the protocol's are scored again; the two means combine by their window counts.
        rest = {corpus: perplexity(model, ids[corpus][windows * seqlen:], seqlen=seqlen,
                                   max_windows=long_windows - windows, show_progress=False) for corpus in corpora}
        longer = {corpus: math.exp((windows * math.log(scores[corpus]) + (long_windows - windows)
                                    * math.log(rest[corpus])) / long_windows) for corpus in corpora}
        record["long_eval"] = {"windows": long_windows,
                               "ppl": longer if len(longer) > 1 else longer[corpora[0]]}
    record["eval_s"] = time.perf_counter() - t0
    record["wall_s"] = time.perf_counter() - started
    record["peak_rss_mb"] = bench.peak_rss_mb()
    return record


def _prune(model: Any, tokenizer: Any, config: Any, protocol: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """Prune `model` in place with `config`; the record fields of the pruning."""
    from benchmarks import protocol as bench
    from optimum_si import SIPruner

    calibration = protocol["calibration"]
    corpus = calibration_corpus(protocol, row) if config.needs_calibration else None
    dataset = None if corpus is None else bench.domain_calibration_ids(
        tokenizer, corpus, calibration["samples"], calibration["seqlen"], row_seed(protocol, row))
    pruner = SIPruner(config, show_progress=False)
    pruner.prune(model, tokenizer=tokenizer, dataset=dataset)
    report = pruner.report
    fields = {"calibration": corpus or "-", "prune_s": report.total_seconds, "sparsity": report.sparsity,
              "recipe": row["recipe"], "config": {k: v for k, v in config.to_dict().items() if k != "meta"}}
    summary = report.induction_summary()
    if summary is not None:
        fields["induction_seconds"] = sum(b.induction.seconds or 0.0 for b in report.blocks if b.induction)
        fields.update({k: summary[k] for k in ("blocks", "blocks_kept", "validation_loss_base",
                                               "validation_loss_induced") if k in summary})
    refit = report.reconstruction_summary()
    if refit is not None:
        fields["reconstruction_seconds"] = sum(b.reconstruction.seconds or 0.0 for b in report.blocks
                                               if b.reconstruction)
        fields.update({f"reconstruction_{k}": refit[k]
                       for k in ("blocks_kept", "blocks_kept_at_retry", "loss_before", "loss_after")})
    if any(b.output_error is not None or b.induction for b in report.blocks):
        fields["block_records"] = [
            {"index": b.index, "output_error": b.output_error,
             "induction": {k: b.induction.get(k) for k in _BLOCK_INDUCTION_FIELDS if b.induction.get(k) is not None}
             if b.induction else None}
            for b in report.blocks]
    return fields


def _child_env(threads: int) -> dict[str, str]:
    # Thread pools size themselves when the process starts: set them before it does, not only in torch.
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def run_in_subprocess(protocol: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """Run one row in a fresh Python process (this module with CHILD_FLAG) and return its record."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.runner", CHILD_FLAG],
                         input=json.dumps({"protocol": protocol, "row": row}), capture_output=True, text=True,
                         env=_child_env(protocol["threads"]), cwd=REPO_ROOT, check=False)
    if out.returncode != 0:
        tail = (out.stderr or "").strip().splitlines()[-1:] or [f"exit status {out.returncode}, no error text"]
        raise RowFailed(tail[0])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _child() -> int:
    payload = json.load(sys.stdin)
    print(json.dumps(run_row(payload["protocol"], payload["row"])))
    return 0


# --------------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.runner", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", help="a folder of benchmarks/studies/ (" + ", ".join(available_studies()) + ")")
    parser.add_argument("--only", nargs="+", metavar="KEY", default=[], help="run only the rows with these keys")
    parser.add_argument("--skip-done", action="store_true",
                        help="leave out the rows results.json already has a record of (keeps every record)")
    parser.add_argument("--update", action="store_true",
                        help="keep the records of results.json; a row that runs again replaces its own")
    parser.add_argument("--threads", type=_positive_int, metavar="N",
                        help="torch threads per row instead of the study's (recorded in each record)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="list the rows that would run, run nothing")
    mode.add_argument("--render", action="store_true",
                      help="only rewrite results.md from results.json, then the tables of README.md and docs/*.md "
                           "(benchmarks/update_readme.py)")
    mode.add_argument("--write-spec", action="store_true", help="only rewrite study.json from the study's spec.py")
    return parser.parse_args(argv)


def select_rows(study: Study, only: list[str], records: list[dict[str, Any]], skip_done: bool) -> list[dict[str, Any]]:
    """The rows to run, in study order: those named by `only` (all when empty), less the recorded ones if
    `skip_done`."""
    keys = [row["key"] for row in study.rows]
    unknown = [key for key in only if key not in keys]
    if unknown:
        raise StudyError(f"study {study.name!r} has no row {', '.join(map(repr, unknown))}; its keys: "
                         f"{', '.join(keys)}.")
    done = {r["key"] for r in records}
    return [row for row in study.rows if (not only or row["key"] in only) and not (skip_done and row["key"] in done)]


def _print_plan(rows: list[dict[str, Any]], records: list[dict[str, Any]], keep: bool) -> None:
    width = max((len(row["key"]) for row in rows), default=0)
    for row in rows:
        print(f"{row['key']:{width}s}  {row['label']}")
    kept = len({r["key"] for r in records} - {row["key"] for row in rows}) if keep else 0
    note = f"results.json keeps {kept} other record(s)" if keep else \
        f"results.json would start afresh ({len(records)} record(s) now; --update keeps them)"
    print(f"{len(rows)} row(s) would run; {note}.")


def run_study(study: Study, rows: list[dict[str, Any]], records: list[dict[str, Any]], keep: bool = False) -> int:
    """Run `rows` one process each, writing the results after every row; the number of rows that failed."""
    failed = 0
    for row in rows:
        try:
            record = run_in_subprocess(study.protocol, row)
        except RowFailed as err:  # one refused or crashed row must not lose the others
            print(f"{row['key']}: FAILED: {err}", flush=True)
            failed += 1
            continue
        if keep:  # another run of this study may have written rows of its own meanwhile
            records = read_records(study.results_path)
        records = upsert(records, record)
        write_results(study, records)
        print(f"{row['key']}: ppl {format_ppl(record['ppl'])}, prune {record.get('prune_s', 0.0):.1f} s, "
              f"peak RSS {record['peak_rss_mb']:.0f} MB", flush=True)
    return failed


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == [CHILD_FLAG]:
        return _child()
    args = parse_args(argv)
    try:
        if args.write_spec:
            print(write_spec(args.study))
            return 0
        study = load_study(args.study)
        records = read_records(study.results_path)
        if args.render:
            from benchmarks import update_readme

            write_atomic(study.markdown_path, renderer(study)(study, records))
            print(study.markdown_path)
            for name in update_readme.main([]):  # the documents that show this study's tables
                print(REPO_ROOT / name)
            return 0
        rows = select_rows(study, args.only, records, args.skip_done)
        keep = args.update or args.skip_done
        if args.dry_run:
            _print_plan(rows, records, keep)
            return 0
        if args.threads is not None:
            study = dataclasses.replace(study, spec={**study.spec, "protocol": {**study.protocol,
                                                                                 "threads": args.threads}})
        failed = run_study(study, rows, records if keep else [], keep)
    except StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
