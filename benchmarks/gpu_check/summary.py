"""The summary of each section (computed from its records, so a partial section has one too) and gpu_check.md."""

from __future__ import annotations

from typing import Any

from benchmarks.gpu_check.sections import SECTIONS


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _steady(blocks: list[dict]) -> list[dict]:
    return blocks[1:] if len(blocks) > 1 else blocks


def summarise(name: str, records: list[dict[str, Any]], mode: str) -> dict[str, Any]:
    if name == "cuda_tests":
        tests = [r for r in records if r.get("kind") == "test"]
        counts = {o: sum(1 for r in tests if r["outcome"] == o) for o in ("passed", "failed", "error", "skipped")}
        pytest = next((r for r in records if r.get("kind") == "pytest"), {})
        return {**counts, "total": len(tests), "exit_code": pytest.get("exit_code")}
    if name == "smollm2":
        return _summarise_smollm2(records)
    if name == "llama8b":
        runs = {}
        for r in records:
            if r.get("kind") != "streamed" or r.get("error"):
                continue
            steady = _steady(r["blocks"])
            memory = r["memory_model"]
            runs[r["run"]] = {
                "seconds_per_block": _mean([b["seconds"] for b in steady]),
                "peak_device_mb": memory["measured_mb"], "model_mb": memory["predicted_mb"],
                "measured_over_model": memory["measured_over_predicted"],
                "projected_8b_s": r["projection"]["llama3-8b"]["total_s"],
                "projected_70b_s": r["projection"]["llama3-70b"]["total_s"],
                "projected_70b_peak_mb": r["projection"]["llama3-70b"]["peak_device_mb_corrected"]
                or r["projection"]["llama3-70b"]["peak_device_mb_model"],
            }
        return {"runs": runs}
    if name == "semi_structured":
        conversion = next((r for r in records if r.get("kind") == "conversion"), {})
        speedups = [r["speedup"] for r in records if r.get("kind") == "matmul" and r.get("speedup")]
        return {"converted": conversion.get("converted"), "refused": conversion.get("refused"),
                "matmuls": sum(1 for r in records if r.get("kind") == "matmul"),
                "speedup_min": min(speedups) if speedups else None, "speedup_max": max(speedups) if speedups else None}
    if name == "environment":
        env = next((r for r in records if r.get("kind") == "environment"), {})
        return {k: env.get(k) for k in ("name", "capability", "memory_gb", "torch", "torch_cuda", "transformers",
                                        "optimum_si", "commit")}
    return {}


def _summarise_smollm2(records: list[dict[str, Any]]) -> dict[str, Any]:
    rows = {(r["key"], r["impl"]): r for r in records if r.get("kind") in ("prune", "dense") and "ppl" in r}
    compared = [r for r in rows.values() if r.get("cpu")]
    result: dict[str, Any] = {"rows": len(rows), "compared": len(compared),
                              "within_tolerance": sum(1 for r in compared if r["cpu"]["within"]),
                              "outside_tolerance": [r["label"] for r in compared if not r["cpu"]["within"]]}
    for method in ("wanda", "sparsegpt"):
        ours, ref = rows.get((f"{method}-50%", "optimum-si")), rows.get((f"{method}-50%", "reference"))
        if ours and ref:
            result[f"{method}_vs_reference_loop"] = ref["prune_s"] / ours["prune_s"]
        si = rows.get((f"{method}-50%-si", "optimum-si"))
        if ours and si:
            result[f"si_{method}_over_{method}"] = si["prune_s"] / ours["prune_s"]
        if ours and ours.get("cpu") and ours["cpu"].get("cpu_prune_s"):
            result[f"{method}_gpu_over_cpu_speed"] = ours["cpu"]["cpu_prune_s"] / ours["prune_s"]
    return result


# -------------------------------------------------------------------------------------------------------- Markdown
def _num(value: Any, fmt: str = ".2f", none: str = "–") -> str:
    return none if value is None else format(value, fmt)


def _gb(mb: float | None) -> str:
    return "–" if mb is None else f"{mb / 1024:.2f}"


