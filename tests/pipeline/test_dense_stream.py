"""The dense model's own stream (`DenseStream`): one per run, shared by every stage whose target is global, and each
block's dense output computed once."""

from __future__ import annotations

import pytest

from optimum_si import SIConfig, SIPruner
from optimum_si.induction.stage import InductionStage
from optimum_si.pipeline import dense_stream
from optimum_si.pipeline.dense_stream import DenseStream
from optimum_si.reconstruction.stage import ReconstructionStage
from optimum_si.runs.setup import RunSetup
from tests.conftest import tiny_model, token_ids


def _run(monkeypatch, **recipe):
    """Prune a tiny Llama; returns the run's stages and how many block forwards the dense stream ran itself."""
    made, forwards = [], []
    stages_of = RunSetup.stages
    run_block = dense_stream.run_block

    def recording_stages(self, *args, **kwargs):
        made.append(stages_of(self, *args, **kwargs))
        return made[-1]

    def counting_run_block(*args, **kwargs):
        forwards.append(1)
        return run_block(*args, **kwargs)

    monkeypatch.setattr(RunSetup, "stages", recording_stages)
    monkeypatch.setattr(dense_stream, "run_block", counting_run_block)
    model = tiny_model("llama")
    SIPruner(method="wanda", num_samples=8, seqlen=32, show_progress=False, **recipe).prune(model,
                                                                                         dataset=token_ids())
    return made[0], len(forwards), len(model.model.layers)


def test_both_global_targets_share_one_stream_from_the_statistics_pass(monkeypatch):
    stages, forwards, _ = _run(monkeypatch, induction={"target": "global"}, reconstruction={"target": "global"})
    streams = [stage for stage in stages if isinstance(stage, DenseStream)]
    assert len(streams) == 1 and stages[-1] is streams[0]  # last: after its readers
    induction, reconstruction = (next(s for s in stages if isinstance(s, kind))
                                 for kind in (InductionStage, ReconstructionStage))
    assert induction.dense_stream is reconstruction.dense_stream is streams[0]
    assert forwards == 0  # SI routes the walker's statistics pass onto the stream: no forward of its own


@pytest.mark.parametrize("induction", [None, True], ids=["refit-alone", "with-local-si"])
def test_a_global_refit_runs_the_dense_block_once(monkeypatch, induction):
    stages, forwards, blocks = _run(monkeypatch, induction=induction, reconstruction={"target": "global"})
    assert sum(isinstance(stage, DenseStream) for stage in stages) == 1
    assert forwards == blocks


def test_local_targets_carry_no_stream(monkeypatch):
    stages, forwards, _ = _run(monkeypatch, induction=True, reconstruction=True)
    assert not any(isinstance(stage, DenseStream) for stage in stages) and forwards == 0


def test_a_global_target_without_the_stream_is_refused():
    config = SIConfig(method="wanda", induction={"target": "global"}, reconstruction={"target": "global"})
    with pytest.raises(ValueError, match="DenseStream"):
        InductionStage(config.induction, config.pruning_method, config.seed, config.n_m, None)
    with pytest.raises(ValueError, match="DenseStream"):
        ReconstructionStage(config.reconstruction, config.seed)
    InductionStage(config.induction, config.pruning_method, config.seed, config.n_m, None, prune=False)  # induce()
