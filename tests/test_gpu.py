"""CUDA runs of every path a GPU takes (skipped without a GPU: see the `gpu` marker in conftest): in memory (a model on
the GPU, and a CPU model with `device="cuda"`), streamed (dense and mixture-of-experts checkpoints), offloaded by
accelerate (cpu_offload and a device map), the activation stores (pinned CPU memory, device, disk), Sparsity
Induction with float32 and bfloat16 training, bf16 models, and the 2:4 conversion to semi-structured tensors. They run
first in the GPU check (`python -m benchmarks.gpu_check`, docs/gpu-check.md). Data parallelism over NCCL needs two
GPUs and is not among them.

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


def _agreement(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return sum(int((a[k] == b[k]).sum()) for k in a) / sum(a[k].numel() for k in a)


def _block_sparsity(model) -> float:
    weights = [v for k, v in model.state_dict().items() if ".layers." in k and k.endswith("proj.weight")]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def test_cuda_device_option_prunes_a_cpu_model_block_by_block():
    """`device="cuda"` on a model in CPU memory: each block visits the GPU and comes back; the model stays put."""
    on_gpu, on_cpu = tiny_model("llama").to("cuda"), tiny_model("llama")
    SIPruner(method="sparsegpt", num_samples=8, seqlen=32, show_progress=False).prune(on_gpu, dataset=token_ids())
    SIPruner(method="sparsegpt", num_samples=8, seqlen=32, show_progress=False).prune(
        on_cpu, dataset=token_ids(), device="cuda")
    assert all(p.device.type == "cpu" for p in on_cpu.parameters())
    assert _agreement(_masks(on_cpu), _masks(on_gpu)) > 0.99
    assert _block_sparsity(on_cpu) == 0.5


def test_cuda_activation_stores_are_pinned_and_exact():
    from optimum_si.modeling.activations import ActivationStore, resolve_storage

    device = torch.device("cuda")
    assert resolve_storage("auto", device) == "cpu"
    store = ActivationStore("cpu", device)
    tensor = torch.randn(2, 16, 64, device=device)
    store.append(tensor)
    assert store._items[0].is_pinned() and store._items[0].device.type == "cpu"
    assert torch.equal(store[0], tensor) and store[0].device.type == "cuda"


@pytest.mark.parametrize("storage", ["cpu", "device", "disk"])
def test_cuda_activation_storage_gives_the_auto_result(storage, tmp_path):
    """Where the activations wait changes nothing but where they wait: the same bits as the default (pinned CPU)."""
    reference, model = tiny_model("llama").to("cuda"), tiny_model("llama").to("cuda")
    recipe = dict(method="wanda", induction=True, num_samples=8, seqlen=32, show_progress=False)
    SIPruner(**recipe).prune(reference, dataset=token_ids())
    SIPruner(**recipe).prune(model, dataset=token_ids(), activation_storage=storage, activation_dir=str(tmp_path))
    state = model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in reference.state_dict().items())


def test_cuda_accelerate_offloaded_model_is_pruned_in_its_storage():
    """accelerate's cpu_offload with the GPU as execution device: weights stored on the CPU, blocks run on the GPU."""
    from accelerate import cpu_offload

    from optimum_si.modeling.offload import offloaded_state_dict

    plain = tiny_model("llama").to("cuda")
    offloaded = cpu_offload(tiny_model("llama"), execution_device="cuda")
    for model in (plain, offloaded):
        SIPruner(method="wanda", num_samples=8, seqlen=32, show_progress=False).prune(model, dataset=token_ids())
    stored = {k: v.cpu() for k, v in offloaded_state_dict(offloaded).items()}
    expected = {k: v.cpu() for k, v in plain.state_dict().items()}
    assert _agreement({k: stored[k] == 0 for k in expected if ".layers." in k and expected[k].dim() >= 2},
                      {k: expected[k] == 0 for k in expected if ".layers." in k and expected[k].dim() >= 2}) > 0.99
    ids = token_ids(2, 16, seed=1).to("cuda")
    assert torch.allclose(offloaded(ids).logits, plain(ids).logits, atol=1e-4, rtol=1e-4)


def test_cuda_device_map_with_cpu_offload_is_pruned(tmp_path):
    """`from_pretrained(device_map=...)` with part of the model offloaded to the CPU while the rest is on the GPU."""
    from transformers import AutoModelForCausalLM

    tiny_model("llama").save_pretrained(tmp_path / "src")
    device_map = {"model.embed_tokens": 0, "model.rotary_emb": 0, "model.layers.0": 0, "model.layers.1": "cpu",
                  "model.norm": 0, "lm_head": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "src", device_map=device_map)
    plain = tiny_model("llama").to("cuda")
    for m in (plain, model):
        SIPruner(method="sparsegpt", num_samples=8, seqlen=32, show_progress=False).prune(m, dataset=token_ids())
    from optimum_si.modeling.offload import offloaded_state_dict

    stored = {k: v.cpu() for k, v in offloaded_state_dict(model).items()}
    expected = {k: v.cpu() for k, v in plain.state_dict().items()}
    masks = [k for k in expected if ".layers." in k and expected[k].dim() >= 2]
    assert _agreement({k: stored[k] == 0 for k in masks}, {k: expected[k] == 0 for k in masks}) > 0.99
    assert all(float((stored[k] == 0).float().mean()) == 0.5 for k in masks)


