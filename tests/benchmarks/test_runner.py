"""benchmarks/runner.py without a real model: study specs and their checks, a row's SIConfig, the dry-run listing,
--skip-done and --update, the records it writes after each row, and the tables it renders from a records file."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

from benchmarks import protocol, runner
from benchmarks.studies.patterns import pattern_fields

STUDIES = {"quality": 19, "methods_grid": 80, "cross_domain": 34, "cross_domain_screening": 15}


def _row(key: str, recipe: dict | None, **extra) -> dict:
    return {"key": key, "label": f"row {key}", "tags": {"method": key, "pattern": "50%", "induction": False},
            "recipe": recipe, **extra}


def _spec(*rows: dict, **protocol_changes) -> dict:
    return {"protocol": {**protocol.study_protocol(eval_windows=4), **protocol_changes}, "rows": list(rows)}


def _toy_rows() -> list[dict]:
    return [_row("dense", None), _row("magnitude", {"method": "magnitude", **pattern_fields("50%")}),
            _row("wanda", {"method": "wanda", **pattern_fields("2:4")})]


@pytest.fixture
def studies(tmp_path, monkeypatch):
    """A studies folder holding the study "toy" (no render.py: the runner's plain table)."""
    monkeypatch.setattr(runner, "STUDIES_DIR", tmp_path)
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "study.json").write_text(json.dumps(_spec(*_toy_rows())))
    return tmp_path


def _record(row: dict, ppl: float) -> dict:
    return {"key": row["key"], "label": row["label"], **row["tags"], "ppl": ppl, "prune_s": 1.0, "eval_s": 2.0,
            "peak_rss_mb": 900.0}


class FakeRows:
    """Stands in for subprocess.run: answers a row's process with a record (perplexity from `ppl` by key), or fails
    for keys not in `ppl`; remembers the payloads and thread settings it was given."""

    def __init__(self, ppl: dict[str, float]) -> None:
        self.ppl, self.payloads, self.threads = ppl, [], []

    def __call__(self, cmd, *, input, env, **kwargs):
        assert cmd == [sys.executable, "-m", "benchmarks.runner", runner.CHILD_FLAG]
        payload = json.loads(input)
        self.payloads.append(payload)
        self.threads.append(env["OMP_NUM_THREADS"])
        key = payload["row"]["key"]
        if key not in self.ppl:
            return subprocess.CompletedProcess(cmd, 1, "", "Traceback ...\nValueError: refused")
        return subprocess.CompletedProcess(cmd, 0, "log line\n" + json.dumps(_record(payload["row"], self.ppl[key])), "")


# ------------------------------------------------------------------------------------------------ the committed studies


@pytest.mark.parametrize("name", list(STUDIES))
def test_every_committed_study_loads_and_matches_its_spec_module(name):
    import importlib

    study = runner.load_study(name)
    assert len(study.rows) == STUDIES[name]
    assert study.spec == json.loads(json.dumps(importlib.import_module(f"benchmarks.studies.{name}.spec").study()))
    records = runner.read_records(study.results_path)
    assert {r["key"] for r in records} == {row["key"] for row in study.rows}  # every row is measured
    assert study.markdown_path.read_text() == runner.renderer(study)(study, records)  # results.md is current


