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


@pytest.fixture(autouse=True)
def _method_registry_restored():
    """Methods a test registers are gone after it: later tests (the command line's help lists every registered
    method) must see the same registry whatever order the tests run in."""
    from optimum_si.methods.registry import _REGISTRY

    registered = dict(_REGISTRY)
    yield
    _REGISTRY.clear()
    _REGISTRY.update(registered)


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
        # Markers, not keywords: keywords also hold the names of the folders above a test (a checkout named "gpu").
        if no_cuda and item.get_closest_marker("gpu") is not None:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
        if offline and item.get_closest_marker("hub") is not None:
            item.add_marker(pytest.mark.skip(reason="needs the Hugging Face Hub (HF_HUB_OFFLINE is set)"))


@pytest.fixture
def llama():
    return tiny_model("llama")


@pytest.fixture
def calib():
    return token_ids()


@pytest.fixture
def dense_dir(tmp_path):
    """A tiny Llama folder with a character tokenizer, and a text file, for the command line."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {chr(ord("a") + i): i for i in range(26)} | {"[UNK]": 26}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    path = tmp_path / "dense"
    tiny_model("llama").save_pretrained(path)
    tokenizer.save_pretrained(path)
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog " * 40)
    return path, text


def char_tokenizer():
    """A real (fast) tokenizer with one token per lower-case letter or space, ids below the tiny models' vocab."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {chr(ord("a") + i): i for i in range(26)} | {" ": 26, "[UNK]": 27, "</s>": 28}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="</s>")


# A one-task lm-evaluation-harness YAML (multiple choice over a local JSON file `{data}`).
TINY_TASK = """task: si_tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: choices
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def pruned_tiny(method="wanda", **kwargs):
    """A tiny Llama pruned in memory, and its pruner."""
    from optimum_si import SIPruner

    model = tiny_model("llama")
    pruner = SIPruner(method=method, num_samples=8, seqlen=32, show_progress=False, **kwargs)
    pruner.prune(model, dataset=token_ids())
    return model, pruner


def record_disk_events(monkeypatch):
    """(what, real path) for every fsync, rename and folder deletion, in order."""
    import shutil

    events = []
    real = {"fsync": os.fsync, "replace": os.replace, "rename": os.rename, "rmtree": shutil.rmtree}

    def fsync(fd):
        events.append(("sync", os.readlink(f"/proc/self/fd/{fd}")))
        real["fsync"](fd)

    def moved(kind):
        def move(src, dst, *args, **kwargs):
            events.append(("rename", os.path.realpath(dst)))
            return real[kind](src, dst, *args, **kwargs)
        return move

    def rmtree(path, *args, **kwargs):
        events.append(("delete", os.path.realpath(path)))
        return real["rmtree"](path, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", moved("replace"))
    monkeypatch.setattr(os, "rename", moved("rename"))
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    return events


def _point_hub_at(monkeypatch, url: str, tmp_path) -> None:
    """HF_ENDPOINT at `url`, the Hub online for this test only, empty caches. Both libraries read the endpoint and
    offline flag into constants at import time, so the constants are patched as well."""
    import huggingface_hub.constants as hub_constants

    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    for module, name, value in [
        (hub_constants, "ENDPOINT", url), (hub_constants, "HF_HUB_OFFLINE", False),
        (hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}"),
        (hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub")),
        (datasets.config, "HF_ENDPOINT", url), (datasets.config, "HF_HUB_OFFLINE", False),
        (datasets.config, "HF_DATASETS_OFFLINE", False),
        (datasets.config, "HUB_DATASETS_URL", url + "/datasets/{repo_id}/resolve/{revision}/{path}"),
        (datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets"),
    ]:
        monkeypatch.setattr(module, name, value)


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """A fake Hub serving `REPOS`; HF_ENDPOINT points at it and the Hub is online for this test only."""
    pytest.importorskip("datasets")
    from tests.fake_hub import handler

    requests: list[str] = []
    import threading
    from http.server import ThreadingHTTPServer

    server = ThreadingHTTPServer(("127.0.0.1", 0), handler(requests))
    url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    _point_hub_at(monkeypatch, url, tmp_path)
    try:
        yield requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class SilentEndpoint:
    """A Hub endpoint that accepts connections and never answers: `url`, and how many connections it accepted."""

    def __init__(self) -> None:
        import socket
        import threading

        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(64)
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.connections: list = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _address = self.socket.accept()
            except OSError:  # closed at the end of the test
                return
            self.connections.append(connection)

    def close(self) -> None:
        for connection in self.connections:
            connection.close()
        self.socket.close()


@pytest.fixture
def silent_hub(monkeypatch, tmp_path):
    """HF_ENDPOINT at a server that accepts and never answers, online, each request allowed 0.5 s
    ($OPTIMUM_SI_NETWORK_TIMEOUT): a hung endpoint without waiting long."""
    endpoint = SilentEndpoint()
    _point_hub_at(monkeypatch, endpoint.url, tmp_path)
    monkeypatch.setenv("OPTIMUM_SI_NETWORK_TIMEOUT", "0.5")
    try:
        yield endpoint
    finally:
        endpoint.close()




def fail_pruning_in_block(monkeypatch, block: int, error: BaseException | None = None) -> None:
    """Make the base method raise `error` (default RuntimeError("killed")) inside decoder block `block`, after the
    earlier blocks were pruned: a fault, or a kill, in the middle of a run."""
    from optimum_si.pipeline import walker

    original = walker.prune_group

    def failing(method, prefix, *args, **kwargs):
        if prefix.endswith(f".{block}"):
            raise error if error is not None else RuntimeError("killed")
        return original(method, prefix, *args, **kwargs)

    monkeypatch.setattr(walker, "prune_group", failing)
