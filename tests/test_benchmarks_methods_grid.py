"""benchmarks/methods_grid.py without the real model: argument handling, the job list and its order, the commands a
run would start, and the tables and issue-12 targets it writes from records."""

from __future__ import annotations

import json
import sys

import pytest

from benchmarks import methods_grid as bench


def _record(method: str, pattern: str, induction: bool, ppl: float) -> dict:
    return {"method": method, "pattern": pattern, "induction": induction, "ppl": ppl, "sparsity": 0.5,
            "prune_s": 1.0, "eval_s": 2.0, "peak_rss_mb": 900.0, "samples": 32, "seqlen": 512, "seed": 0,
            "eval": "jargon first 20 x 512", "torch": "2.x", "threads": 1}


def test_default_grid_is_every_method_and_pattern_with_and_without_si_except_owl_nm():
    args = bench.parse_args([])
    planned = bench.jobs(args)
    assert len(planned) == 2 * (7 * 6 - 2) and len(set(planned)) == len(planned)
    assert ("owl-wanda", "2:4", False) not in planned and ("owl-wanda", "80%", True) in planned
    assert bench.PATTERNS["70%"] == (0.7, "unstructured") and bench.PATTERNS["2:4"] == (None, "2:4")
    assert args.eval_windows == bench.DEFAULT_EVAL_WINDOWS


def test_run_order_targets_first_then_every_method_at_50_and_70_then_the_rest():
    planned = bench.jobs(bench.parse_args([]))
    compared = {row for _, top, bottom, _ in bench.TARGETS for row in (top, bottom)}
    first = planned[:len(compared)]
    assert set(first) == compared
    assert [job[2] for job in first] == sorted(job[2] for job in first)  # plain rows before SI rows
    middle = planned[len(compared):len(compared) + 2 * 7 * 2 - len([j for j in compared if j[1] in ("50%", "70%")])]
    assert {job[1] for job in middle} == {"50%", "70%"}
    assert middle[0] == ("magnitude", "50%", False) and ("magnitude", "50%", True) in middle
    rest = planned[len(compared) + len(middle):]
    assert all(job[1] not in ("50%", "70%") for job in rest) and rest[-1][2] and not rest[0][2]


def test_induction_choice_and_method_subset():
    args = bench.parse_args(["--methods", "alps", "--patterns", "70%", "2:4", "--induction", "yes"])
    assert bench.jobs(args) == [("alps", "70%", True), ("alps", "2:4", True)]


@pytest.mark.parametrize("argv", [["--methods", "obc"], ["--patterns", "55%"], ["--induction", "maybe"],
                                  ["--eval-windows", "0"], ["--one", "alps", "70%", "yes"],
                                  ["--one", "owl", "50%", "0"]])
def test_bad_arguments_exit_with_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(argv)
    assert exit_info.value.code == 2 and "usage" in capsys.readouterr().err


def test_dry_run_prints_one_subprocess_command_per_row_and_runs_nothing(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "RESULTS_DIR", str(tmp_path))
    monkeypatch.setattr(bench.subprocess, "run", lambda *a, **k: pytest.fail("a dry run started a process"))
    bench.main(["--methods", "alps", "sparsegpt", "--patterns", "70%", "--eval-windows", "4", "--dry-run"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and not list(tmp_path.iterdir())
    assert lines[0] == f"{sys.executable} -m benchmarks.methods_grid --one alps 70% 0 --eval-windows 4"
    assert lines[3].endswith("--one sparsegpt 70% 1 --eval-windows 4")
    # With --update --skip-done it lists only the rows the results file lacks.
    (tmp_path / "methods_grid.json").write_text(json.dumps({"records": [_record("alps", "70%", False, 9.0)]}))
    bench.main(["--methods", "alps", "--patterns", "70%", "--update", "--skip-done", "--dry-run"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith("--one alps 70% 1 --eval-windows 20")


class _Done:
    def __init__(self, ppl: dict, cmd: list[str]) -> None:
        method, pattern, induction = cmd[cmd.index("--one") + 1:cmd.index("--one") + 4]
        self.returncode, self.stderr = 0, ""
        if (method, pattern, induction) not in ppl:
            self.returncode, self.stderr, self.stdout = 1, "Traceback ...\nValueError: refused", ""
        else:
            self.stdout = json.dumps(_record(method, pattern, induction == "1", ppl[(method, pattern, induction)]))


def test_rows_are_written_after_each_run_a_failed_row_is_skipped_and_update_keeps_other_rows(monkeypatch, tmp_path,
                                                                                           capsys):
    monkeypatch.setattr(bench, "RESULTS_DIR", str(tmp_path))
    ppl = {("alps", "50%", "0"): 80.0, ("sparsegpt", "50%", "0"): 88.0, ("alps", "70%", "0"): 300.0,
           ("sparsegpt", "70%", "0"): 400.0, ("sparsegpt", "70%", "1"): 380.0}
    monkeypatch.setattr(bench.subprocess, "run", lambda cmd, **kwargs: _Done(ppl, cmd))
    bench.main(["--methods", "alps", "sparsegpt", "--patterns", "50%", "70%"])
    assert "alps      70%  SI=True  FAILED: ValueError: refused" in capsys.readouterr().out
    saved = json.loads((tmp_path / "methods_grid.json").read_text())
    assert len(saved["records"]) == 5
    met = {t["target"]: t["met"] for t in saved["targets"]}
    assert met["ALPS 50 % <= SparseGPT 50 %"] is True and met["ALPS 70 % <= 0.85 x SparseGPT 70 %"] is True
    assert met["SI + ALPS 70 % <= ALPS 70 %"] is None
    # --update --skip-done runs only the missing SI rows; SI + ALPS at 310 misses its target.
    ppl[("alps", "70%", "1")] = 310.0
    ppl[("alps", "50%", "1")] = 79.0
    monkeypatch.setattr(bench.subprocess, "run", lambda cmd, **kwargs: _Done(ppl, cmd) if cmd[-3] == "1"
                        else pytest.fail(f"reran a finished row {cmd}"))
    bench.main(["--methods", "alps", "sparsegpt", "--patterns", "50%", "70%", "--update", "--skip-done"])
    saved = json.loads((tmp_path / "methods_grid.json").read_text())
    assert len(saved["records"]) == 7
    met = {t["target"]: t["met"] for t in saved["targets"]}
    assert met["SI + ALPS 70 % <= ALPS 70 %"] is False
    table = (tmp_path / "methods_grid.md").read_text()
    assert "| SI + ALPS 70 % <= ALPS 70 % | 1.033 | 1.00 | **no** |" in table
    assert "| alps | yes | 79.00 (1 s) | 310.00 (1 s) | 900 |" in table
    assert "| sparsegpt | 1.000 | 0.950 |" not in table and "| sparsegpt | – | 0.950 |" in table


def test_markdown_says_not_run_for_missing_rows():
    table = bench.markdown([_record("alps", "50%", False, 80.0)])
    assert table.count("not run") == len(bench.TARGETS)