def test_study_rows_become_the_right_configs():
    grid = runner.load_study("methods_grid")
    rows = {row["key"]: row for row in grid.rows}
    config = runner.row_config(grid.protocol, rows["owl-wanda-70%-si"])
    assert (config.method, config.sparsity, config.mask_structure, config.sparsity_profile) == \
        ("wanda", 0.7, "unstructured", "owl")
    assert (config.profile_args.m, config.profile_args.lam) == (5.0, 0.08)
    assert config.induction is not None and config.induction.validation_fraction == 0.25
    assert (config.num_samples, config.seqlen, config.seed) == (32, 512, 0)
    assert runner.row_config(grid.protocol, rows["alps-2:4"]).n_m == (2, 4)
    assert runner.row_config(grid.protocol, rows["alps-2:4"]).induction is None

    cross = runner.load_study("cross_domain")
    rows = {row["key"]: row for row in cross.rows}
    assert runner.row_config(cross.protocol, rows["wanda-50%-pydocs-damped-local-noval"]).induction.validation_fraction == 0.0
    assert runner.calibration_corpus(cross.protocol, rows["wanda-2:4-kjv-default"]) == "kjv"
    assert runner.calibration_corpus(cross.protocol, rows["magnitude-2:4-none"]) is None
    assert runner.evaluation_corpora(cross.protocol, rows["magnitude-2:4-none"]) == list(protocol.DOMAINS)

    study = runner.load_study("reconstruction")
    repeat = next(row for row in study.rows if row.get("seed") == 1)
    assert runner.row_config(study.protocol, repeat).seed == 1 and runner.row_seed(study.protocol, repeat) == 1
    assert runner.row_config(study.protocol, study.rows[0]).seed == study.protocol["calibration"]["seed"] == 0

    quality = runner.load_study("quality")
    assert runner.row_config(quality.protocol, quality.rows[0]) is None  # the dense model
    assert quality.protocol["threads"] == 2 and grid.protocol["threads"] == 1


def test_the_screening_recipes_are_the_earlier_si_defaults_with_each_variant():
    study = runner.load_study("cross_domain_screening")
    rows = {row["key"]: row for row in study.rows}
    default = runner.row_config(study.protocol, rows["wanda-50%-kjv-default"]).induction
    assert (default.optimizer, default.target, default.validation_fraction) == ("adam", "global", 0.0)
    damped_local = runner.row_config(study.protocol, rows["wanda-50%-kjv-damped-local"]).induction
    assert (damped_local.optimizer, damped_local.target) == ("damped-adam", "local")


# ------------------------------------------------------------------------------------------------ spec checks


@pytest.mark.parametrize("spec, message", [
    (_spec(_row("a", None), _row("a", None)), "used twice"),
    (_spec(_row("a b", None)), "key of letters"),
    (_spec({**_row("a", None), "extra": 1}), "unknown field"),
    (_spec({"key": "a", "label": "a"}), "no recipe"),
    (_spec(_row("a", {"method": "wanda", "induction": True, "induction_lr": 0.1})), "nested format-2"),
    (_spec(_row("a", {"method": "wanda", "num_samples": 8})), "protocol's calibration"),
    (_spec(_row("a", {"method": "obc"})), "obc"),
    (_spec({**_row("a", None), "tags": {"ppl": 1}}), "not record fields"),
    (_spec(_row("a", {"method": "wanda"}, calibration=None)), "needs calibration data"),
    (_spec(_row("a", None, evaluation=["wikitext"])), "evaluation must name corpora"),
    (_spec(_row("a", None), threads=0), "threads must be a positive integer"),
    (_spec(_row("a", None, long_windows=4)), "long_windows must be an integer above the protocol's 4"),
    (_spec(_row("a", None, long_windows=True)), "long_windows must be an integer"),
    (_spec({**_row("a", None), "seed": "1"}), "seed must be an integer"),
    (_spec(_row("a", None), evaluation={"corpora": ["jargon"], "region": "whole", "windows": 4, "seqlen": 8}),
     "region must be 'evaluation'"),
    ({"rows": []}, "'protocol' object"),
    (_spec(), "no rows"),
])
def test_bad_specs_are_refused_with_the_reason(tmp_path, spec, message):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "study.json").write_text(json.dumps(spec))
    with pytest.raises(runner.StudyError, match=message):
        runner.load_study("bad", tmp_path)


def test_a_data_free_row_may_calibrate_on_nothing(tmp_path):
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "study.json").write_text(json.dumps(_spec(_row("m", {"method": "magnitude"}, calibration=None))))
    assert runner.load_study("ok", tmp_path).rows[0]["calibration"] is None


