"""benchmarks/refresh_cost.py on a tiny model: both refreshes run on a block and leave its Linears as they were."""

from __future__ import annotations

import torch

from benchmarks import refresh_cost
from optimum_si.modeling.capture import capture_block_inputs
from tests.conftest import tiny_model, token_ids


def test_both_refreshes_run_and_the_block_is_restored():
    model = tiny_model("llama")
    inputs = capture_block_inputs(model, model.model.layers, list(token_ids(4, 32).split(1)), torch.device("cpu"))
    block = model.model.layers[0]
    before = {name: p.clone() for name, p in block.named_parameters()}
    for mode in ("fast", "classical"):
        assert isinstance(refresh_cost.seconds_per_refresh(block, inputs, mode, repeats=1), float)
    assert type(block.mlp.down_proj) is torch.nn.Linear
    assert all(torch.equal(before[name], p) for name, p in block.named_parameters())


def test_table_from_a_record():
    record = {"fast_s_per_refresh": 0.01, "classical_s_per_refresh": 0.5, "speedup": 50.0, "windows": [32, 512],
              "threads": 2}
    table = refresh_cost.markdown(record, repeats=5)
    assert "| classical (re-collect statistics over 32 x 512 tokens) | 0.500 |" in table
    assert "Speed-up: 50.0x (SmolLM2-135M, CPU, 2 threads, mean of 5)." in table
