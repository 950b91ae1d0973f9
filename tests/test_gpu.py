"""CUDA runs of the in-memory and streaming paths (skipped without a GPU: see the `gpu` marker in conftest).

GPU float reductions differ from the CPU's in the last bits, so masks are compared by agreement, not bit for bit;
the sparsity itself is exact on every device (selection by count)."""

from __future__ import annotations

import os

import pytest
import torch

from optimum_si import SIPruner
from tests.conftest import tiny_model, token_ids

pytestmark = pytest.mark.gpu


def _masks(model) -> dict[str, torch.Tensor]:
    return {k: (v == 0).cpu() for k, v in model.state_dict().items() if ".layers." in k and v.dim() >= 2}


@pytest.mark.parametrize("arch", ["llama", "mixtral"])
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_cuda_in_memory_matches_cpu(arch, method):
    cpu, gpu = tiny_model(arch), tiny_model(arch).to("cuda")
    for model, device in ((cpu, "cpu"), (gpu, "cuda")):
        pruner = SIPruner(method=method, num_samples=8, seqlen=32, show_progress=False)
        pruner.prune(model, dataset=token_ids(), device=device)
        assert pruner.report.sparsity == 0.5
    a, b = _masks(cpu), _masks(gpu)
    agreement = sum(int((a[k] == b[k]).sum()) for k in a) / sum(a[k].numel() for k in a)
    assert agreement > 0.99


def test_cuda_streaming_matches_cuda_in_memory(tmp_path):
    from safetensors.torch import load_file

    source = tmp_path / "dense"
    tiny_model("llama").save_pretrained(source)
    model = tiny_model("llama").to("cuda")
    SIPruner(method="wanda", num_samples=8, seqlen=32, show_progress=False).prune(model, dataset=token_ids())
    out = SIPruner(method="wanda", num_samples=8, seqlen=32, show_progress=False, device="cuda").prune(
        str(source), save_dir=str(tmp_path / "out"), dataset=token_ids())
    streamed = {k: v for name in os.listdir(out) if name.endswith(".safetensors")
                for k, v in load_file(os.path.join(out, name)).items()}
    state = model.state_dict()
    assert all(torch.equal(v, state[k].cpu()) for k, v in streamed.items() if k in state)