def test_unknown_study_and_unknown_only_key_are_usage_errors(studies, capsys):
    assert runner.main(["nothing", "--dry-run"]) == 2
    assert "no study 'nothing'" in capsys.readouterr().err and "toy" in runner.available_studies(studies)
    assert runner.main(["toy", "--only", "ria", "--dry-run"]) == 2
    assert "has no row 'ria'; its keys: dense, magnitude, wanda" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ running


def test_dry_run_lists_the_rows_and_runs_nothing(studies, capsys, monkeypatch):
    monkeypatch.setattr(runner.subprocess, "run", lambda *a, **k: pytest.fail("a dry run started a process"))
    assert runner.main(["toy", "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[:3] == ["dense      row dense", "magnitude  row magnitude", "wanda      row wanda"]
    assert lines[3] == "3 row(s) would run; results.json would start afresh (0 record(s) now; --update keeps them)."
    (studies / "toy" / "results.json").write_text(json.dumps([_record(_toy_rows()[1], 500.0)]))
    assert runner.main(["toy", "--skip-done", "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines[:-1]] == ["dense", "wanda"]
    assert lines[-1] == "2 row(s) would run; results.json keeps 1 other record(s)."
    assert not (studies / "toy" / "results.md").exists()


def test_each_row_runs_in_its_own_process_and_the_results_are_written_after_it(studies, monkeypatch, capsys):
    fake = FakeRows({"dense": 40.0, "wanda": 300.0})  # the magnitude row's process fails
    monkeypatch.setattr(runner.subprocess, "run", fake)
    assert runner.main(["toy"]) == 1  # a failed row: reported, the others kept, exit status 1
    out = capsys.readouterr().out
    assert "magnitude: FAILED: ValueError: refused" in out and "wanda: ppl 300.00, prune 1.0 s, peak RSS 900 MB" in out
    assert [p["row"]["key"] for p in fake.payloads] == ["dense", "magnitude", "wanda"]
    assert fake.payloads[0]["protocol"] == runner.load_study("toy").protocol and set(fake.threads) == {"1"}
    records = json.loads((studies / "toy" / "results.json").read_text())
    assert [(r["key"], r["ppl"]) for r in records] == [("dense", 40.0), ("wanda", 300.0)]
    assert "| row wanda | 300.00 | 1.0 | 900 |" in (studies / "toy" / "results.md").read_text()
    assert not [p for p in (studies / "toy").iterdir() if p.name.endswith(".tmp")]


def test_skip_done_runs_only_missing_rows_and_update_replaces_in_place(studies, monkeypatch):
    (studies / "toy" / "results.json").write_text(json.dumps([_record(r, 1.0) for r in _toy_rows()[:2]]))
    fake = FakeRows({"magnitude": 500.0, "wanda": 300.0})
    monkeypatch.setattr(runner.subprocess, "run", fake)
    assert runner.main(["toy", "--skip-done"]) == 0
    assert [p["row"]["key"] for p in fake.payloads] == ["wanda"]
    assert runner.main(["toy", "--only", "magnitude", "--update"]) == 0
    records = json.loads((studies / "toy" / "results.json").read_text())
    assert [(r["key"], r["ppl"]) for r in records] == [("dense", 1.0), ("magnitude", 500.0), ("wanda", 300.0)]
    # Without --update or --skip-done the run starts the results afresh.
    assert runner.main(["toy", "--only", "wanda"]) == 0
    assert [r["key"] for r in json.loads((studies / "toy" / "results.json").read_text())] == ["wanda"]


def test_threads_overrides_the_studys_thread_count(studies, monkeypatch, capsys):
    fake = FakeRows({"dense": 40.0})
    monkeypatch.setattr(runner.subprocess, "run", fake)
    assert runner.main(["toy", "--only", "dense", "--threads", "2"]) == 0
    assert fake.threads == ["2"] and fake.payloads[0]["protocol"]["threads"] == 2
    assert runner.load_study("toy").protocol["threads"] == 1  # the spec itself is unchanged
    with pytest.raises(SystemExit):
        runner.main(["toy", "--threads", "0"])
    assert "expected a positive integer, got '0'" in capsys.readouterr().err


def test_two_runs_of_one_study_keep_each_others_records(studies, monkeypatch):
    """With --update, the results file is read again before each write: a record another run wrote meanwhile
    stays."""
    toy = studies / "toy" / "results.json"
    toy.write_text(json.dumps([_record(_toy_rows()[0], 40.0)]))
    fake = FakeRows({"wanda": 300.0})

    def other_run_writes_first(cmd, **kwargs):
        toy.write_text(json.dumps(json.loads(toy.read_text()) + [_record(_toy_rows()[1], 500.0)]))
        return fake(cmd, **kwargs)

    monkeypatch.setattr(runner.subprocess, "run", other_run_writes_first)
    assert runner.main(["toy", "--only", "wanda", "--update"]) == 0
    records = json.loads(toy.read_text())
    assert [(r["key"], r["ppl"]) for r in records] == [("dense", 40.0), ("magnitude", 500.0), ("wanda", 300.0)]


def test_render_rewrites_only_the_markdown(studies, monkeypatch):
    from benchmarks import update_readme

    monkeypatch.setattr(runner.subprocess, "run", lambda *a, **k: pytest.fail("--render started a process"))
    documents = []
    monkeypatch.setattr(update_readme, "main", lambda argv: documents.append(argv) or [])
    records = [_record(_toy_rows()[0], 39.5), {**_record(_toy_rows()[2], 1.0), "ppl": {"jargon": 1.5, "kjv": 2.5}}]
    (studies / "toy" / "results.json").write_text(json.dumps(records))
    assert runner.main(["toy", "--render"]) == 0
    assert documents == [[]]  # then the tables of README.md and docs/ (their default set)
    table = (studies / "toy" / "results.md").read_text()
    assert "| row dense | 39.50 | 1.0 | 900 |" in table and "| row wanda | jargon=1.50 kjv=2.50 | 1.0 | 900 |" in table
    assert json.loads((studies / "toy" / "results.json").read_text()) == records


def test_a_results_file_that_is_not_a_list_of_records_is_refused(studies, capsys):
    (studies / "toy" / "results.json").write_text(json.dumps({"records": []}))
    assert runner.main(["toy", "--render"]) == 2
    assert "must be a list of records" in capsys.readouterr().err


def test_write_spec_writes_what_the_spec_module_builds(tmp_path, monkeypatch):
    (tmp_path / "quality").mkdir()
    monkeypatch.setattr(runner, "STUDIES_DIR", tmp_path)
    assert runner.main(["quality", "--write-spec"]) == 0
    assert json.loads((tmp_path / "quality" / "study.json").read_text()) == runner.load_study("quality", tmp_path).spec
    assert runner.load_study("quality", tmp_path).spec == runner.load_study("quality").spec


@pytest.mark.parametrize("name", [p.parent.name for p in sorted(runner.STUDIES_DIR.glob("*/spec.py"))])
def test_every_committed_study_json_is_what_its_spec_module_builds(name):
    # The runner reads study.json: a spec.py edited without --write-spec would run the old rows.
    module = importlib.import_module(f"benchmarks.studies.{name}.spec")
    assert runner.load_study(name).spec == json.loads(json.dumps(module.study())), \
        f"run `python -m benchmarks.runner {name} --write-spec`"


# ------------------------------------------------------------------------------------------------ the study renderers


def _quality_record(method: str, pattern: str, induction: bool, ppl: float, **changes) -> dict:
    return {"key": f"{method}-{pattern}", "method": method, "pattern": pattern, "induction": induction, "ppl": ppl,
            "prune_s": 5.0, "eval_s": 60.0, "peak_rss_mb": 1300.0, "samples": 32, "seqlen": 512, "seed": 0,
            "eval": "jargon first 40 x 512", "torch": "2.x", "threads": 2, "corpora_match_reference": True, **changes}


def test_quality_table_gives_the_reference_and_the_2_percent_verdict():
    from benchmarks.studies.quality.render import render

    table = render(None, [_quality_record("wanda", "50%", False, 95.5), _quality_record("wanda", "2:4", False, 400.0),
                          _quality_record("wanda", "4:8", False, 166.0), _quality_record("wanda", "50%", True, 88.0),
                          _quality_record("sparsegpt", "50%", False, 89.0, eval="jargon first 20 x 512")])
    assert "| wanda | 50% | no | 95.50 | 95.18 / 95.22 | yes | 5.0 | 60.0 | 1300 |" in table
    assert "| wanda | 2:4 | no | 400.00 | 333.89 / 337.06 | **no** |" in table
    assert "| wanda | 4:8 | no | 166.00 | – | – |" in table and "| wanda | 50% | yes | 88.00 | – | – |" in table
    assert "| sparsegpt | 50% | no | 89.00 | 88.88 / 89.85 | – |" in table  # other windows: no verdict
    assert "evaluation jargon first 40 x 512 Jargon tokens; torch 2.x, 2 threads" in table


def test_cross_domain_grid_from_records():
    from benchmarks.studies.cross_domain.render import readme_grid, render

    def record(calibration: str, variant: str, scale: float, **extra) -> dict:
        return {"key": f"wanda-50%-{calibration}-{variant}", "method": "wanda", "pattern": "50%",
                "calibration": calibration, "variant": variant, "ppl": {d: 10.0 * scale for d in protocol.DOMAINS},
                "samples": 32, "seqlen": 512, "seed": 0, "eval_windows": 20, "eval_seqlen": 512, **extra}

    records = [record(c, "none", 1.0) for c in protocol.DOMAINS]
    records += [record("pydocs", "default", 0.9, recipe={"induction": True}),
                record("kjv", "local", 0.99, extra={"induction_target": "local"}),
                record("jargon", "noval", 0.95, recipe={"induction": {"validation_fraction": 0.0}})]
    table = render(None, records)
    assert "**SI variant `default`** (defaults)" in table
    assert '**SI variant `local`** ({"induction_target": "local"})' in table  # recorded by the earlier script
    assert '**SI variant `noval`** ({"validation_fraction": 0.0})' in table
    assert "| wanda | 50% | 0.900 (10.0 → 9.0) | 0.900 (10.0 → 9.0) | 0.900 (10.0 → 9.0) | – |" in table
    assert "| 0.990 (10.0 → 9.9) | 0.990 (misses ≤ 0.98; 2 of 6 cells) |" in table
    grid = readme_grid(records)
    assert "0.900 (partial: 2 of 6 cells)" in grid and "`local`" not in grid
    assert grid.endswith("first 20 x 512 tokens of each evaluation region (disjoint from every calibration region); "
                         "one process per run. Corpora: the reference texts.")


# ------------------------------------------------------------------------------------------------ one row, in process


@pytest.fixture
def tiny_protocol(monkeypatch):
    """The protocol's model and windows replaced by a tiny Llama and random token ids."""
    from tests import assets
    from tests.conftest import tiny_model, token_ids

    corpora_seen = []
    monkeypatch.setattr(protocol, "load_model_and_tokenizer", lambda: (tiny_model("llama"), None))
    monkeypatch.setattr(protocol, "domain_calibration_ids",
                        lambda _tok, corpus, samples, seqlen, seed: corpora_seen.append(corpus) or token_ids(samples, seqlen))
    monkeypatch.setattr(protocol, "domain_eval_ids", lambda _tok, corpus: token_ids(1, 64, seed=len(corpus)))
    monkeypatch.setattr(assets, "corpora_match_reference", lambda: True)
    spec = protocol.study_protocol(evaluation=("jargon", "kjv"), eval_windows=2)
    spec["calibration"].update(samples=4, seqlen=32)
    spec["evaluation"]["seqlen"] = 32
    return spec, corpora_seen


def test_one_row_prunes_and_scores_in_process(tiny_protocol):
    spec, corpora_seen = tiny_protocol
    row = {"key": "wanda-si", "label": "SI + Wanda", "tags": {"method": "wanda", "induction": True},
           "calibration": "kjv", "recipe": {"method": "wanda", **pattern_fields("50%"), "induction": True}}
    record = runner.run_row(spec, row)
    assert corpora_seen == ["kjv"] and record["calibration"] == "kjv"
    assert (record["key"], record["method"], record["induction"]) == ("wanda-si", "wanda", True)
    assert set(record["ppl"]) == {"jargon", "kjv"} and all(v > 1 for v in record["ppl"].values())
    assert record["sparsity"] == pytest.approx(0.5) and record["blocks"] == 2 and "induction_seconds" in record
    assert record["recipe"] == row["recipe"] and record["config"]["induction"]["validation_fraction"] == 0.25
    assert "meta" not in record["config"] and (record["samples"], record["eval"]) == (4, "jargon+kjv first 2 x 32")
    assert set(record) <= runner.RECORD_FIELDS | set(row["tags"])
    # What the published model cards draw their SI section and chart from (benchmarks/render_cards.py).
    blocks = record["block_records"]
    assert [b["index"] for b in blocks] == [0, 1] and all(b["output_error"] > 0 for b in blocks)
    assert all({"kept", "validation_loss_base", "relative_error_base"} <= set(b["induction"]) for b in blocks)
    json.dumps(record)  # a record is plain JSON


def test_long_windows_add_a_longer_score_and_keep_the_protocols_own(tiny_protocol, monkeypatch):
    from optimum_si.evaluation import perplexity
    from tests.conftest import tiny_model, token_ids

    spec, _ = tiny_protocol
    spec["evaluation"]["corpora"] = ["jargon"]
    ids = token_ids(1, 32 * 5, seed=3).reshape(-1)
    monkeypatch.setattr(protocol, "domain_eval_ids", lambda _tok, corpus: ids)
    record = runner.run_row(spec, {"key": "dense", "label": "dense", "recipe": None, "long_windows": 4})
    model = tiny_model("llama")
    assert record["ppl"] == perplexity(model, ids, seqlen=32, max_windows=2)  # bit for bit
    assert record["long_eval"]["windows"] == 4
    assert record["long_eval"]["ppl"] == pytest.approx(perplexity(model, ids, seqlen=32, max_windows=4), rel=1e-12)
    assert record["long_eval"]["ppl"] != pytest.approx(record["ppl"], rel=1e-6)  # the other windows were scored
    assert "long_eval" not in runner.run_row(spec, {"key": "dense", "label": "dense", "recipe": None})


def test_dense_and_data_free_rows_read_no_calibration_windows(tiny_protocol):
    spec, corpora_seen = tiny_protocol
    spec["evaluation"]["corpora"] = ["jargon"]
    dense = runner.run_row(spec, {"key": "dense", "label": "dense", "recipe": None})
    magnitude = runner.run_row(spec, {"key": "m", "label": "magnitude", "recipe": {"method": "magnitude"}})
    assert corpora_seen == [] and dense["calibration"] == magnitude["calibration"] == "-"
    assert isinstance(dense["ppl"], float) and "prune_s" not in dense and "config" not in dense
    assert "induction_seconds" not in magnitude and magnitude["sparsity"] == pytest.approx(0.5)


def test_a_row_with_its_own_seed_calibrates_and_records_with_it(tiny_protocol, monkeypatch):
    from tests.conftest import token_ids

    spec, _ = tiny_protocol
    seeds = []
    monkeypatch.setattr(protocol, "domain_calibration_ids",
                        lambda _tok, corpus, samples, seqlen, seed: seeds.append(seed) or token_ids(samples, seqlen))
    row = {"key": "w", "label": "w", "calibration": "kjv", "seed": 3, "recipe": {"method": "wanda"}}
    record = runner.run_row(spec, row)
    assert seeds == [3] and record["seed"] == 3 and record["config"]["seed"] == 3
    runner.run_row(spec, {k: v for k, v in row.items() if k != "seed"})
    assert seeds == [3, spec["calibration"]["seed"]]
