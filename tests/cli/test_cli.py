import json

import pytest

from optimum_si.cli import build_parser, main


def test_flags_are_generated_from_the_config():
    help_text = build_parser()._subparsers._group_actions[0].choices["prune"].format_help()
    for flag in ("--mask-structure", "--dampening-frac", "--induction-epochs", "--no-induction", "--ignore"):
        assert flag in help_text


def test_prune_eval_report_end_to_end(dense_dir, tmp_path, capsys):
    path, text = dense_dir
    out = tmp_path / "out"
    assert main(["prune", "--model", str(path), "--method", "wanda", "--mask-structure", "2:4", "--dataset", str(text),
                 "--num-samples", "4", "--seqlen", "32", "--output", str(out), "--no-show-progress"]) == 0
    recipe = json.loads((out / "si_config.json").read_text())
    assert recipe["mask_structure"] == "2:4" and recipe["num_samples"] == 4
    assert main(["eval", "--model", str(out), "--text", str(text), "--seqlen", "32", "--max-windows", "2"]) == 0
    assert main(["report", str(out)]) == 0
    output = capsys.readouterr().out
    assert "perplexity" in output and "overall sparsity 0.5000" in output and "2:4: every pruned module" in output


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--mask-structure", "2-4"], "with a colon"),
        (["--sparsity", "1.5"], "sparsity must be in"),
        (["--dataset", "/no/such/file"], "is not a file"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(dense_dir, tmp_path, capsys, argv, message):
    path, _ = dense_dir
    code = main(["prune", "--model", str(path), "--output", str(tmp_path / "x"), "--method", "wanda", *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_missing_model_exits_2(tmp_path, capsys):
    assert main(["eval", "--model", str(tmp_path / "missing"), "--text", __file__]) == 2
    assert "no such folder, and not a Hub repo id" in capsys.readouterr().err


def _optimum_cli() -> list[str]:
    """The `optimum-cli` script of this interpreter's environment (the console script users run)."""
    import os
    import sys

    script = os.path.join(os.path.dirname(sys.executable), "optimum-cli")
    return [script] if os.path.isfile(script) else [sys.executable, "-m", "optimum.commands.optimum_cli"]


def test_optimum_cli_si_is_registered(tmp_path):
    """`optimum-cli si` reaches optimum-si's parser; fails when the optimum.commands.register module is missing."""
    import os
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)  # found through the installed package, not the source tree
    done = subprocess.run([*_optimum_cli(), "si", "--help"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "usage: optimum-cli si" in done.stdout and "{prune,eval,report}" in done.stdout
    done = subprocess.run([*_optimum_cli(), "si", "report", str(tmp_path / "missing")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    missing = repr(str(tmp_path / "missing"))
    assert done.returncode == 2 and done.stderr.strip() == f"optimum-cli si report: error: {missing} is not a folder."


def _run_optimum_cli(monkeypatch, *argv: str) -> int:
    from optimum.commands import optimum_cli

    monkeypatch.setattr("sys.argv", ["optimum-cli", "si", *argv])
    with pytest.raises(SystemExit) as exit_info:
        optimum_cli.main()
    return exit_info.value.code


def test_optimum_cli_si_runs_our_commands_with_the_same_flags(dense_dir, tmp_path, monkeypatch, capsys):
    from optimum.commands.base import BaseOptimumCLICommand
    from optimum.commands.register import register_optimum_si

    (command,) = register_optimum_si.REGISTER_COMMANDS
    assert issubclass(command, BaseOptimumCLICommand) and command.COMMAND.name == "si"
    path, text = dense_dir
    out = tmp_path / "out"
    assert _run_optimum_cli(monkeypatch, "-v", "prune", "--model", str(path), "--method", "magnitude",
                            "--mask-structure", "4:8", "--output", str(out), "--no-show-progress") == 0
    assert json.loads((out / "si_config.json").read_text())["mask_structure"] == "4:8"
    assert _run_optimum_cli(monkeypatch, "report", str(out)) == 0
    assert "4:8: every pruned module follows it" in capsys.readouterr().out
    # Mistakes: one line, exit status 2, named after the command the user typed.
    assert _run_optimum_cli(monkeypatch, "prune", "--model", str(path), "--output", str(tmp_path / "x"),
                            "--sparsity", "1.5") == 2
    err = capsys.readouterr().err
    assert err.startswith("optimum-cli si prune: error:") and len(err.strip().splitlines()) == 1
    assert _run_optimum_cli(monkeypatch, "prune", "--no-such-flag") == 2  # argparse: usage + error, status 2
    assert "optimum-cli si prune" in capsys.readouterr().err


def _prune_parser():
    return build_parser()._subparsers._group_actions[0].choices["prune"]


def test_prune_help_is_grouped_and_reads_in_flags():
    parser = _prune_parser()
    groups = {group.title: [a.option_strings[0] for a in group._group_actions] for group in parser._action_groups}
    assert list(groups) == ["positional arguments", "options", "model", "recipe", "calibration", "what is pruned",
                            "method knobs: SparseGPT", "method knobs: RIA", "method knobs: Z-Pruner",
                            "method knobs: ALPS", "Sparsity Induction (SI)", "OWL allocation",
                            "Reconstruction of the kept weights", "run options", "output"]
    assert groups["recipe"][:3] == ["--recipe", "--method", "--sparsity"]
    assert groups["calibration"][0] == "--dataset" and "--num-samples" in groups["calibration"]
    assert groups["Sparsity Induction (SI)"][:2] == ["--induction", "--induction-epochs"]
    assert groups["OWL allocation"] == ["--owl-m", "--owl-lambda"]
    assert groups["Reconstruction of the kept weights"][:2] == ["--reconstruction", "--reconstruction-mode"]
    assert groups["run options"][0] == "--stream" and "--device" in groups["run options"]
    assert groups["output"][:2] == ["--output", "--overwrite"]
    assert all(flag.startswith("--alps-") for flag in groups["method knobs: ALPS"])
    text = " ".join(parser.format_help().split())
    assert "in-memory" not in text and "`" not in text  # Python names in backticks read as flags
    lr = next(a for a in parser._actions if a.dest == "induction__lr")
    assert "Adam" not in lr.help and "--induction-optimizer" in lr.help and lr.metavar == "LR"
    assert "--activation-storage 'disk'" in text and "INDUCTION__" not in text


def test_the_last_line_says_what_ran_and_where_it_went(dense_dir, tmp_path, capsys):
    path, text = dense_dir
    common = ["--model", str(path), "--dataset", str(text), "--num-samples", "4", "--seqlen", "16",
              "--no-show-progress"]
    out = tmp_path / "si"
    assert main(["prune", *common, "--method", "wanda", "--mask-structure", "2:4", "--induction",
                 "--output", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"done: wanda 2:4, SI on, OWL off; saved to {out}"
    out = tmp_path / "owl"
    assert main(["prune", *common, "--method", "wanda", "--sparsity", "0.6", "--sparsity-profile", "owl",
                 "--output", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"done: wanda 60% unstructured, SI off, OWL on; saved to {out}"


def test_an_existing_checkpoint_needs_overwrite_in_memory_and_streamed(dense_dir, tmp_path, capsys, monkeypatch):
    path, _ = dense_dir
    out = tmp_path / "out"
    magnitude = ["prune", "--model", str(path), "--method", "magnitude", "--output", str(out), "--no-show-progress"]
    assert main(magnitude) == 0
    recipe = (out / "si_config.json").read_text()
    capsys.readouterr()
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the output folder was checked")

    with monkeypatch.context() as patch:
        patch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
        assert main(magnitude) == 2
    err = capsys.readouterr().err
    assert err.strip() == (f"optimum-si prune: error: {out} already holds a pruned checkpoint; pass --overwrite to "
                           "replace it, or choose another --output.")
    assert main([*magnitude, "--stream", "--mask-structure", "2:4"]) == 2
    err = capsys.readouterr().err
    assert "pass --overwrite to replace it, or choose another --output" in err and "overwrite=True" not in err
    assert (out / "si_config.json").read_text() == recipe  # refused both ways: nothing changed
    assert main([*magnitude, "--mask-structure", "2:4", "--overwrite"]) == 0
    assert json.loads((out / "si_config.json").read_text())["mask_structure"] == "2:4"
    assert main([*magnitude, "--stream", "--mask-structure", "4:8", "--overwrite"]) == 0
    assert json.loads((out / "si_config.json").read_text())["mask_structure"] == "4:8"


def test_report_is_answered_without_torch(dense_dir, tmp_path):
    """`optimum-si report` reads the safetensors with numpy: importing torch alone takes seconds."""
    import os
    import subprocess
    import sys

    from optimum_si import sparsity_report

    path, _ = dense_dir
    out = tmp_path / "out"
    assert main(["prune", "--model", str(path), "--method", "magnitude", "--mask-structure", "2:4", "--output",
                 str(out), "--no-show-progress"]) == 0
    script = ("import json, sys\n"
              "from optimum_si.cli import main\n"
              "code = main(['report', sys.argv[1], '--json'])\n"
              "heavy = [m for m in ('torch', 'transformers', 'safetensors', 'accelerate') if m in sys.modules]\n"
              "sys.exit(code or (1 if heavy else 0))\n")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run([sys.executable, "-c", script, str(out)], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout) == sparsity_report(str(out))  # the same figures as the library's
    assert json.loads(done.stdout)["patterns"]["2:4"]
