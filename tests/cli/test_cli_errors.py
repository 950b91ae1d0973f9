"""The CLI as a newcomer meets it: every mistake is one line naming the flag, exit status 2, answered before any
model (or torch) is loaded; remote code runs only with --trust-remote-code and is never asked about on stdin."""

import io
import json
import os
import subprocess
import sys

import pytest

from optimum_si.cli import build_parser, main


def _one_line_error(capsys, code, *fragments):
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    return err


def _main(argv):
    """`main`'s exit status, also when argparse itself exits (malformed flags)."""
    try:
        return main(argv)
    except SystemExit as exit_info:
        return exit_info.code


@pytest.fixture
def blocked_model_loading(monkeypatch):
    """Fails the test if a command gets as far as loading a model: argument errors must come first."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["--model", "./no-such-model"], ["--model './no-such-model': no such folder, and not a Hub repo id"]),
        (["--model", "../a/b/c"], ["no such folder, and not a Hub repo id"]),
        (["--method", "wanda"], ["--method wanda needs calibration text: pass --dataset"]),
        (["--method", "magnitude", "--induction"], ["--induction needs calibration text"]),
        (["--method", "magnitude", "--recipe", "missing.json"], ["--recipe 'missing.json': no such file or folder"]),
        (["--method", "magnitude", "--device", "meta"], ["--device 'meta'", "destroy the weights"]),
        (["--method", "magnitude", "--device", "gpu"], ["--device 'gpu' is not a device"]),
        (["--method", "magnitude", "--num-samples", str(10**12)], ["--num-samples", "calibration tokens"]),
        (["--method", "magnitude", "--push-to-hub", "bad name"],
         ["--push-to-hub must look like 'name' or 'owner/name'"]),
        (["--method", "magnitude", "--private"], ["--private", "--push-to-hub"]),
        (["--method", "magnitude", "--max-shard-size", "huge"], ["--max-shard-size 'huge' is not a size"]),
        (["--method", "magnitude", "--activation-storage", "disk", "--activation-dir", __file__],
         ["--activation-dir", "is a file"]),
        (["--method", "magnitude", "--dtype", "float33"], ["argument --dtype: invalid choice"]),
        (["--method", "obs"], ["argument --method: invalid choice", "magnitude"]),
        (["--method", "magnitude", "--trust-remote-code", "--stream"], ["--stream", "--trust-remote-code"]),
        (["--method", "magnitude", "--output", "{model}"], ["is the --model folder"]),
        (["--method", "magnitude", "--output", ""], ["--output is empty"]),
        (["--method", "magnitude", "--max-shard-size", "0MB"], ["--max-shard-size '0MB' is not a size"]),
        (["--method", "magnitude", "--seed", str(2**70)], ["--seed must be an integer in"]),
        (["--method", "magnitude", "--sparsity", "nan"], ["--sparsity must be in (0, 1)"]),
        (["--method", "magnitude", "--num-samples", "many"], ["argument --num-samples: invalid int value"]),
        (["--method", "magnitude", "--induction", "--induction-groups", "attn_in", "bogus"],
         ["--induction-groups has unknown"]),
        (["--method", "magnitude", "--induction-lr", "0.1"], ["--induction-lr sets Sparsity Induction; add --induction"]),
        (["--owl-m", "3"], ["--owl-m sets OWL; add --sparsity-profile owl"]),
        (["--method", "wanda", "--alps-max-iter", "3"], ["--alps-max-iter is a setting of --method alps"]),
        (["--model", ""], ["no such folder, and not a Hub repo id"]),
    ],
)
def test_prune_argument_errors_come_before_loading(dense_dir, tmp_path, capsys, blocked_model_loading, argv,
                                                   fragments):
    path, _ = dense_dir
    argv = ["--model", str(path), *argv] if "--model" not in argv else argv
    argv = [str(path) if a == "{model}" else a for a in argv]
    if "--output" not in argv:
        argv = ["--output", str(tmp_path / "out"), *argv]
    _one_line_error(capsys, _main(["prune", *argv]), *fragments)
    assert not (tmp_path / "out").exists()


def test_dataset_errors_name_the_flag_and_file(dense_dir, tmp_path, capsys, blocked_model_loading):
    path, _ = dense_dir
    base = ["prune", "--model", str(path), "--output", str(tmp_path / "out"), "--method", "wanda"]
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 ".encode("latin-1") * 10)
    _one_line_error(capsys, main([*base, "--dataset", str(latin1)]), "--dataset", "latin1.txt", "not UTF-8")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    _one_line_error(capsys, main([*base, "--dataset", str(empty)]), "--dataset", "is empty")
    _one_line_error(capsys, main([*base, "--dataset", str(tmp_path / "missing.txt")]), "--dataset", "is not a file")


def test_stream_errors(dense_dir, tmp_path, capsys, monkeypatch):
    path, text = dense_dir
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    base = ["prune", "--output", str(tmp_path / "out"), "--method", "magnitude", "--stream"]
    # A Hub id while offline (and not cached): one line, no traceback.
    _one_line_error(capsys, main([*base, "--model", "nobody-here/no-model-xyz"]), "HF_HUB_OFFLINE")
    # A folder with only pickle weights.
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((path / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not read")
    _one_line_error(capsys, main([*base, "--model", str(pickled)]), "no safetensors weights", "--stream")
    # A folder that is no model at all.
    _one_line_error(capsys, main([*base, "--model", str(tmp_path)]), "has no config.json")


@pytest.mark.parametrize("stream", [False, True], ids=["in-memory", "stream"])
def test_a_deeply_nested_config_is_one_line(dense_dir, tmp_path, capsys, stream):
    import shutil

    path, _text = dense_dir
    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    (broken / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    argv = ["prune", "--model", str(broken), "--output", str(tmp_path / "out"), "--method", "magnitude"]
    _one_line_error(capsys, main(argv + (["--stream"] if stream else [])), "nests too deeply")
    assert not (tmp_path / "out").exists()


def test_push_to_hub_offline_is_refused_before_pruning(dense_dir, tmp_path, capsys, monkeypatch, blocked_model_loading):
    path, _ = dense_dir
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["prune", "--model", str(path), "--output", str(tmp_path / "out"), "--method", "magnitude",
                 "--push-to-hub", "alice/model"])
    _one_line_error(capsys, code, "--push-to-hub needs the network")


def test_device_without_accelerator_is_one_line(dense_dir, tmp_path, capsys, monkeypatch, blocked_model_loading):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path, _ = dense_dir
    code = main(["prune", "--model", str(path), "--output", str(tmp_path / "out"), "--method", "magnitude",
                 "--device", "cuda"])
    _one_line_error(capsys, code, "--device 'cuda'", "no CUDA device here", "leave --device unset or use 'cpu'")


@pytest.mark.parametrize("flag, value, minimum", [("--seqlen", "1", 2), ("--seqlen", "0", 2), ("--seqlen", "-3", 2),
                                                  ("--seqlen", "two", 2), ("--max-windows", "0", 1)])
def test_eval_window_flags_below_their_minimum_are_refused(dense_dir, capsys, flag, value, minimum):
    path, text = dense_dir
    _one_line_error(capsys, _main(["eval", "--model", str(path), "--text", str(text), flag, value]),
                    flag, f">= {minimum}")


def test_eval_text_errors(dense_dir, tmp_path, capsys, blocked_model_loading):
    path, _ = dense_dir
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok \xff\xfe")
    _one_line_error(capsys, main(["eval", "--model", str(path), "--text", str(bad)]), "--text", "not UTF-8")
    _one_line_error(capsys, main(["eval", "--model", str(path), "--text", str(tmp_path / "none.txt")]),
                    "--text", "is not a file")


def test_recipe_file_is_read_itself_not_its_folder(dense_dir, tmp_path):
    path, _ = dense_dir
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "si_config.json").write_text(json.dumps({"method": "magnitude", "sparsity": 0.3}))
    (recipes / "aggressive.json").write_text(json.dumps({"method": "magnitude", "sparsity": 0.9}))
    out = tmp_path / "out"
    assert main(["prune", "--model", str(path), "--output", str(out), "--recipe", str(recipes / "aggressive.json"),
                 "--no-show-progress"]) == 0
    assert json.loads((out / "si_config.json").read_text())["sparsity"] == 0.9
    out2 = tmp_path / "out2"  # a folder means its si_config.json; flags override the recipe
    assert main(["prune", "--model", str(path), "--output", str(out2), "--recipe", str(recipes),
                 "--mask-structure", "2:4", "--no-show-progress"]) == 0
    saved = json.loads((out2 / "si_config.json").read_text())
    assert (saved["sparsity"], saved["mask_structure"]) == (0.5, "2:4")


@pytest.mark.parametrize(
    "content, fragments",
    [
        (b"{\"method\": \"magnitude\", \"sparsity\": 0.9", ["not valid JSON"]),
        (b"\xff\xfe{}", ["not UTF-8"]),
        (b"[" * 100000 + b"]" * 100000, ["nests JSON too deeply"]),
        (b"[1, 2]", ["not a recipe object"]),
        (json.dumps({"method": "magnitude", "format_version": 99}).encode(), ["pip install -U optimum-si"]),
        (json.dumps({"method": "magnitude", "sparsity": 1.5}).encode(), ["--recipe", "--sparsity must be in"]),
        # Run options in a recipe (device, ...) are ignored since they stopped being part of it (tests/test_run_options.py).
        (json.dumps({"method": "obs"}).encode(), ["--recipe", "'magnitude', 'wanda', 'sparsegpt'"]),
    ],
)
def test_bad_recipe_files(dense_dir, tmp_path, capsys, blocked_model_loading, content, fragments):
    path, _ = dense_dir
    recipe = tmp_path / "recipe.json"
    recipe.write_bytes(content)
    code = main(["prune", "--model", str(path), "--output", str(tmp_path / "out"), "--recipe", str(recipe)])
    _one_line_error(capsys, code, *fragments)


def _pruned_with_a_truncated_report(dense_dir, tmp_path, capsys):
    """A pruned checkpoint in tmp_path/out whose si_report.json was cut short."""
    path, _ = dense_dir
    out = tmp_path / "out"
    assert main(["prune", "--model", str(path), "--output", str(out), "--method", "magnitude",
                 "--no-show-progress"]) == 0
    capsys.readouterr()
    report = out / "si_report.json"
    report.write_text(report.read_text()[:40])
    return out


def test_truncated_checkpoint_and_report_files(dense_dir, tmp_path, capsys):
    out = _pruned_with_a_truncated_report(dense_dir, tmp_path, capsys)
    _one_line_error(capsys, main(["report", str(out), "--plots"]), "si_report.json is not valid JSON")
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    _one_line_error(capsys, main(["report", str(out)]), "truncated or corrupted")
    text = tmp_path / "t.txt"
    text.write_text("abc " * 100)
    _one_line_error(capsys, main(["eval", "--model", str(out), "--text", str(text), "--seqlen", "8"]),
                    "cannot load --model", "deserializing")
    weights.unlink()
    _one_line_error(capsys, main(["report", str(out)]), "holds no safetensors weights")


def _remote_code_folder(tmp_path, with_weights=False):
    folder = tmp_path / "remote"
    folder.mkdir()
    marker = tmp_path / "remote-code-ran"
    code = (f"open({str(marker)!r}, 'w').write('ran')\n"
            "from transformers import PretrainedConfig\n"
            "class ProbeConfig(PretrainedConfig):\n    model_type = 'si_probe_custom'\n")
    (folder / "configuration_probe.py").write_text(code)
    (folder / "modeling_probe.py").write_text(code)
    (folder / "config.json").write_text(json.dumps({
        "model_type": "si_probe_custom",
        "auto_map": {"AutoConfig": "configuration_probe.ProbeConfig",
                     "AutoModelForCausalLM": "modeling_probe.ProbeModel"}}))
    if with_weights:
        (folder / "model.safetensors").write_bytes(b"")
    return folder, marker


@pytest.mark.parametrize("command", ["prune", "prune-stream", "eval"])
def test_remote_code_never_runs_without_the_flag_even_on_yes(tmp_path, capsys, monkeypatch, command):
    folder, marker = _remote_code_folder(tmp_path, with_weights=command == "prune-stream")
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n" * 10))  # `yes | optimum-si ...`
    text = tmp_path / "t.txt"
    text.write_text("some text " * 50)
    if command == "eval":
        argv = ["eval", "--model", str(folder), "--text", str(text)]
    else:
        argv = ["prune", "--model", str(folder), "--method", "magnitude", "--output", str(tmp_path / "o")]
        argv += ["--stream"] if command == "prune-stream" else []
    _one_line_error(capsys, main(argv), "--trust-remote-code")
    assert not marker.exists(), "the model folder's code ran without --trust-remote-code"
    assert sys.stdin.read() == "y\n" * 10, "the CLI asked on stdin"


def test_trust_remote_code_flag_runs_the_code(tmp_path, capsys):
    folder, marker = _remote_code_folder(tmp_path)
    code = main(["prune", "--model", str(folder), "--method", "magnitude", "--output", str(tmp_path / "o"),
                 "--trust-remote-code"])
    assert marker.exists()
    err = capsys.readouterr().err
    assert code in (1, 2) and len(err.strip().splitlines()) == 1  # the probe is no real model: one-line failure


def test_verbose_before_and_after_the_command():
    parser = build_parser()
    assert parser.parse_args(["-v", "report", "x"]).verbose
    assert parser.parse_args(["report", "x", "-v"]).verbose
    assert parser.parse_args(["report", "--verbose", "x"]).verbose
    assert not parser.parse_args(["report", "x"]).verbose


def test_help_shows_defaults_and_choices():
    prune_help = build_parser()._subparsers._group_actions[0].choices["prune"].format_help()
    assert "{magnitude,wanda,sparsegpt,ria,zpruner,alps}" in prune_help
    assert "{auto,device,cpu,disk}" in prune_help
    assert "(default: 128)" in prune_help  # --num-samples, from SIConfig
    assert "(default: 5GB)" in prune_help and "--trust-remote-code" in prune_help
    assert "(default: None)" not in prune_help


def test_unexpected_failures_are_one_line_and_traceback_only_with_verbose(dense_dir, tmp_path, capsys, monkeypatch):
    import optimum_si.sparsity

    def broken(_path):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(optimum_si.sparsity, "sparsity_report", broken)
    path, _ = dense_dir
    assert main(["report", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "optimum-si report: error: RuntimeError: disk on fire (run with -v for the traceback)"
    assert main(["report", str(path), "-v"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_argument_errors_do_not_import_torch(tmp_path):
    """Argument checks run before torch/transformers are imported (they take seconds to import)."""
    script = (
        "import sys\n"
        "from optimum_si.cli import main\n"
        "codes = [main(['prune', '--model', './no-such-model', '--output', 'o']),\n"
        "         main(['prune', '--model', sys.argv[1], '--output', 'o', '--method', 'wanda']),\n"
        "         main(['prune', '--model', sys.argv[1], '--output', 'o', '--device', 'meta']),\n"
        "         main(['prune', '--model', sys.argv[1], '--output', 'o', '--recipe', 'nope.json']),\n"
        "         main(['eval', '--model', './no-such-model', '--text', 'x.txt']),\n"
        "         main(['eval', '--model', sys.argv[1], '--text', 'missing.txt']),\n"
        "         main(['report', './no-such-folder'])]\n"
        "heavy = [m for m in ('torch', 'transformers', 'accelerate') if m in sys.modules]\n"
        "print(codes, heavy)\n"
        "sys.exit(0 if codes == [2] * 7 and not heavy else 1)\n"
    )
    (tmp_path / "config.json").write_text("{}")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(done.stderr.strip().splitlines()) == 7


@pytest.mark.parametrize("variable, value", [("OPTIMUM_SI_DIST_TIMEOUT", "abc"), ("OPTIMUM_SI_DIST_TIMEOUT", "-5"),
                                             ("OPTIMUM_SI_DIST_TIMEOUT", "nan"), ("OPTIMUM_SI_NETWORK_TIMEOUT", "0")])
def test_bad_settings_name_the_variable(dense_dir, tmp_path, capsys, monkeypatch, blocked_model_loading, variable,
                                        value):
    path, text = dense_dir
    monkeypatch.setenv(variable, value)
    for argv in (["prune", "--model", str(path), "--method", "magnitude", "--output", str(tmp_path / "out")],
                 ["eval", "--model", str(path), "--text", str(text)]):
        _one_line_error(capsys, main(argv), f"{variable}='{value}' is not a number of seconds", "positive number")


def test_pickle_only_weights_need_trust_remote_code(tmp_path, capsys, monkeypatch):
    import torch

    from tests.conftest import char_tokenizer, tiny_model

    folder = tmp_path / "pickled"
    model = tiny_model("llama")
    model.config.save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    argv = ["prune", "--model", str(folder), "--method", "magnitude", "--output", str(tmp_path / "out"),
            "--no-show-progress"]
    _one_line_error(capsys, main(argv), f"--model '{folder}' holds only pickle weights (pytorch_model.bin)",
                    "convert them to safetensors", "--trust-remote-code")
    assert not (tmp_path / "out").exists()
    assert main([*argv, "--trust-remote-code"]) == 0  # loaded on request, saved as safetensors
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_a_damaged_report_is_named_before_the_model_is_evaluated(dense_dir, tmp_path, capsys, monkeypatch):
    out = _pruned_with_a_truncated_report(dense_dir, tmp_path, capsys)
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded and evaluated before the report was checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    for record in (["--record-as", "dense"], ["--record-into", str(out)]):
        _one_line_error(capsys, main(["eval", "--model", str(out), "--dataset", "wikitext2", *record]),
                        f"--record-into '{out}' cannot take the results", str(out / "si_report.json"), "truncated or corrupted",
                        "--no-record")


def test_a_folder_that_is_no_dataset_is_named_before_the_model_is_loaded(dense_dir, tmp_path, capsys,
                                                                        blocked_model_loading):
    path, _ = dense_dir
    broken = tmp_path / "data"
    broken.mkdir()
    (broken / "train.json").write_text('{"text": "a"}\n{bad')
    base = ["prune", "--model", str(path), "--output", str(tmp_path / "out"), "--method", "wanda", "--dataset"]
    _one_line_error(capsys, main([*base, str(broken)]), f"--dataset '{broken}' is a folder that `datasets` cannot read",
                    "save_to_disk", "text column")
    _one_line_error(capsys, main([*base, str(path)]), f"--dataset '{path}' is a model folder")


def test_a_model_folder_with_a_link_out_of_it_is_refused(dense_dir, tmp_path, capsys, blocked_model_loading):
    path, _ = dense_dir
    other = tmp_path / "other"
    other.mkdir()
    (path / "model.safetensors").rename(other / "model.safetensors")
    (path / "model.safetensors").symlink_to(other / "model.safetensors")
    _one_line_error(capsys, main(["prune", "--model", str(path), "--method", "magnitude", "--output",
                                  str(tmp_path / "out")]),
                    f"{path / 'model.safetensors'} is a link to {other / 'model.safetensors'}", "cp -L")
