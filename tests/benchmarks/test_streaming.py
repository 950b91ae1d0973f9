"""benchmarks/streaming_memory.py on tiny shapes: checkpoint building, one measured streaming run, acceptance maths."""

import json
import os
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from benchmarks import streaming_memory as sm
from optimum_si.checkpoint.files import INDEX_NAME
from optimum_si.checkpoint.index import CheckpointIndex

SHAPE = "tiny-gqa"
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _block_keys(depth):
    return {f"model.layers.{i}.{part}.{name}.weight" for i in range(depth)
            for part, names in (("self_attn", LINEARS[:4]), ("mlp", LINEARS[4:])) for name in names}


def test_checkpoints_are_hard_links_to_a_reused_pool_and_hide_deeper_blocks(tmp_path, monkeypatch):
    deep = sm.build_checkpoint(SHAPE, 3, tmp_path, log=lambda *_: None)
    pool = tmp_path / "bench-checkpoints" / SHAPE / "pool"
    stamps = {p.name: p.stat().st_mtime_ns for p in pool.glob("*.safetensors")}
    assert set(stamps) == {"block-00000.safetensors", "block-00001.safetensors", "block-00002.safetensors",
                           "other.safetensors"}
    shallow = sm.build_checkpoint(SHAPE, 1, tmp_path, log=lambda *_: None)
    assert {p.name: p.stat().st_mtime_ns for p in pool.glob("*.safetensors")} == stamps  # reused, not rebuilt

    index = CheckpointIndex(os.fspath(shallow))
    assert not any(k.startswith("model.layers.1.") for k in index.shapes)
    assert _block_keys(1) <= set(index.shapes)
    assert {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} <= set(index.shapes)
    assert set(index.dtypes.values()) == {"BF16"}
    config = json.loads((shallow / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["num_key_value_heads"] == 2 and not config["tie_word_embeddings"]
    shards = sorted(set(json.loads((shallow / INDEX_NAME).read_text())["weight_map"].values()))
    assert shards == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert os.path.samefile(shallow / shards[0], pool / "block-00000.safetensors")
    assert os.path.samefile(shallow / shards[1], pool / "other.safetensors")
    assert sm.checkpoint_bytes(shallow) < sm.checkpoint_bytes(deep)

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(deep)
    assert model.config.num_hidden_layers == 3 and model.dtype == torch.bfloat16
    weight = model.model.layers[2].mlp.down_proj.weight.float()
    assert abs(weight.std().item() - sm.STD) < 0.002
    assert torch.equal(model.model.layers[2].input_layernorm.weight.float(), torch.ones(128))
    with torch.no_grad():
        assert torch.isfinite(model(torch.arange(16).unsqueeze(0)).logits).all()

    monkeypatch.setattr(sm, "STD", 0.01)  # another spec: the pool is rebuilt, not reused
    sm.build_checkpoint(SHAPE, 1, tmp_path, log=lambda *_: None)
    assert not (pool / "block-00002.safetensors").exists()
    tensor = load_file(pool / "block-00000.safetensors")["model.layers.0.mlp.up_proj.weight"].float()
    assert abs(tensor.std().item() - 0.01) < 0.001


def test_end_to_end_tiny_run_writes_results_and_a_complete_checkpoint(tmp_path):
    results = tmp_path / "results"
    out = sm.run_benchmark([SHAPE], [2], samples=2, seqlen=16, name="tiny", results_dir=results,
                           cache_dir=tmp_path, keep_outputs=True, log=lambda *_: None)
    data = json.loads((results / "tiny.json").read_text())
    assert data["records"] == out["records"] and len(data["records"]) == 1
    record = data["records"][0]
    assert record["shape"] == SHAPE and record["depth"] == 2 and record["samples"] == 2 and record["seqlen"] == 16
    assert len(record["block_seconds"]) == 2 and all(s > 0 for s in record["block_seconds"])
    assert record["total_seconds"] >= record["prune_seconds"] >= sum(record["block_seconds"]) * 0.99
    assert record["peak_rss_mb"] >= record["rss_before_prune_mb"] > 50
    assert record["peak_rss_mb"] >= record["peak_rss_anon_mb"] > 0 and record["peak_rss_file_mb"] > 0
    assert len(record["block_peak_rss_mb"]) == 2 and record["finalise_peak_rss_mb"] > 0
    checkpoint = tmp_path / "bench-checkpoints" / SHAPE / "L2"
    assert record["checkpoint_bytes"] == sm.checkpoint_bytes(checkpoint) > 0
    assert record["output"] == {"complete": True, "missing": [], "extra": [], "wrong_shape": [], "block_sparsity": 0.5}
    assert record["sparsity"] == 0.5 and record["output_bytes"] > record["checkpoint_bytes"]
    assert data["acceptance"]["below_checkpoint"][SHAPE]["depth"] == 2
    assert f"| {SHAPE} | 2 |" in (results / "tiny.md").read_text()

    # The kept output, checked here independently of the child's own check.
    output = record["output_dir"]
    source = CheckpointIndex(os.fspath(checkpoint))
    written = {}
    for name in os.listdir(output):
        if name.endswith(".safetensors"):
            written.update(load_file(os.path.join(output, name)))
    assert set(written) == set(source.shapes) and os.path.isfile(os.path.join(output, "si_config.json"))
    for key in _block_keys(2):
        rows = written[key] == 0
        assert (rows.sum(1) == written[key].shape[1] // 2).all(), key  # Wanda: 50 % per output row
    for key in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        assert torch.equal(written[key], source.read(key))


def test_run_case_deletes_the_output_and_reports_child_failures(tmp_path, monkeypatch):
    def fake_child(command, **kwargs):
        save_dir = command[command.index("--one") + 2]
        os.makedirs(save_dir)
        return subprocess.CompletedProcess(command, 0, stdout='log line\n{"depth": 1}\n', stderr="")

    monkeypatch.setattr(sm.subprocess, "run", fake_child)
    record = sm.run_case(SHAPE, 1, 2, 16, tmp_path, log=lambda *_: None)
    assert record["depth"] == 1 and record["shape"] == SHAPE and record["checkpoint_bytes"] > 0
    assert not (tmp_path / "bench-checkpoints" / "_runs" / f"{SHAPE}-L1").exists()

    def failing_child(command, **kwargs):  # a run that dies half-way leaves its hidden partial folder and lock
        runs = tmp_path / "bench-checkpoints" / "_runs"
        (runs / f".{SHAPE}-L1.optimum-si-partial").mkdir()
        (runs / f".{SHAPE}-L1.optimum-si.lock").write_text("")
        return subprocess.CompletedProcess(command, 1, "", "boom")

    monkeypatch.setattr(sm.subprocess, "run", failing_child)
    with pytest.raises(RuntimeError, match="boom"):
        sm.run_case(SHAPE, 1, 2, 16, tmp_path, log=lambda *_: None)
    assert os.listdir(tmp_path / "bench-checkpoints" / "_runs") == []  # the next run starts clean, not resumed


def _record(shape, depth, rss_mb, checkpoint_gb):
    return {"shape": shape, "depth": depth, "peak_rss_mb": rss_mb, "checkpoint_bytes": int(checkpoint_gb * 1e9)}


def test_acceptance_checks_pass_and_fail():
    flat = [_record("llama3-70b", 2, 9000, 7.6), _record("llama3-70b", 8, 10000, 17.9),
            _record("llama2-7b", 2, 2000, 1.3), _record("llama2-7b", 8, 2400, 3.8)]
    checks = sm.acceptance(flat)
    assert checks["flatness"]["llama3-70b"]["pass"] and checks["flatness"]["llama3-70b"]["ratio"] == pytest.approx(10 / 9)
    assert not checks["flatness"]["llama2-7b"]["pass"]  # x1.2 > x1.15
    assert checks["flatness_pass"] is False
    assert checks["acceptance_70b_below_checkpoint"] is True
    growing = [_record("llama3-70b", 2, 9000, 7.6), _record("llama3-70b", 8, 20000, 17.9)]
    checks = sm.acceptance(growing)
    assert checks["flatness_pass"] is False and checks["acceptance_70b_below_checkpoint"] is False
    assert sm.acceptance([_record("llama3-70b", 2, 9000, 7.6)])["acceptance_70b_below_checkpoint"] is None
    text = sm.markdown([dict(r, peak_rss_anon_mb=1, peak_rss_file_mb=1, rss_before_prune_mb=1, block_peak_rss_mb=[1],
                             block_seconds=[1.0], total_seconds=1.0, output_bytes=1) for r in flat])
    assert "(a) flatness, llama2-7b" in text and "FAIL" in text and "(b) llama3-70b at 8 blocks" in text
