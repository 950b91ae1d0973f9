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

from .conftest import tiny_model, token_ids

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
