"""The undo log: originals spilled to an anonymous temporary file, restored bit for bit, the file closed at the end."""

from __future__ import annotations

import logging
import os
import tempfile

import pytest
import torch
from torch import nn

from optimum_si import SIPruner
from optimum_si.modeling import weights as weights_module
from optimum_si.modeling.weights import UndoLog
from tests.conftest import snapshot, tiny_model, token_ids


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8).clone()


def _odd_module() -> nn.Module:
    module = nn.Module()
    module.a = nn.Parameter(torch.tensor([-0.0, 0.0, float("nan"), float("inf"), 1e-45, -3.5]))  # bits, not values
    module.b = nn.Parameter(torch.randn(3, 5).to(torch.bfloat16))
    module.c = nn.Parameter(torch.randn(4, 6, dtype=torch.float16).t())  # not contiguous
    module.d = nn.Parameter(torch.randn(()))  # 0-dim
    module.e = nn.Parameter(torch.empty(0, 7))
    return module


@pytest.fixture
def opened(monkeypatch):
    """Every undo file opened during the test."""
    files = []
    real = tempfile.TemporaryFile

    def tracking(*args, **kwargs):
        files.append(real(*args, **kwargs))
        return files[-1]

    monkeypatch.setattr(weights_module.tempfile, "TemporaryFile", tracking)
    return files


def test_spilled_originals_come_back_bit_for_bit_and_hold_no_ram(tmp_path, opened):
    module = _odd_module()
    names = ["a", "b", "c", "d", "e"]
    before = {name: _bits(getattr(module, name)) for name in names}
    undo = UndoLog(directory=str(tmp_path))
    with torch.no_grad():
        for name in names:
            undo.record(module, name)
            undo.record(module, name)  # only the first original counts
            getattr(module, name).fill_(7.0)
    assert undo.memory_bytes == 0
    assert undo.spilled_bytes == sum(getattr(module, n).numel() * getattr(module, n).element_size() for n in names)
    assert len(opened) == 1 and not os.listdir(tmp_path)  # the file has no name in the folder
    undo.restore()
    for name in names:
        assert torch.equal(_bits(getattr(module, name)), before[name]), name
    assert opened[0].closed and undo.spilled_bytes == 0


def test_clear_closes_the_file_and_a_disabled_log_opens_none(opened):
    module = _odd_module()
    undo = UndoLog()
    undo.record(module, "a")
    undo.clear()
    assert len(opened) == 1 and opened[0].closed
    UndoLog(enabled=False).record(module, "b")
    assert len(opened) == 1


def test_a_refused_disk_keeps_the_originals_in_memory(tmp_path, caplog):
    module = _odd_module()
    before = _bits(module.b)
    undo = UndoLog(directory=str(tmp_path / "missing"))
    with caplog.at_level(logging.WARNING, logger="optimum_si.modeling.weights"):
        undo.record(module, "b")
    assert "keeping them in memory" in caplog.text
    assert undo.spilled_bytes == 0 and undo.memory_bytes == module.b.numel() * 2
    with torch.no_grad():
        module.b.zero_()
    undo.restore()
    assert torch.equal(_bits(module.b), before)


def test_a_tensor_without_a_byte_view_stays_in_memory_and_the_rest_still_spills(monkeypatch, opened):
    module = _odd_module()
    before = {name: _bits(getattr(module, name)) for name in ("a", "b")}
    real = weights_module._as_bytes

    def refuse_bf16(tensor):
        if tensor.dtype == torch.bfloat16:
            raise RuntimeError("no byte view")
        return real(tensor)

    monkeypatch.setattr(weights_module, "_as_bytes", refuse_bf16)
    undo = UndoLog()
    undo.record(module, "b")
    undo.record(module, "a")
    assert undo.memory_bytes == module.b.numel() * 2 and undo.spilled_bytes == module.a.numel() * 4
    with torch.no_grad():
        module.a.zero_()
        module.b.zero_()
    undo.restore()
    assert all(torch.equal(_bits(getattr(module, name)), bits) for name, bits in before.items())


def test_in_memory_log_when_asked(opened):
    module = _odd_module()
    before = _bits(module.c)
    undo = UndoLog(spill=False)
    undo.record(module, "c")
    with torch.no_grad():
        module.c.zero_()
    undo.restore()
    assert torch.equal(_bits(module.c), before) and not opened


@pytest.mark.parametrize("induction", [False, True])
def test_a_failure_in_the_last_block_restores_every_weight_bit_for_bit(induction, opened):
    model = tiny_model("llama")
    before = {name: _bits(value) for name, value in snapshot(model).items()}
    logs = []

    class Watched(UndoLog):
        def restore(self) -> None:
            logs.append((self.spilled_bytes, self.memory_bytes))
            super().restore()

    # The last block's down_proj sees NaN inputs: its statistics are refused once every earlier block is pruned.
    model.model.layers[-1].mlp.down_proj.register_forward_pre_hook(lambda module, args: (args[0] * float("nan"),))
    pruner = SIPruner(method="wanda", induction=induction, num_samples=8, seqlen=32, show_progress=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("optimum_si.runs.in_memory.UndoLog", Watched)
        with pytest.raises(FloatingPointError):
            pruner.prune(model, dataset=token_ids())
    spilled, in_memory = logs[0]
    assert spilled > 0 and in_memory == 0  # block 0 and what SI folded went to the file
    after = model.state_dict()
    changed = [name for name, bits in before.items() if not torch.equal(_bits(after[name]), bits)]
    assert not changed, changed[:5]
    assert opened and all(f.closed for f in opened)


def test_a_successful_run_closes_the_undo_file(opened):
    model = tiny_model("llama")
    SIPruner(method="sparsegpt", num_samples=8, seqlen=32, show_progress=False).prune(model, dataset=token_ids())
    assert opened and all(f.closed for f in opened)