def markdown(doc: dict[str, Any]) -> str:
    sections = doc["sections"]
    env = sections.get("environment", {}).get("summary", {})
    lines = [f"# optimum-si GPU check ({doc['mode']} mode)", ""]
    lines.append(f"{env.get('name') or 'no CUDA device'}"
                 + (f" (compute capability {env['capability']}, {env['memory_gb']:.0f} GiB)" if env.get("name") else "")
                 + f"; torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), transformers {env.get('transformers')},"
                   f" optimum-si {env.get('optimum_si')}, commit {(env.get('commit') or 'unknown')[:12]}.")
    lines.append(f"Started {doc['started']}, updated {doc['updated']}; {doc['elapsed_s']:.0f} s of a "
                 f"{doc['budget_s']:.0f} s budget; {'finished' if doc['finished'] else 'NOT finished (still running or stopped)'}.")
    if doc["mode"] == "cpu":
        lines.append("CPU mode: the plumbing on tiny models; no figure here says anything about a GPU.")
    lines += ["", "| section | status | seconds | budget s | note |", "|---|---|---:|---:|---|"]
    for name, s in sections.items():
        note = (s["error"] or "").splitlines()[0] if s["error"] else "; ".join(s["notes"][-1:])
        lines.append(f"| {name} | {s['status']} | {_num(s['seconds'], '.0f')} | {_num(s['budget_s'], '.0f')} | "
                     f"{note.replace('|', '/')[:160]} |")
    renderers = {"environment": _md_environment, "cuda_tests": _md_tests, "smollm2": _md_smollm2,
                 "llama8b": _md_llama8b, "semi_structured": _md_semi}
    for name, s in sections.items():
        number = list(SECTIONS).index(name)  # the same number whichever sections ran
        lines += ["", f"## {number}. {s['title']} (`{name}`: {s['status']})", ""]
        if s["needs"]:
            lines.append("Needs: " + "; ".join(s["needs"]) + ".")
        if s["records"]:
            lines += renderers[name](s)
        if s["error"]:
            lines += ["", "```", s["error"].strip()[-3000:], "```"]
    return "\n".join(lines) + "\n"


def _md_environment(s: dict) -> list[str]:
    lines = []
    for r in s["records"]:
        if r.get("kind") == "environment":
            keys = ("python", "torch", "torch_cuda", "cudnn", "driver", "transformers", "accelerate", "safetensors",
                    "name", "capability", "memory_gb", "multiprocessors", "bf16_supported", "cusparselt",
                    "tf32_matmul", "float32_matmul_precision", "nccl", "device_count", "cpu_cores", "host_memory_gb",
                    "work_disk_free_gb")
            lines.append("; ".join(f"{k} {r[k]:.1f}" if isinstance(r.get(k), float) else f"{k} {r.get(k)}"
                                   for k in keys if k in r))
        elif r.get("kind") == "needs":
            lines += ["", "| section | ready | missing | found |", "|---|---|---|---|"]
            for name, n in r["sections"].items():
                lines.append(f"| {name} | {'yes' if n['ready'] else 'no'} | {'; '.join(n['missing']) or '–'} | "
                             f"{'; '.join(n['found']) or '–'} |")
    return lines


def _md_tests(s: dict) -> list[str]:
    summary = s["summary"]
    lines = [f"{summary['passed']} passed, {summary['failed']} failed, {summary['error']} errors, "
             f"{summary['skipped']} skipped of {summary['total']} (pytest exit status {summary['exit_code']}; junit "
             "XML in pytest_gpu.xml)."]
    bad = [r for r in s["records"] if r.get("kind") == "test" and r["outcome"] in ("failed", "error")]
    if bad:
        lines += ["", "| test | outcome | message |", "|---|---|---|"]
        lines += [f"| {r['test']} | {r['outcome']} | {(r['message'] or '').splitlines()[0][:200].replace('|', '/')} |"
                  if r["message"] else f"| {r['test']} | {r['outcome']} | |" for r in bad]
    return lines


