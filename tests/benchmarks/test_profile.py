"""benchmarks/profile_blocks.py on a tiny model: every second lands in one phase, passes are counted per phase."""

from __future__ import annotations

import time

import pytest

from benchmarks import profile_blocks
from optimum_si import SIPruner
from tests.conftest import tiny_model, token_ids


@pytest.mark.parametrize("induction", [False, True])
def test_profile_counts_passes_and_accounts_for_every_second(induction):
    model = tiny_model("llama")
    layers = model.model.layers
    profile = profile_blocks.Profile()
    pruner = SIPruner(method="wanda", induction=induction, num_samples=8, seqlen=32, show_progress=False)
    with profile_blocks.instrument(profile, list(layers)):
        started = profile.last = time.perf_counter()
        with profile.phase(profile_blocks.TOP):
            pruner.prune(model, dataset=token_ids())
        total = time.perf_counter() - started
    assert abs(sum(profile.seconds.values()) - total) < 1e-3
    reverted = induction and not pruner.report.blocks[0].induction.kept  # a reverted block is propagated again
    assert profile.windows[("0", "propagate")] == 8 * (2 if reverted else 1)
    assert ("1", "propagate") not in profile.windows  # the last block is not propagated
    if induction:
        assert profile.windows[("0", "statistics + dense outputs pass")] == 8
        assert profile.windows[("0", "SI train forward")] == 6  # a quarter of the windows is held out
    else:
        # stops at the last Linear's input, except on the probe window (the output-error probe reads its outputs)
        assert profile.partial[("0", "statistics pass")] == 7
    assert "forward" not in vars(layers[0])  # the wrappers are gone


def test_reference_profile_splits_the_two_passes_and_accounts_for_every_second():
    from benchmarks.reference_loop import reference_prune

    model = tiny_model("llama")
    layers = model.model.layers
    profile = profile_blocks.Profile()
    with profile_blocks.instrument_reference(profile, list(layers), windows_per_pass=8):
        started = profile.last = time.perf_counter()
        with profile.phase(profile_blocks.TOP):
            reference_prune(model, token_ids(), "wanda")
        total = time.perf_counter() - started
    assert abs(sum(profile.seconds.values()) - total) < 1e-3
    for block in ("0", "1"):  # the reference loop propagates every block, the last one too
        assert profile.windows[(block, "statistics pass")] == 8 and profile.windows[(block, "propagate")] == 8
        assert profile.seconds[(block, "prune / solve")] > 0
    assert "forward" not in vars(layers[0])
    assert float((layers[0].mlp.down_proj.weight == 0).float().mean()) == 0.5
