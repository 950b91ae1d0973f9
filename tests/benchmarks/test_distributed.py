"""benchmarks/distributed.py without the real model: arguments, the torchrun commands, one rank's record on a tiny
model (one process: no bytes sent), and the table written from rank records."""

from __future__ import annotations

import json
import os

import pytest

from benchmarks import distributed as bench
from tests.conftest import tiny_model, token_ids


def test_defaults_and_commands():
    args = bench.parse_args([])
    assert args.methods == ["wanda", "sparsegpt", "si-wanda"] and args.procs == [1, 2]
    cmd = bench.command("si-wanda", 2, 1, "/tmp/x", None)
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    assert cmd[6:] == ["-m", "benchmarks.distributed", "--one", "si-wanda", "--out", "/tmp/x", "--threads", "1"]
    assert bench.threads_for(2, None) == max(1, (os.cpu_count() or 1) // 2) and bench.threads_for(2, 3) == 3


@pytest.mark.parametrize("argv", [["--methods", "alps"], ["--procs", "0"]])
def test_bad_arguments_exit_with_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(argv)
    assert exit_info.value.code == 2 and "usage" in capsys.readouterr().err


def test_one_rank_record_on_a_tiny_model(tmp_path, monkeypatch):
    from benchmarks import protocol

    monkeypatch.setattr(protocol, "load_model_and_tokenizer", lambda: (tiny_model("llama"), None))
    monkeypatch.setattr(protocol, "calibration_ids", lambda _tok: token_ids(4, 32))
    monkeypatch.setattr(protocol, "eval_ids", lambda _tok: token_ids(1, 64, seed=1))
    monkeypatch.setattr(protocol, "CALIB_SAMPLES", 4)
    monkeypatch.setattr(protocol, "CALIB_SEQLEN", 32)
    monkeypatch.setattr(protocol, "EVAL_SEQLEN", 32)
    bench.run_rank("wanda", str(tmp_path), 1, 2)
    record = json.loads((tmp_path / "rank0.json").read_text())
    assert record["procs"] == 1 and record["bytes_total"] == 0 and len(record["blocks"]) == 2
    assert all(b["bytes"] == 0 and b["seconds"] > 0 for b in record["blocks"]) and record["ppl"] > 1
    row = bench.summarise([record])
    assert row["block_seconds"][0] == [b["seconds"] for b in record["blocks"]]


def test_table_from_rows():
    def row(procs, prune_s, ppl, sent):
        return {"method": "wanda", "procs": procs, "threads": 2 // procs, "ppl": ppl, "sparsity": 0.5,
                "prune_s": prune_s, "block_seconds": [[1.0, 3.0]] * procs, "block_bytes": [[sent, sent]] * procs,
                "bytes_per_rank": [2 * sent] * procs, "eval": "jargon first 40 x 512", "torch": "2.x"}

    table = bench.markdown([row(1, 80.0, 95.0, 0), row(2, 50.0, 95.0, 2_000_000)])
    assert "| wanda | 1 | 2 | 80.0 | 1.00x | 95.000 | 1.00000 | 2.00 | 0.00 |" in table
    assert "| wanda | 2 | 1 | 50.0 | 1.60x | 95.000 | 1.00000 | 2.00 / 2.00 | 2.00 |" in table
