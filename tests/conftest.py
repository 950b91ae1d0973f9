"""Shared fixtures: tiny random-weight models of every supported architecture, built in-process from configs."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The golden checksums must not depend on which x86 CPU runs the tests: MKL and torch pick kernels by CPU vendor and
# instruction set (an AMD EPYC and an Intel Xeon give different last bits for the same Cholesky or matmul), so both
# are pinned to their AVX2 code paths, which every x86-64 CPU of the last decade runs (MKL's conditional numerical
# reproducibility, torch's CPU capability, oneDNN's ISA). Set before torch is imported: MKL reads it once.
os.environ.setdefault("MKL_CBWR", "AVX2")
os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny models run far faster on one thread: on a loaded 2-core machine a tiny F.linear took 32 ms with 2 threads vs
# 0.014 ms with 1 (thread hand-off dominates). One thread also makes float reductions, and so the golden masks,
# independent of the machine's core count.
torch.set_num_threads(1)
# Subprocesses (killed-run tests, the CLI) must compute with the same single thread to reproduce results bit for bit.
os.environ["OMP_NUM_THREADS"] = "1"

VOCAB = 128
_COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=256)


def tiny_config(arch: str):
    """A 2-block config with GQA (4 query heads, 2 KV heads) for each architecture family we support."""
    import transformers as tf

    if arch == "llama":
        return tf.LlamaConfig(**_COMMON)
    if arch == "mistral":
        return tf.MistralConfig(**_COMMON, sliding_window=None)
    if arch == "qwen2":
        return tf.Qwen2Config(**_COMMON)
    if arch == "qwen3":
        return tf.Qwen3Config(**_COMMON, head_dim=16)
    if arch == "gemma":
        return tf.GemmaConfig(**_COMMON, head_dim=16)
    if arch == "gemma3":
        return tf.Gemma3TextConfig(**_COMMON, head_dim=16, sliding_window=16)
    if arch == "opt":
        return tf.OPTConfig(vocab_size=VOCAB, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                            max_position_embeddings=256, word_embed_proj_dim=64)
    # Mixture-of-experts (fused 3-D expert parameters in transformers 5) and GPT-2 (Conv1D): pruned, no SI table.
    if arch == "mixtral":
        return tf.MixtralConfig(**_COMMON, num_local_experts=4, num_experts_per_tok=2, sliding_window=None)
    if arch == "qwen3_moe":
        return tf.Qwen3MoeConfig(**_COMMON, head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64,
                                 decoder_sparse_step=1, mlp_only_layers=[])
    if arch == "gpt2":
        return tf.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=256)
    raise ValueError(arch)


ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma3", "opt"]


def tiny_model(arch: str = "llama", seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch), dtype=torch.float32)
    model.eval()
    return model


def token_ids(n: int = 8, seqlen: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n, seqlen), generator=generator)


def saved_tensors(folder) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors shards in `folder`, by name."""
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            tensors.update(load_file(os.path.join(folder, name)))
    return tensors


def stream_and_prune_in_memory(model, make_pruner, tmp_path, dataset, **save_kwargs):
    """Save `model` as a checkpoint, prune it streamed (`make_pruner()` each time) and in memory from the same
    checkpoint, assert the reloaded streamed output equals the in-memory result bit for bit; returns both pruners."""
    from transformers import AutoModelForCausalLM

    source, out = tmp_path / "source", tmp_path / "out"
    model.save_pretrained(source, **save_kwargs)
    streamed = make_pruner()
    streamed.prune(str(source), save_dir=out, dataset=dataset)
    in_memory = AutoModelForCausalLM.from_pretrained(source)
    pruner = make_pruner()
    pruner.prune(in_memory, dataset=dataset)
    expected = in_memory.state_dict()
    reloaded = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert reloaded.keys() == expected.keys()
    assert all(torch.equal(t, expected[k]) for k, t in reloaded.items())
    return streamed, pruner


def fold_and_compare(model, fold, ids):
    """Run `fold(model)` (a function-preserving transform) between two forwards on `ids`; returns what `fold`
    returned, the logits before and after, and the names of the state-dict entries it changed."""
    before_weights = snapshot(model)
    with torch.no_grad():
        before = model(ids).logits
        result = fold(model)
        after = model(ids).logits
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before_weights[k])}
    return result, before, after, changed


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    changed = [k for k, v in before.items() if not torch.equal(v, after[k])]
    assert not changed, f"weights changed: {changed[:5]}"


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need CUDA; `hub` tests need the network (skipped when HF_HUB_OFFLINE is set)."""
    no_cuda = not torch.cuda.is_available()
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    for item in items:
        if no_cuda and "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
        if offline and "hub" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="needs the Hugging Face Hub (HF_HUB_OFFLINE is set)"))


@pytest.fixture
def llama():
    return tiny_model("llama")


@pytest.fixture
def calib():
    return token_ids()
