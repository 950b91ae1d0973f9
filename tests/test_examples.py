"""Every example runs in the suite (in its quick, tiny or dry mode) so none rots."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def _run(script: str, *args: str) -> str:
    result = subprocess.run([sys.executable, os.path.join(EXAMPLES, script), *args], capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_prune_smollm2_quick(tmp_path):
    from tests import assets

    try:
        assets.smollm2_dir()
    except FileNotFoundError as err:
        if os.environ.get("CI"):
            pytest.fail(f"SmolLM2 assets missing under CI: {err}")
        pytest.skip(str(err))
    out = tmp_path / "smollm2"
    stdout = _run("prune_smollm2.py", "--quick", "--output", str(out))
    assert "perplexity" in stdout
    recipe = json.loads((out / "si_config.json").read_text())
    assert recipe["induction"]["epochs"] >= 1 and recipe["method"] == "wanda"
    assert {"README.md", "si_report.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(out))
    card = (out / "README.md").read_text()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card and "Q4_1 GGUF" in card


def test_prune_7b_example_tiny(tmp_path):
    out = tmp_path / "7b"
    assert "achieved sparsity 0.5000" in _run("prune_7b_gpu.py", "--tiny", "--output", str(out))
    assert (out / "si_config.json").is_file()


def test_stream_example_tiny(tmp_path):
    out = tmp_path / "stream"
    assert "streamed to" in _run("stream_large_model.py", "--tiny", "--output", str(out))
    assert (out / "si_config.json").is_file() and (out / "model.safetensors").is_file()  # packed: one shard


def test_push_example_dry_run(tmp_path):
    _run("prune_7b_gpu.py", "--tiny", "--output", str(tmp_path / "ckpt"))
    stdout = _run("push_to_hub.py", str(tmp_path / "ckpt"), "someone/tiny", "--dry-run")
    assert "si_config.json" in stdout and "README.md" in stdout
