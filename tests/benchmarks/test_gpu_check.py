"""benchmarks/gpu_check: the cpu mode end to end (the plumbing CI can run), a section stopped at its budget, and the
pure parts (memory model and projections, CPU comparisons, junit parsing, the asset pack's parts, the Markdown)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time

import pytest

from benchmarks.gpu_check import assets, cpu_tables, projection, summary
from benchmarks.gpu_check.child import SectionSkipped
from benchmarks.gpu_check.cuda_tests import parse_junit
from benchmarks.gpu_check.run import SCHEMA, new_document
from benchmarks.gpu_check.sections import SECTIONS, deadlines

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SECTION_FIELDS = {"title", "status", "budget_s", "seconds", "error", "needs", "notes", "records", "summary"}


def _check(out, work, *args, timeout=600):
    env = {**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--out", str(out), "--work", str(work),
                           "--assets", str(work / "no-pack"), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu-check")
    started = time.monotonic()
    result = _check(root / "out", root / "work", "--cpu")
    return root / "out", result, time.monotonic() - started


def test_cpu_mode_writes_the_whole_schema_and_the_markdown(cpu_run):
    out, result, _seconds = cpu_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    doc = json.loads((out / "gpu_check.json").read_text())
    assert doc["schema"] == SCHEMA and doc["mode"] == "cpu" and doc["finished"] is True
    assert list(doc["sections"]) == list(SECTIONS)
    for name, section in doc["sections"].items():
        assert set(section) == SECTION_FIELDS, name
        assert section["status"] == "ok", (name, section["error"])
        assert section["records"], name
    sections = doc["sections"]
    env = sections["environment"]["records"][0]
    assert env["kind"] == "environment" and env["cuda_available"] is False
    assert set(sections["environment"]["records"][1]["sections"]) == {"cuda_tests", "smollm2", "llama8b",
                                                                      "semi_structured"}
    tests = sections["cuda_tests"]["summary"]
    assert tests["total"] >= 10 and tests["skipped"] == tests["total"] and tests["exit_code"] == 0
    assert (out / "pytest_gpu.xml").is_file()
    rows = [r for r in sections["smollm2"]["records"] if r["kind"] == "prune"]
    assert {(r["method"], r["impl"]) for r in rows} >= {("wanda", "reference"), ("sparsegpt", "optimum-si")}
    assert all(r["ppl"] > 1 and r["prune_s"] > 0 and not r.get("error") for r in rows)
    assert any(r["induction"] for r in rows) and any(r["pattern"] == "2:4" for r in rows)
    streamed = [r for r in sections["llama8b"]["records"] if r["kind"] == "streamed"]
    assert [r["run"] for r in streamed] == ["wanda", "sparsegpt", "si-wanda"]
    for r in streamed:
        assert r["output_complete"] and len(r["blocks"]) == 2 and r["sparsity"] == pytest.approx(0.5)
        assert r["projection"]["llama3-70b"]["total_s"] > r["projection"]["llama3-8b"]["total_s"] > 0
        assert r["memory_model"]["predicted_mb"] > 0
    conversion = sections["semi_structured"]["records"][0]
    assert conversion["kind"] == "conversion" and "NVIDIA GPU" in conversion["refused"]
    assert any(r["kind"] == "matmul" and r["dense_ms"] > 0 for r in sections["semi_structured"]["records"])
    text = (out / "gpu_check.md").read_text()
    for heading in ("# optimum-si GPU check (cpu mode)", "## 1. CUDA tests", "## 2. SmolLM2-135M", "## 3. Llama-3-8B",
                    "## 4. 2:4 output"):
        assert heading in text
    assert "| wanda 50% (reference loop) |" in text and "| si-wanda |" in text
    assert "===== llama8b" in (out / "gpu_check.log").read_text()


def test_a_section_past_its_budget_is_stopped_and_the_document_says_so(tmp_path):
    result = _check(tmp_path / "out", tmp_path / "work", "--cpu", "--sections", "llama8b", "--budget-s", "2",
                    timeout=120)
    assert result.returncode == 1
    doc = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    section = doc["sections"]["llama8b"]
    assert list(doc["sections"]) == ["llama8b"] and doc["finished"]
    assert section["status"] == "timed_out" and "stopped at its budget" in section["error"]
    assert "timed_out" in (tmp_path / "out" / "gpu_check.md").read_text()


def test_deadlines_are_cumulative_shares_of_the_budget():
    ends = deadlines(["smollm2", "semi_structured"], 100.0, 42.0)
    share = SECTIONS["smollm2"].share_s / (SECTIONS["smollm2"].share_s + SECTIONS["semi_structured"].share_s)
    assert ends["smollm2"] == pytest.approx(100 + 42 * share)
    assert ends["semi_structured"] == pytest.approx(142.0)


# ------------------------------------------------------------------------------------------------ projection
def test_memory_model_matches_the_figures_of_docs_memory_md():
    shape = projection.LLAMA3_70B
    assert shape.params == pytest.approx(856e6, rel=0.01)
    gb = {run: projection.block_peak_bytes(run, shape, 2048) / 1e9 for run in projection.MEMORY_FORMULAS}
    assert gb == {"wanda": pytest.approx(4.3, abs=0.05), "sparsegpt": pytest.approx(29.4, abs=0.05),
                  "si-wanda": pytest.approx(19.4, abs=0.05)}
    with pytest.raises(ValueError, match="no memory formula"):
        projection.block_peak_bytes("alps", shape, 2048)


def test_shape_of_a_llama3_config():
    config = {"hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8,
              "vocab_size": 128256, "num_hidden_layers": 2}
    assert projection.shape_of(config) == projection.BlockShape(4096, 14336, 1024, 128256, 2)


def test_a_run_projected_to_its_own_shape_is_its_steady_blocks_times_the_depth():
    shape = projection.LLAMA3_8B
    blocks = [{"seconds": 9.0, "prune_s": 3.0}, {"seconds": 4.0, "prune_s": 1.0}, {"seconds": 6.0, "prune_s": 2.0}]
    result = projection.project_run(blocks, 20.0, shape, shape, 2048, solves=True)
    assert result["seconds_per_block"] == pytest.approx(5.0)  # the first block (warm-up) is left out
    assert result["total_s"] == pytest.approx(5.0 * 32 + 20.0)


def test_projection_to_70b_scales_each_phase_by_its_own_cost():
    small, large = projection.LLAMA3_8B, projection.LLAMA3_70B
    factors = projection.scale_factors(small, large, 2048)
    assert factors.outside == pytest.approx(2.0) and factors.mask == pytest.approx(large.params / small.params)
    assert factors.solve > factors.mask > 1 and 3 < factors.forward < factors.mask
    block = {"seconds": 10.0, "prune_s": 4.0}
    assert projection.project_block_seconds(block, factors, solves=True) == pytest.approx(
        6 * factors.forward + 4 * factors.solve)
    assert projection.project_block_seconds(block, factors, solves=False) == pytest.approx(
        6 * factors.forward + 4 * factors.mask)


# ------------------------------------------------------------------------------------------------ CPU tables
def test_gpu_rows_are_compared_with_the_quality_table_and_the_reference_band():
    wanda = cpu_tables.quality_record("wanda-50%")
    assert wanda is not None
    close = cpu_tables.cpu_comparison("wanda-50%", "wanda", "50%", False, "optimum-si", wanda["ppl"] * 1.005)
    assert close["within"] and close["band"] == "mask" and close["cpu_prune_s"] == wanda["prune_s"]
    far = cpu_tables.cpu_comparison("wanda-50%", "wanda", "50%", False, "optimum-si", wanda["ppl"] * 1.02)
    assert not far["within"] and far["rel_diff"] == pytest.approx(0.02)
    si = cpu_tables.cpu_comparison("sparsegpt-2:4-si", "sparsegpt", "2:4", True, "optimum-si", 170.0)
    assert si["band"] == "si" and si["tolerance"] == 0.05 and si["within"]
    reference = cpu_tables.cpu_comparison("sparsegpt-50%", "sparsegpt", "50%", False, "reference", 91.0)
    assert reference["band"] == "reference" and reference["within"]  # 88.88-89.85, +2 %
    assert cpu_tables.cpu_comparison("wanda-4:8", "wanda", "4:8", False, "reference", 160.0) is None  # no reference
    assert cpu_tables.cpu_comparison("no-such-row", "wanda", "50%", False, "optimum-si", 1.0) is None


# ------------------------------------------------------------------------------------------------ junit, assets
def test_junit_cases_become_records(tmp_path):
    xml = tmp_path / "junit.xml"
    xml.write_text('<testsuites><testsuite name="pytest">'
                   '<testcase classname="tests.test_gpu" name="test_a" time="1.5"/>'
                   '<testcase classname="tests.test_gpu" name="test_b" time="0.1"><failure message="boom">tb'
                   '</failure></testcase>'
                   '<testcase classname="tests.test_gpu" name="test_c" time="0"><skipped message="no CUDA"/>'
                   '</testcase></testsuite></testsuites>')
    records = parse_junit(xml)
    assert [(r["test"], r["outcome"], r["message"]) for r in records] == [
        ("tests.test_gpu::test_a", "passed", None), ("tests.test_gpu::test_b", "failed", "boom"),
        ("tests.test_gpu::test_c", "skipped", "no CUDA")]
    counts = summary.summarise("cuda_tests", records, "gpu")
    assert (counts["passed"], counts["failed"], counts["skipped"], counts["total"]) == (1, 1, 1, 3)


def test_the_gguf_travels_in_parts_and_is_checked_when_joined(tmp_path):
    source = tmp_path / "model.gguf"
    data = os.urandom(10_000)
    source.write_bytes(data)
    pack = tmp_path / "pack"
    parts = assets.split_file(source, pack, 4096)
    assert [p["folder"] for p in parts] == ["p1", "p2", "p3"] and [p["bytes"] for p in parts] == [4096, 4096, 1808]
    manifest = {"gguf_file": "model.gguf", "gguf_bytes": len(data), "gguf_sha256": hashlib.sha256(data).hexdigest(),
                "parts": parts}
    joined = assets.join_parts(pack, manifest, tmp_path / "joined.gguf")
    assert joined.read_bytes() == data

    (pack / "p2" / assets.PART).unlink()
    with pytest.raises(SectionSkipped, match="lacks part") as missing:
        assets.join_parts(pack, manifest, tmp_path / "again.gguf")
    assert any("p2" in need for need in missing.value.needs)
    (pack / "p2" / assets.PART).write_bytes(b"x" * 4096)
    with pytest.raises(RuntimeError, match="damaged"):
        assets.join_parts(pack, manifest, tmp_path / "again.gguf")


def test_weights_digest_ignores_the_file_layout(tmp_path):
    import torch
    from safetensors.torch import save_file

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    tensors = {"x": torch.arange(6.0).reshape(2, 3), "y": torch.ones(4, dtype=torch.bfloat16)}
    save_file(tensors, a / "model.safetensors")
    save_file({"y": tensors["y"]}, b / "model-00001.safetensors")
    save_file({"x": tensors["x"]}, b / "model-00002.safetensors", metadata={"format": "pt"})
    assert assets.weights_digest(a) == assets.weights_digest(b)
    save_file({"x": tensors["x"] + 1, "y": tensors["y"]}, b / "model-00002.safetensors")
    assert assets.weights_digest(a) != assets.weights_digest(b)


# ------------------------------------------------------------------------------------------------ summary
def _prune(key, impl, seconds, ppl, cpu=None, label=None):
    return {"kind": "prune", "key": key, "impl": impl, "label": label or key, "prune_s": seconds, "ppl": ppl,
            "cpu": cpu}


def test_smollm2_summary_gives_the_ratios_and_the_rows_outside_their_band():
    records = [_prune("wanda-50%", "optimum-si", 2.0, 95.3, {"within": True, "cpu_prune_s": 79.0}),
               _prune("wanda-50%", "reference", 5.0, 95.2), _prune("wanda-50%-si", "optimum-si", 3.0, 88.5,
                                                                   {"within": False}, label="wanda 50% + SI"),
               {"kind": "prune", "key": "sparsegpt-50%", "impl": "optimum-si", "label": "x", "error": "boom"}]
    result = summary.summarise("smollm2", records, "gpu")
    assert result["wanda_vs_reference_loop"] == pytest.approx(2.5)
    assert result["si_wanda_over_wanda"] == pytest.approx(1.5)
    assert result["wanda_gpu_over_cpu_speed"] == pytest.approx(39.5)
    assert (result["compared"], result["within_tolerance"], result["outside_tolerance"]) == (2, 1, ["wanda 50% + SI"])


def test_markdown_of_a_document_with_a_failed_and_a_pending_section():
    doc = new_document("gpu", 480.0, ["python"], ["environment", "smollm2", "semi_structured"])
    doc["sections"]["smollm2"].update(status="failed", error="RuntimeError: CUDA error\ntraceback lines")
    doc["sections"]["smollm2"]["records"].append({"kind": "prune", "key": "wanda-50%", "impl": "optimum-si",
                                                  "label": "wanda 50%", "error": "RuntimeError: CUDA error"})
    for name, section in doc["sections"].items():
        section["summary"] = summary.summarise(name, section["records"], "gpu")
    text = summary.markdown(doc)
    assert "| smollm2 | failed |" in text and "RuntimeError: CUDA error" in text
    assert "| semi_structured | pending |" in text and "NOT finished" in text
    assert "## 2. SmolLM2" in text and "## 4. 2:4 output" in text  # numbered as in a full run


def test_markdown_of_a_gpu_document_renders_every_gpu_only_figure():
    """The GPU-only branches (CPU comparisons, device peaks, a converted model, speed-ups) on made-up records."""
    from benchmarks.gpu_check.smollm2 import _line

    doc = new_document("gpu", 480.0, ["python"], list(SECTIONS))
    env = {"kind": "environment", "name": "NVIDIA H100 80GB HBM3", "capability": "9.0", "memory_gb": 79.2,
           "torch": "2.11.0+cu130", "torch_cuda": "13.0", "transformers": "5.17.0", "optimum_si": "0.2.0",
           "commit": "0123456789abcdef", "cuda_available": True}
    cpu = cpu_tables.cpu_comparison("wanda-50%", "wanda", "50%", False, "optimum-si", 95.5)
    ref = cpu_tables.cpu_comparison("wanda-50%", "wanda", "50%", False, "reference", 95.4)
    assert "CPU 95.18/95.22" in _line("wanda 50% (reference loop)", 3.0, 95.4, ref)
    block = {"index": 0, "seconds": 2.0, "stats_s": 0.5, "prune_s": 0.5, "propagate_s": 0.5, "induction_s": None,
             "peak_device_mb": 1100.0, "above_start_mb": 1000.0, "peak_reserved_mb": 1500.0}
    shape = projection.LLAMA3_8B
    streamed = {"kind": "streamed", "run": "wanda", "method": "wanda", "induction": False, "samples": 128,
                "seqlen": 2048, "blocks": [block, {**block, "index": 1, "seconds": 1.5}], "outside_blocks_s": 12.0}
    from benchmarks.gpu_check.llama8b import _memory_model, _projections

    streamed["memory_model"] = _memory_model("wanda", shape, 2048, 1100.0)
    streamed["projection"] = _projections("wanda", streamed["blocks"], 12.0, shape, 2048,
                                          streamed["memory_model"]["measured_over_predicted"])
    records = {
        "environment": [env],
        "cuda_tests": [{"kind": "test", "test": "tests.test_gpu::test_x", "outcome": "failed", "seconds": 1.0,
                        "message": "assert 0.98 > 0.99\nmore"}, {"kind": "pytest", "exit_code": 1}],
        "smollm2": [{"kind": "dense", "key": "dense", "label": "dense model", "impl": "-", "ppl": 39.51,
                     "setup": {"model": "SmolLM2", "source": "pack", "weights_match_cpu_tables": True, "tokens": "pack"},
                     "cpu": cpu_tables.cpu_comparison("dense", "dense", "-", False, "optimum-si", 39.51)},
                    {**_prune("wanda-50%", "optimum-si", 2.0, 95.5, cpu, label="wanda 50%"), "above_start_mb": 80.0},
                    _prune("wanda-50%", "reference", 3.0, 95.4, ref, label="wanda 50% (reference loop)")],
        "llama8b": [{"kind": "checkpoint", "shape_name": "llama3-8b", "shape": shape.as_dict(), "bytes": 3e9,
                     "build_s": 20.0, "samples": 128, "seqlen": 2048}, streamed],
        "semi_structured": [{"kind": "conversion", "model": "SmolLM2", "converted": 210, "weight_class": "X",
                             "logits_max_abs_diff": 0.01, "logits_max_abs": 30.0, "dense_ppl": 1700.0,
                             "sparse_ppl": 1700.2, "dense_forward_ms": 9.0, "sparse_forward_ms": 8.0,
                             "forward_tokens": 4096},
                            {"kind": "matmul", "linear": "8B down_proj", "out": 4096, "in": 14336, "tokens": 2048,
                             "dense_ms": 0.5, "sparse_ms": 0.4, "speedup": 1.25, "max_rel_error": 0.004}],
    }
    for name, section in doc["sections"].items():
        section.update(status="ok", records=records[name])
        section["summary"] = summary.summarise(name, section["records"], "gpu")
    text = summary.markdown(doc)
    assert "NVIDIA H100 80GB HBM3 (compute capability 9.0, 79 GiB)" in text
    assert "| tests.test_gpu::test_x | failed | assert 0.98 > 0.99 |" in text
    cpu_seconds = cpu["cpu_prune_s"]  # the committed quality study's, whatever machine measured it
    assert f"| wanda 50% | 2.0 | {cpu_seconds:.1f} | 80 | 95.50 | 95.22 | +0.30% | 1.0% | yes |" in text
    assert "optimum-si is 1.50x the speed of the reference loop" in text
    assert "| wanda | 2.0 / 1.5 | 1.07 / 1.07 |" in text
    assert "210 Linears converted" in text and "| 8B down_proj | 4096x14336 | 2048 | 0.500 | 0.400 | 1.25 |" in text
    assert doc["sections"]["llama8b"]["summary"]["runs"]["wanda"]["projected_8b_s"] == pytest.approx(
        1.5 * 32 + 12.0)
