"""benchmarks/alps_smollm2.py without the real model: argument handling, the job list, the commands a run would
start, and the tables and issue-12 targets it writes from records."""

from __future__ import annotations

import json
import sys

import pytest

from benchmarks import alps_smollm2 as bench


def _record(method: str, pattern: str, induction: bool, ppl: float) -> dict:
    return {"method": method, "pattern": pattern, "induction": induction, "ppl": ppl, "sparsity": 0.5,
            "prune_s": 1.0, "eval_s": 2.0, "peak_rss_mb": 900.0, "samples": 32, "seqlen": 512, "seed": 0,
            "eval": "jargon first 40 x 512", "torch": "2.x", "threads": 1}


def test_defaults_are_alps_and_sparsegpt_at_50_and_70():
    args = bench.parse_args([])
    assert args.methods == ["alps", "sparsegpt"] and args.patterns == ["50%", "70%"] and args.induction == "no"
    assert bench.jobs(args) == [("alps", "50%", False), ("sparsegpt", "50%", False),
                                ("alps", "70%", False), ("sparsegpt", "70%", False)]
    assert bench.PATTERNS["70%"] == (0.7, "unstructured") and bench.PATTERNS["2:4"] == (None, "2:4")


def test_induction_both_runs_plain_before_si():
    args = bench.parse_args(["--methods", "alps", "--patterns", "70%", "--induction", "both"])
    assert bench.jobs(args) == [("alps", "70%", False), ("alps", "70%", True)]


@pytest.mark.parametrize("argv", [["--methods", "wanda"], ["--patterns", "55%"], ["--induction", "maybe"],
                                  ["--eval-windows", "0"], ["--one", "alps", "70%", "yes"],
                                  ["--one", "magnitude", "50%", "0"]])
def test_bad_arguments_exit_with_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(argv)
    assert exit_info.value.code == 2 and "usage" in capsys.readouterr().err


def test_dry_run_prints_one_subprocess_command_per_row_and_runs_nothing(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "RESULTS_DIR", str(tmp_path))
    monkeypatch.setattr(bench.subprocess, "run", lambda *a, **k: pytest.fail("a dry run started a process"))
    bench.main(["--patterns", "70%", "--induction", "both", "--eval-windows", "4", "--dry-run"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and not list(tmp_path.iterdir())
    assert lines[0] == f"{sys.executable} -m benchmarks.alps_smollm2 --one alps 70% 0 --eval-windows 4"
    assert lines[3].endswith("--one sparsegpt 70% 1 --eval-windows 4")


def test_rows_are_written_after_each_run_and_update_keeps_other_rows(monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "RESULTS_DIR", str(tmp_path))
    ppl = {("alps", "50%"): 80.0, ("sparsegpt", "50%"): 88.0, ("alps", "70%"): 300.0, ("sparsegpt", "70%"): 400.0}

    class Done:
        def __init__(self, cmd):
            method, pattern, induction = cmd[cmd.index("--one") + 1:cmd.index("--one") + 4]
            self.stdout = json.dumps(_record(method, pattern, induction == "1", ppl[(method, pattern)]))

    monkeypatch.setattr(bench.subprocess, "run", lambda cmd, **kwargs: Done(cmd))
    bench.main([])
    saved = json.loads((tmp_path / "alps_smollm2.json").read_text())
    assert [(r["method"], r["pattern"]) for r in saved["records"]] == list(ppl)
    assert [t["met"] for t in saved["targets"]] == [True, True, None]  # 80/88; 300/400 = 0.75; no SI row yet
    assert saved["targets"][1]["ratio"] == pytest.approx(0.75)
    # --update reruns only the SI row and keeps the rest; SI at 310 misses "SI + ALPS 70 % <= ALPS 70 %".
    ppl[("alps", "70%")] = 310.0
    bench.main(["--methods", "alps", "--patterns", "70%", "--induction", "yes", "--update"])
    saved = json.loads((tmp_path / "alps_smollm2.json").read_text())
    assert len(saved["records"]) == 5 and saved["records"][2]["ppl"] == 300.0
    assert [t["met"] for t in saved["targets"]] == [True, True, False]
    table = (tmp_path / "alps_smollm2.md").read_text()
    assert "| SI + ALPS 70 % <= ALPS 70 % | 1.033 | 1.00 | **no** |" in table
    assert "| alps | 70% | yes | 310.00 |" in table


def test_markdown_says_not_run_for_missing_rows():
    table = bench.markdown([_record("alps", "50%", False, 80.0)])
    assert table.count("not run") == 3
