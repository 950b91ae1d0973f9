"""Run under `torchrun` by tests/test_streaming_distributed.py (and alone, for the single-process references):
streams tiny checkpoints that need the newer streaming paths (OWL's streamed profile, per-expert MoE layouts)."""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.conftest import token_ids  # noqa: E402

RECIPES = {
    "owl": ("llama-outliers", {"method": "wanda", "sparsity": 0.7, "sparsity_profile": "owl"}),
    "moe": ("mixtral", {"method": "sparsegpt", "sparsity": 0.5}),
}


def run(scenario: str, out: str, world: int) -> None:
    from optimum_si import SIPruner

    source, recipe = RECIPES[scenario]
    SIPruner(show_progress=False, **recipe).prune(os.path.join(out, source),
                                                  save_dir=os.path.join(out, f"{scenario}-{world}"),
                                                  dataset=token_ids(8, 32))


if __name__ == "__main__":
    torch.set_num_threads(1)
    for name in sys.argv[2:]:
        run(name, sys.argv[1], int(os.environ.get("WORLD_SIZE", "1")))