def _md_smollm2(s: dict) -> list[str]:
    lines = ["| row | prune s | CPU prune s | peak device MB (above the model) | PPL | CPU PPL | diff | tolerance | "
             "within |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in s["records"]:
        if r.get("kind") not in ("dense", "prune"):
            continue
        if r.get("error"):
            lines.append(f"| {r['label']} | {r['error'][:120].replace('|', '/')} | | | | | | | |")
            continue
        cpu = r.get("cpu") or {}
        cpu_ppl = cpu.get("cpu_ppl")
        shown = "/".join(f"{v:.2f}" for v in cpu_ppl) if isinstance(cpu_ppl, (list, tuple)) else _num(cpu_ppl)
        lines.append(f"| {r['label']} | {_num(r.get('prune_s'), '.1f')} | {_num(cpu.get('cpu_prune_s'), '.1f')} | "
                     f"{_num(r.get('above_start_mb'), '.0f')} | {r['ppl']:.2f} | {shown} | "
                     f"{_num(cpu.get('rel_diff'), '+.2%')} | {_num(cpu.get('tolerance'), '.1%')} | "
                     f"{'' if not cpu else 'yes' if cpu['within'] else '**no**'} |")
    summary = s["summary"]
    lines.append("")
    for method in ("wanda", "sparsegpt"):
        if f"{method}_vs_reference_loop" in summary:
            lines.append(f"- {method} 50 %: optimum-si is {summary[f'{method}_vs_reference_loop']:.2f}x the speed of "
                         "the reference loop on the same device.")
        if f"si_{method}_over_{method}" in summary:
            lines.append(f"- SI + {method} takes {summary[f'si_{method}_over_{method}']:.2f}x the time of {method} "
                         "(target: at most 2x).")
        if f"{method}_gpu_over_cpu_speed" in summary:
            lines.append(f"- {method} 50 %: {summary[f'{method}_gpu_over_cpu_speed']:.1f}x faster than the CPU "
                         "table's run (2 cores).")
    lines.append(f"- {summary['within_tolerance']} of {summary['compared']} compared rows within their tolerance "
                 "(benchmarks/gpu_check/cpu_tables.py)" + (f"; outside: {', '.join(summary['outside_tolerance'])}"
                                                           if summary["outside_tolerance"] else "") + ".")
    setup = next((r.get("setup") for r in s["records"] if r.get("kind") == "dense"), None) or {}
    if setup:
        lines.append(f"- Model: {setup.get('model')} from {setup.get('source', '-')}"
                     + (f"; weights identical to the CPU tables': {setup['weights_match_cpu_tables']}"
                        if "weights_match_cpu_tables" in setup else "") + f"; tokens: {setup.get('tokens', '-')}.")
    return lines


def _md_llama8b(s: dict) -> list[str]:
    lines = []
    for r in s["records"]:
        if r.get("kind") == "checkpoint":
            lines.append(f"Checkpoint {r['shape_name']}: {r['shape']['blocks']} blocks, {r['bytes'] / 1e9:.2f} GB "
                         f"(built or reused in {r['build_s']:.0f} s); calibration {r['samples']} x {r['seqlen']} "
                         "random tokens.")
    lines += ["", "| run | s per block | peak device GB per block | memory model GB | measured / model | "
              "8B (32 blocks) projected | 70B (80 blocks) projected | 70B peak GB projected |",
              "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in s["records"]:
        if r.get("kind") != "streamed":
            continue
        if r.get("error"):
            lines.append(f"| {r['run']} | {r['error'][:120].replace('|', '/')} | | | | | | |")
            continue
        p8, p70 = r["projection"]["llama3-8b"], r["projection"]["llama3-70b"]
        memory = r["memory_model"]
        seconds = " / ".join(f"{b['seconds']:.1f}" for b in r["blocks"])
        peaks = " / ".join(_gb(b.get("peak_device_mb")) for b in r["blocks"])
        lines.append(
            f"| {r['run']} | {seconds} | {peaks} | {_gb(memory['predicted_mb'])} | "
            f"{_num(memory['measured_over_predicted'])} | {p8['total_s'] / 60:.1f} min | {p70['total_s'] / 60:.1f} min"
            f" | {_gb(p70['peak_device_mb_corrected'] or p70['peak_device_mb_model'])} |")
    lines += ["", "Projections: the steady blocks' mean (all but the first), its prune phase scaled by the solve cost "
              "(SparseGPT) or the weight count (Wanda), the rest by forward FLOPs per token; the time outside the "
              "blocks by the embedding size (benchmarks/gpu_check/projection.py). The 70B peak is the memory model's, "
              "times measured / model on this shape."]
    return lines


def _md_semi(s: dict) -> list[str]:
    lines = []
    for r in s["records"]:
        if r.get("kind") != "conversion":
            continue
        if r.get("error"):
            lines.append(f"Conversion failed: {r['error']}")
        elif r.get("refused"):
            lines.append(f"Conversion refused (expected without a GPU): {r['refused']}")
        else:
            lines.append(f"{r['model']}: {r['converted']} Linears converted ({r['weight_class']}); logits max |diff| "
                         f"{r['logits_max_abs_diff']:.3g} of max |logit| {r['logits_max_abs']:.3g}; PPL dense "
                         f"{r['dense_ppl']:.3f}, sparse {r['sparse_ppl']:.3f}; forward of {r['forward_tokens']} tokens "
                         f"{r['dense_forward_ms']:.1f} ms dense, {r['sparse_forward_ms']:.1f} ms sparse.")
    lines += ["", "| Linear | out x in | tokens | dense ms | 2:4 sparse ms | speed-up | max rel error |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for r in s["records"]:
        if r.get("kind") != "matmul":
            continue
        if r.get("error"):
            lines.append(f"| {r['linear']} | {r['out']}x{r['in']} | | {r['error'][:100].replace('|', '/')} | | | |")
            continue
        lines.append(f"| {r['linear']} | {r['out']}x{r['in']} | {r['tokens']} | {r['dense_ms']:.3f} | "
                     f"{_num(r.get('sparse_ms'), '.3f')} | {_num(r.get('speedup'))} | "
                     f"{_num(r.get('max_rel_error'), '.2g')} |")
    return lines
