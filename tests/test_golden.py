"""Golden results of whole pruning runs on tiny models: the sha256 of every weight after pruning.

The checksums in tests/golden/pruned_weights.json were written by the engine before the method registry replaced
its string comparisons; a refactor that keeps behaviour must reproduce them bit for bit (one torch thread, see
conftest). Regenerate only for an intended change of results: OPTIMUM_SI_WRITE_GOLDEN=1 pytest tests/test_golden.py.
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch

from optimum_si import SIPruner
from tests.conftest import tiny_model, token_ids

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "pruned_weights.json")
# Every SI option that shapes the result is pinned, so that a change of defaults is not read as a regression.
_SI = dict(induction=True, induction_epochs=1, induction_refresh_interval=2, induction_validation_fraction=0.0,
           induction_optimizer="damped-adam", induction_target="local", induction_init="data", induction_lr=1e-2)

CASES = {
    "llama-magnitude": ("llama", dict(method="magnitude")),
    "llama-magnitude-2:4": ("llama", dict(method="magnitude", mask_structure="2:4")),
    "llama-wanda": ("llama", dict(method="wanda")),
    "llama-wanda-2:4": ("llama", dict(method="wanda", mask_structure="2:4")),
    "llama-wanda-4:8": ("llama", dict(method="wanda", mask_structure="4:8")),
    "llama-sparsegpt": ("llama", dict(method="sparsegpt")),
    "llama-sparsegpt-2:4": ("llama", dict(method="sparsegpt", mask_structure="2:4", block_size=16)),
    "qwen3-sparsegpt-sequential": ("qwen3", dict(method="sparsegpt", true_sequential=True)),
    "opt-wanda": ("opt", dict(method="wanda", sparsity=0.6)),
    "opt-sparsegpt": ("opt", dict(method="sparsegpt")),
    "llama-si-magnitude": ("llama", dict(method="magnitude", **_SI)),
    "llama-si-wanda": ("llama", dict(method="wanda", **_SI)),
    "llama-si-wanda-classical": ("llama", dict(method="wanda", induction_refresh="classical", **_SI)),
    "llama-si-sparsegpt": ("llama", dict(method="sparsegpt", **_SI)),
    "llama-si-wanda-global": ("llama", dict(method="wanda", **{**_SI, "induction_target": "global"})),
    "qwen3-si-magnitude-2:4": ("qwen3", dict(method="magnitude", mask_structure="2:4", **_SI)),
    # Every other method, pattern and option that shapes a result.
    "llama-magnitude-70": ("llama", dict(method="magnitude", sparsity=0.7)),
    "llama-ria": ("llama", dict(method="ria")),
    "llama-ria-2:4": ("llama", dict(method="ria", mask_structure="2:4")),
    "llama-ria-knobs": ("llama", dict(method="ria", ria_a=1.0, ria_per_row=True)),
    "llama-zpruner": ("llama", dict(method="zpruner")),
    "llama-zpruner-knobs-4:8": ("llama", dict(method="zpruner", mask_structure="4:8", zpruner_exponent=1.0,
                                              zpruner_per_row=True)),
    "llama-alps": ("llama", dict(method="alps", alps_max_iter=30)),
    "llama-alps-2:4": ("llama", dict(method="alps", mask_structure="2:4", alps_max_iter=30, alps_pcg_iters=5)),
    "llama-sparsegpt-knobs": ("llama", dict(method="sparsegpt", dampening_frac=0.05, block_size=8, sparsity=0.6)),
    "llama-wanda-targets": ("llama", dict(method="wanda", targets=["*mlp*"], ignore=["*down_proj"])),
    "llama-wanda-batch2": ("llama", dict(method="wanda", batch_size=2)),
    "qwen3-wanda-sequential": ("qwen3", dict(method="wanda", true_sequential=True)),
    "llama-owl-wanda": ("llama", dict(method="wanda", sparsity=0.6, sparsity_profile="owl", owl_lambda=0.1)),
    "llama-owl-sparsegpt": ("llama", dict(method="sparsegpt", sparsity=0.6, sparsity_profile="owl", owl_m=3.0,
                                          owl_lambda=0.1)),
    "llama-si-ria": ("llama", dict(method="ria", **_SI)),
    "llama-si-zpruner-2:4": ("llama", dict(method="zpruner", mask_structure="2:4", **_SI)),
    "llama-si-alps": ("llama", dict(method="alps", alps_max_iter=30, **_SI)),
    "llama-si-owl-wanda": ("llama", dict(method="wanda", sparsity=0.6, sparsity_profile="owl", owl_lambda=0.1, **_SI)),
    "llama-si-sparsegpt-global": ("llama", dict(method="sparsegpt", **{**_SI, "induction_target": "global"})),
    "llama-si-wanda-global-pruned-stats": ("llama", dict(method="wanda", induction_statistics="pruned",
                                                         **{**_SI, "induction_target": "global"})),
    "llama-si-magnitude-global-dense-stats": ("llama", dict(method="magnitude", induction_statistics="dense",
                                                            **{**_SI, "induction_target": "global"})),
    "llama-si-wanda-defaults": ("llama", dict(method="wanda", induction=True)),
    "llama-si-wanda-options": ("llama", dict(method="wanda", **{
        **_SI, "induction_spectral_weight": 0.1, "induction_max_scale": 2.0, "induction_min_gain": 0.01,
        "induction_groups": ["attn_in", "mlp_out"], "induction_refresh": "none", "induction_init": "none",
        "induction_optimizer": "adam", "induction_validation_fraction": 0.25, "induction_epochs": 2})),
    "llama-si-wanda-rows-only": ("llama", dict(method="wanda", induction_col_scales=False,
                                               induction_init_exponent=0.5, **_SI)),
    "llama-si-wanda-bf16": ("llama", dict(method="wanda", induction_precision="bfloat16", **_SI)),
    "opt-si-wanda": ("opt", dict(method="wanda", **_SI)),
    "gpt2-wanda": ("gpt2", dict(method="wanda")),
    "gpt2-si-wanda": ("gpt2", dict(method="wanda", **_SI)),
    "gpt2-si-sparsegpt-2:4": ("gpt2", dict(method="sparsegpt", mask_structure="2:4", **_SI)),
    "mixtral-wanda": ("mixtral", dict(method="wanda")),
    "mixtral-sparsegpt": ("mixtral", dict(method="sparsegpt")),
    "mixtral-wanda-all-experts": ("mixtral", dict(method="wanda", expert_calibration="all")),
    "mixtral-si-wanda": ("mixtral", dict(method="wanda", **_SI)),
    "mixtral-si-wanda-all-experts": ("mixtral", dict(method="wanda", expert_calibration="all", **_SI)),
    "qwen3_moe-si-sparsegpt": ("qwen3_moe", dict(method="sparsegpt", **_SI)),
    "gemma-si-wanda": ("gemma", dict(method="wanda", **_SI)),
}


def weights_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def run_case(name: str, induce_only: bool = False) -> str:
    arch, options = CASES[name]
    model = tiny_model(arch)
    pruner = SIPruner(num_samples=8, seqlen=32, show_progress=False, **options)
    if induce_only:
        pruner.induce(model, dataset=token_ids())
    else:
        pruner.prune(model, dataset=token_ids())
    return weights_digest(model)


def _golden() -> dict[str, str]:
    with open(GOLDEN, encoding="utf-8") as handle:
        return json.load(handle)


@pytest.mark.parametrize("name", sorted(CASES))
def test_pruned_weights_match_golden(name):
    if os.environ.get("OPTIMUM_SI_WRITE_GOLDEN"):
        data = _golden() if os.path.exists(GOLDEN) else {}
        data[name] = run_case(name)
        with open(GOLDEN, "w", encoding="utf-8") as handle:
            json.dump(dict(sorted(data.items())), handle, indent=1)
            handle.write("\n")
        pytest.skip("golden checksum written")
    assert run_case(name) == _golden()[name]


# Streamed runs (the checkpoint written block by block) and an accelerate-offloaded model: the digest of the
# tensors they write, or of the model's weights.
STREAMED = {
    "stream:llama-wanda": ("llama", dict(method="wanda")),
    "stream:llama-si-sparsegpt": ("llama", dict(method="sparsegpt", **_SI)),
    "stream:llama-owl-wanda": ("llama", dict(method="wanda", sparsity=0.6, sparsity_profile="owl", owl_lambda=0.1)),
    "stream:mixtral-wanda": ("mixtral", dict(method="wanda")),
    "stream:llama-magnitude": ("llama", dict(method="magnitude")),
}


def _check(key: str, digest: str) -> None:
    if os.environ.get("OPTIMUM_SI_WRITE_GOLDEN"):
        data = _golden() if os.path.exists(GOLDEN) else {}
        data[key] = digest
        with open(GOLDEN, "w", encoding="utf-8") as handle:
            json.dump(dict(sorted(data.items())), handle, indent=1)
            handle.write("\n")
        pytest.skip("golden checksum written")
    assert digest == _golden()[key]


@pytest.mark.parametrize("name", sorted(STREAMED))
def test_streamed_output_matches_golden(name, tmp_path):
    from tests.conftest import saved_tensors

    arch, options = STREAMED[name]
    tiny_model(arch).save_pretrained(tmp_path / "source")
    SIPruner(num_samples=8, seqlen=32, show_progress=False, **options).prune(
        str(tmp_path / "source"), save_dir=tmp_path / "out", dataset=token_ids())
    digest = hashlib.sha256()
    for key, tensor in sorted(saved_tensors(tmp_path / "out").items()):
        digest.update(key.encode())
        digest.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    _check(name, digest.hexdigest())


@pytest.mark.parametrize("options", [dict(method="wanda"), dict(method="sparsegpt", **_SI)], ids=["wanda", "si-sparsegpt"])
def test_offloaded_matches_golden(options):
    from accelerate import cpu_offload

    from optimum_si.modeling.offload import offloaded_state_dict

    model = cpu_offload(tiny_model("llama"), execution_device="cpu")
    SIPruner(num_samples=8, seqlen=32, show_progress=False, **options).prune(model, dataset=token_ids())
    digest = hashlib.sha256()
    for name, tensor in sorted(offloaded_state_dict(model).items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    _check(f"offload:{options['method']}{'-si' if options.get('induction') else ''}", digest.hexdigest())


def test_induce_matches_golden():
    key = "induce:llama-si-magnitude"
    if os.environ.get("OPTIMUM_SI_WRITE_GOLDEN"):
        data = _golden() if os.path.exists(GOLDEN) else {}
        data[key] = run_case("llama-si-magnitude", induce_only=True)
        with open(GOLDEN, "w", encoding="utf-8") as handle:
            json.dump(dict(sorted(data.items())), handle, indent=1)
            handle.write("\n")
        pytest.skip("golden checksum written")
    assert run_case("llama-si-magnitude", induce_only=True) == _golden()[key]
