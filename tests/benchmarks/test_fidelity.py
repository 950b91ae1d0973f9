"""benchmarks/fidelity.py without the authors' code or a real model: argument handling, the clone command it names
when the authors' code is missing, and the table it builds from saved records."""

from __future__ import annotations

import json

import pytest

from benchmarks import fidelity


def _usage_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        fidelity.parse_args(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "usage" in err
    return err


def test_library_side_needs_no_authors_code():
    args = fidelity.parse_args(["--method", "alps", "--pattern", "70%", "--side", "library", "--set",
                                "method_args.pcg_rtol=0"])
    assert (args.method, args.pattern, args.side, args.eval_windows) == ("alps", "70%", "library", 20)
    assert args.set == ["method_args.pcg_rtol=0"]


def test_set_reaches_into_nested_configs():
    from optimum_si import SIConfig

    fields = fidelity.recipe_fields("owl", ["profile_args.lam=0.1", "ignore=[\"*.o_proj\"]"])
    assert fields == {"method": "wanda", "sparsity_profile": "owl", "profile_args": {"lam": 0.1}, "ignore": ["*.o_proj"]}
    assert SIConfig(**fields).profile_args.lam == 0.1
    config = SIConfig(**fidelity.recipe_fields("alps", ["method_args.pcg_rtol=0", "method_args.max_iter=50"]))
    assert (config.method_args.pcg_rtol, config.method_args.max_iter) == (0, 50)
    assert fidelity.LIBRARY["alps"] == {"method": "alps"}  # the table of methods is never changed


def test_reference_side_with_the_repository_present(tmp_path):
    (tmp_path / "Z-Pruner").mkdir()
    args = fidelity.parse_args(["--authors-code", str(tmp_path), "--method", "zpruner", "--pattern", "2:4",
                                "--side", "reference", "--eval-windows", "2"])
    assert args.authors_code == str(tmp_path) and args.eval_windows == 2


@pytest.mark.parametrize("argv", [
    ["--method", "obc", "--pattern", "50%", "--side", "library"],
    ["--method", "ria", "--pattern", "60%", "--side", "library"],
    ["--method", "ria", "--pattern", "50%", "--side", "both"],
    ["--method", "ria", "--pattern", "50%"],
    ["--method", "owl", "--pattern", "2:4", "--side", "library"],
    ["--method", "ria", "--pattern", "50%", "--side", "library", "--eval-windows", "-1"],
    ["--method", "ria", "--pattern", "50%", "--side", "library", "--set", "ria_a"],
])
def test_bad_arguments_exit_with_a_usage_error(argv, capsys):
    _usage_error(argv, capsys)


@pytest.mark.parametrize("method", list(fidelity.AUTHORS))
def test_missing_authors_code_names_the_clone_command(method, tmp_path, capsys):
    owner, repo, commit = fidelity.AUTHORS[method]
    err = _usage_error(["--authors-code", str(tmp_path), "--method", method, "--pattern", "50%",
                        "--side", "reference"], capsys)
    target = tmp_path / repo
    assert f"git clone https://github.com/{owner}/{repo} {target} && git -C {target} checkout {commit}" in err
    err = _usage_error(["--method", method, "--pattern", "50%", "--side", "reference"], capsys)
    assert "--authors-code" in err and f"git clone https://github.com/{owner}/{repo}" in err


def test_table_pairs_reference_and_library_records(tmp_path, capsys):
    def record(side, ppl, **extra):
        return {"side": side, "method": "alps", "pattern": "50%", "eval_windows": 20, "ppl": ppl, "prune_s": 10.0,
                "attn_implementation": "sdpa", **extra}

    # what a run's stdout holds when redirected to a file: the record on its last line
    for name, rec in {"ref": record("reference", 100.0), "lib": record("library", 101.0, set=[]),
                      "cg": record("library", 103.0, set=["alps_pcg_rtol=0"]),
                      "prune_only": {**record("library", None), "eval_windows": 0}}.items():
        (tmp_path / f"{name}.json").write_text("\n" + json.dumps(rec) + "\n")
    fidelity.main(["--table", str(tmp_path)])
    rows = capsys.readouterr().out.strip().splitlines()[2:]
    assert len(rows) == 2
    assert rows[0].startswith("| alps | 50% | 20 | 100.00 | 101.00 | 1.0100 | yes | 10 / 10 | – |")
    assert rows[1].startswith("| alps (library alps_pcg_rtol=0) | 50% | 20 | 100.00 | 103.00 | 1.0300 | no |")