@pytest.mark.parametrize("arch", ["llama", "mixtral"])
@pytest.mark.parametrize("method", ["sparsegpt", "wanda"])
def test_cuda_streaming_agrees_with_in_memory(arch, method, tmp_path):
    """Streamed on the GPU (mixture-of-experts included: per-expert tensors fused on load, split on write)."""
    from tests.conftest import saved_tensors

    tiny_model(arch).save_pretrained(tmp_path / "dense")
    model = tiny_model(arch).to("cuda")
    SIPruner(method=method, num_samples=8, seqlen=32, show_progress=False).prune(model, dataset=token_ids())
    out = SIPruner(method=method, num_samples=8, seqlen=32, show_progress=False, device="cuda").prune(
        str(tmp_path / "dense"), save_dir=str(tmp_path / "out"), dataset=token_ids())
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert saved_tensors(out)  # a complete folder of safetensors
    assert _agreement(_masks(reloaded), _masks(model)) > 0.99


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_cuda_sparsity_induction(method):
    """SI on the GPU: exact sparsity, a verdict for every block, finite outputs, masks close to the CPU run's (the
    learned scales differ in their last bits, which may move a few near-tie mask entries)."""
    cpu, gpu = tiny_model("llama"), tiny_model("llama").to("cuda")
    reports = []
    for model in (cpu, gpu):
        pruner = SIPruner(method=method, induction=True, num_samples=8, seqlen=32, show_progress=False)
        pruner.prune(model, dataset=token_ids())
        reports.append(pruner.report)
    summary = reports[1].induction_summary()
    assert summary is not None and summary["blocks"] == 2
    assert _block_sparsity(gpu) == 0.5
    assert torch.isfinite(gpu(token_ids(2, 16, seed=1).to("cuda")).logits).all()
    assert _agreement(_masks(cpu), _masks(gpu)) > 0.95


def test_cuda_bf16_induction_training():
    """InductionConfig(precision="bfloat16"): autocast on the GPU, verdicts and fold in float32."""
    from optimum_si import InductionConfig

    model = tiny_model("llama").to("cuda")
    pruner = SIPruner(method="wanda", induction=InductionConfig(precision="bfloat16"), num_samples=8, seqlen=32,
                      show_progress=False)
    pruner.prune(model, dataset=token_ids())
    assert pruner.report.induction_summary()["blocks"] == 2
    assert _block_sparsity(model) == 0.5
    assert torch.isfinite(model(token_ids(2, 16, seed=1).to("cuda")).logits).all()


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_cuda_bf16_model(method, tmp_path):
    """A bf16 model on the GPU (how 7B-70B checkpoints are pruned): exact sparsity, bf16 kept, streaming writes bf16."""
    from safetensors.torch import load_file

    model = tiny_model("llama").to(dtype=torch.bfloat16, device="cuda")
    SIPruner(method=method, num_samples=8, seqlen=32, show_progress=False).prune(model, dataset=token_ids())
    assert model.dtype == torch.bfloat16 and _block_sparsity(model) == 0.5
    tiny_model("llama").to(torch.bfloat16).save_pretrained(tmp_path / "dense")
    out = SIPruner(method=method, num_samples=8, seqlen=32, show_progress=False, device="cuda").prune(
        str(tmp_path / "dense"), save_dir=str(tmp_path / "out"), dataset=token_ids())
    tensors = {k: v for name in os.listdir(out) if name.endswith(".safetensors")
               for k, v in load_file(os.path.join(out, name)).items()}
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}


def test_cuda_semi_structured_conversion_of_2to4_output(tmp_path):
    """The saved 2:4 checkpoint, reloaded in bf16 on the GPU, converts to semi-structured sparse tensors; the
    converted model computes what the dense-with-zeros one does (to bf16 rounding)."""
    from transformers import AutoModelForCausalLM

    from optimum_si.semi_structured import to_semi_structured

    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("semi-structured kernels need compute capability 8.0")
    model = tiny_model("llama").to("cuda")
    pruner = SIPruner(method="wanda", mask_structure="2:4", num_samples=8, seqlen=32, show_progress=False)
    pruner.prune(model, dataset=token_ids())
    pruner.save(model, tmp_path / "out", plots=False)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.bfloat16).to("cuda").eval()
    ids = token_ids(4, 32, seed=1).to("cuda")
    with torch.no_grad():
        dense = reloaded(ids).logits.float()
        names = to_semi_structured(reloaded)
        sparse = reloaded(ids).logits.float()
    linears = {n for n, m in reloaded.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n}
    assert set(names) == linears
    assert (sparse - dense).abs().max() <= 0.05 * dense.abs().max()


def test_cuda_semi_structured_refuses_float32_with_the_fix():
    from optimum_si.semi_structured import to_semi_structured

    model = tiny_model("llama").to("cuda")
    SIPruner(method="magnitude", mask_structure="2:4", show_progress=False).prune(model)
    with pytest.raises(ValueError, match="float16/bfloat16"):
        to_semi_structured(model)
