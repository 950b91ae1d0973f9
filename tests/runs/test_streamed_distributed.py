"""Data-parallel streaming of what streams since the set-up was merged: OWL's streamed profile (each rank profiles
its share of the windows, statistics reduced) and mixture-of-experts checkpoints (fused on load, written back per
expert by rank 0). Two gloo processes against one process."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.distributed

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(ROOT, "tests", "distributed", "streaming_worker.py")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from tests.conftest import tiny_model
    from tests.distributed import streaming_worker

    out = str(tmp_path_factory.mktemp("dp-stream"))
    model = tiny_model("llama")
    with torch.no_grad():  # block 1 gets more outliers than block 0: OWL gives the blocks different sparsities
        model.model.layers[1].input_layernorm.weight[:4] *= 40
    model.save_pretrained(os.path.join(out, "llama-outliers"))
    tiny_model("mixtral").save_pretrained(os.path.join(out, "mixtral"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OPTIMUM_SI_DIST_TIMEOUT": "120", "PYTHONPATH": ROOT}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", WORKER, out,
               *streaming_worker.RECIPES]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for scenario in streaming_worker.RECIPES:
        streaming_worker.run(scenario, out, 1)
    return out


def _shards(folder: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors = {}
    for path in glob.glob(os.path.join(folder, "*.safetensors")):
        tensors.update(load_file(path))
    return tensors


@pytest.mark.parametrize("scenario", ["owl", "moe"])
def test_two_ranks_match_one_process(runs, scenario):
    ours, reference = _shards(os.path.join(runs, f"{scenario}-2")), _shards(os.path.join(runs, f"{scenario}-1"))
    assert ours.keys() == reference.keys() and ours
    same = sum(int(((ours[k] == 0) == (reference[k] == 0)).sum()) for k in ours)
    assert same / sum(t.numel() for t in ours.values()) >= 0.995
    for key in reference:
        torch.testing.assert_close(ours[key], reference[key], atol=1e-4, rtol=1e-4)
    if scenario == "owl":  # the blocks got OWL's different sparsities, on every rank alike
        zeros = [float((ours[f"model.layers.{i}.mlp.down_proj.weight"] == 0).float().mean()) for i in (0, 1)]
        assert zeros == pytest.approx([0.78, 0.62], abs=0.02)
    else:
        assert any(".block_sparse_moe.experts.3.w1.weight" in key for key in ours)
